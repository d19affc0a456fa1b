"""The on-disk contract between `data_tools` (writer) and `alterrec_tf` (reader).

A prepared dataset is one folder:

  manifest.json                  counts, dimensions, flags, split rule, hashes
  item_vocab.tsv                 index <TAB> raw_item_id <TAB> title; row 0 = padding
  item_text_embeddings.npy       float32 [num_items, text_dim]; row 0 = zeros
  {split}-{i:05d}-of-{n:05d}.tfrecord   tf.train.Example sessions

Every session is one `tf.train.Example` with the features of `FEATURES`. Item
indices are dense, 1..num_items-1; 0 is the padding index and never appears in a
stored session. `eval_start` is the first position t (0-based) whose item is a
scored target: 1 means every prefix [s_0..s_{t-1}] -> s_t is an example (the
paper's protocol), len-1 means only the last item is (leave-one-out protocol of
RecBole / UniSRec files).

This module depends on TensorFlow and numpy only, so that both the writer and
the trainer can import it without pulling in pandas or torch.
"""

import hashlib
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

FORMAT_VERSION = 1
PADDING_INDEX = 0
PADDING_TOKEN = "[PAD]"

SPLITS = ("train", "valid", "test")
MANIFEST_FILE = "manifest.json"
VOCAB_FILE = "item_vocab.tsv"
TEXT_EMBEDDINGS_FILE = "item_text_embeddings.npy"

EVAL_ALL_PREFIXES = "all_prefixes"
EVAL_LEAVE_ONE_OUT = "leave_one_out"

ITEM_IDS = "item_ids"
SESSION_ID = "session_id"
USER_ID = "user_id"
TIMESTAMP = "timestamp"
EVAL_START = "eval_start"

FEATURES = {
    ITEM_IDS: tf.io.VarLenFeature(tf.int64),
    SESSION_ID: tf.io.FixedLenFeature([], tf.string),
    USER_ID: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    TIMESTAMP: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    EVAL_START: tf.io.FixedLenFeature([], tf.int64, default_value=1),
}


def shard_name(split: str, index: int, num_shards: int) -> str:
  """File name of shard `index` of `num_shards` for `split`."""
  return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def make_example(item_ids: Sequence[int], session_id: str, user_id: str = "",
                 timestamp: int = 0, eval_start: int = 1) -> bytes:
  """Serialises one session as a `tf.train.Example`.

  Args:
    item_ids: dense item indices, length >= 2, none equal to `PADDING_INDEX`.
    session_id: the raw session identifier.
    user_id: the raw user identifier, "" where unknown.
    timestamp: unix seconds of the session's start, 0 where unknown.
    eval_start: first scored target position, 1 <= eval_start < len(item_ids).

  Returns:
    The serialised example.
  """
  item_ids = [int(i) for i in item_ids]
  if len(item_ids) < 2:
    raise ValueError(f"session {session_id!r} has {len(item_ids)} items; "
                     "at least 2 are needed to make an example")
  if min(item_ids) <= PADDING_INDEX:
    raise ValueError(f"session {session_id!r} contains the padding index")
  if not 1 <= eval_start < len(item_ids):
    raise ValueError(f"session {session_id!r}: eval_start={eval_start} is not "
                     f"in [1, {len(item_ids) - 1}]")
  feature = {
      ITEM_IDS: tf.train.Feature(int64_list=tf.train.Int64List(value=item_ids)),
      SESSION_ID: tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[session_id.encode("utf-8")])),
      USER_ID: tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[user_id.encode("utf-8")])),
      TIMESTAMP: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(timestamp)])),
      EVAL_START: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(eval_start)])),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
      deterministic=True)


def parse_examples(serialized: tf.Tensor) -> Dict[str, tf.Tensor]:
  """Parses a batch of serialised sessions.

  Args:
    serialized: string tensor [batch].

  Returns:
    A dict with `item_ids` as a `tf.RaggedTensor` [batch, (len)] int64 and the
    scalar features as [batch] tensors.
  """
  parsed = tf.io.parse_example(serialized, FEATURES)
  parsed[ITEM_IDS] = tf.RaggedTensor.from_sparse(parsed[ITEM_IDS])
  return parsed


def file_sha256(path: str) -> str:
  """Hex SHA-256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def content_hash(file_hashes: Mapping[str, str]) -> str:
  """One hash over every output file's hash, independent of dict order."""
  digest = hashlib.sha256()
  for name in sorted(file_hashes):
    digest.update(f"{name}={file_hashes[name]}\n".encode("utf-8"))
  return digest.hexdigest()


class DataError(ValueError):
  """A prepared dataset is missing, incomplete or does not match."""


def load_manifest(data_dir: str, verify_hashes: bool = False) -> dict:
  """Reads and checks `manifest.json` of a prepared dataset.

  Args:
    data_dir: the folder written by `python -m data_tools.prepare`.
    verify_hashes: also recompute every file's SHA-256 and compare.

  Returns:
    The manifest as a dict.

  Raises:
    DataError: with a one-line message that says how to prepare the data.
  """
  hint = ("prepare it with: python -m data_tools.prepare "
          "--flagfile=configs/<dataset>.flags --output_dir=" + data_dir)
  path = os.path.join(data_dir, MANIFEST_FILE)
  if not os.path.exists(path):
    raise DataError(f"no prepared dataset at {data_dir} ({MANIFEST_FILE} missing); {hint}")
  with open(path, encoding="utf-8") as f:
    manifest = json.load(f)
  if manifest.get("format_version") != FORMAT_VERSION:
    raise DataError(f"{path}: format_version {manifest.get('format_version')} != "
                    f"{FORMAT_VERSION} expected by this trainer; {hint}")
  for name, expected in manifest["file_hashes"].items():
    file_path = os.path.join(data_dir, name)
    if not os.path.exists(file_path):
      raise DataError(f"{file_path} listed in the manifest is missing; {hint}")
    if verify_hashes and file_sha256(file_path) != expected:
      raise DataError(f"{file_path} does not match its manifest hash; {hint}")
  return manifest


def split_files(data_dir: str, manifest: dict, split: str) -> List[str]:
  """Paths of the TFRecord shards of `split`."""
  return [os.path.join(data_dir, name) for name in manifest["files"][split]]


def read_vocab(data_dir: str) -> List[List[str]]:
  """Rows [raw_item_id, title] of the item vocabulary, indexed by dense index."""
  rows: List[List[str]] = []
  with open(os.path.join(data_dir, VOCAB_FILE), encoding="utf-8") as f:
    header = f.readline()
    del header
    for line in f:
      index, raw_id, title = line.rstrip("\n").split("\t", 2)
      if int(index) != len(rows):
        raise DataError(f"{VOCAB_FILE}: row {len(rows) + 2} has index {index}, "
                        f"expected {len(rows)}")
      rows.append([raw_id, title])
  return rows


def load_text_embeddings(data_dir: str, manifest: dict) -> Optional[np.ndarray]:
  """The frozen item text table float32 [num_items, text_dim], or None."""
  if not manifest.get("text_dim"):
    return None
  table = np.load(os.path.join(data_dir, TEXT_EMBEDDINGS_FILE))
  if table.shape != (manifest["num_items"], manifest["text_dim"]):
    raise DataError(f"{TEXT_EMBEDDINGS_FILE} has shape {table.shape}, manifest says "
                    f"({manifest['num_items']}, {manifest['text_dim']})")
  return table.astype(np.float32, copy=False)
