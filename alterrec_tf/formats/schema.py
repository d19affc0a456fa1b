"""The on-disk contract between `data_tools` (writer) and `alterrec_tf` (reader).

A prepared dataset is one folder:

  manifest.json                  counts, dimensions, flags, split rule, hashes
  item_vocab.tsv                 index <TAB> raw_item_id <TAB> title; row 0 = padding
  item_text_embeddings.npy       float32 [num_items, text_dim]; row 0 = zeros
  {split}-{i:05d}-of-{n:05d}.tfrecord   tf.train.Example sessions

Every session is one `tf.train.Example` with the features of `feature_spec()`. Item
indices are dense, 1..num_items-1; 0 is the padding index and never appears in a
stored session. `eval_start` is the first position t (0-based) whose item is a
scored target: 1 means every prefix [s_0..s_{t-1}] -> s_t is an example (the
paper's protocol), len-1 means only the last item is (leave-one-out protocol of
RecBole / UniSRec files).

Every file of the folder has its SHA-256 in the manifest (`file_hashes`);
`load_manifest(verify_hashes=True)` (`verify_dataset`) checks them, so a
replaced, truncated or damaged shard is refused with its name before training.

This module depends on numpy, and on TensorFlow only for the record functions
(`feature_spec`, `make_example`, `parse_examples`, `find_damaged_shards`), imported
when first used: reading and verifying a manifest does not load TensorFlow, so
a command refuses bad data in about a second.
"""

import hashlib
import json
import os
import re
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

if TYPE_CHECKING:
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



_FEATURES: Dict[str, object] = {}


def feature_spec() -> Dict[str, object]:
  """The `tf.io.parse_example` spec of a session (built once; needs TensorFlow)."""
  if not _FEATURES:
    import tensorflow as tf
    _FEATURES.update({
        ITEM_IDS: tf.io.VarLenFeature(tf.int64),
        SESSION_ID: tf.io.FixedLenFeature([], tf.string),
        USER_ID: tf.io.FixedLenFeature([], tf.string, default_value=b""),
        TIMESTAMP: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        EVAL_START: tf.io.FixedLenFeature([], tf.int64, default_value=1),
    })
  return _FEATURES


def __getattr__(name: str) -> Dict[str, object]:
  """`schema.FEATURES` (= `feature_spec()`), built when first read."""
  if name == "FEATURES":
    return feature_spec()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
  import tensorflow as tf
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


def parse_examples(serialized: "tf.Tensor") -> Dict[str, "tf.Tensor"]:
  """Parses a batch of serialised sessions.

  Args:
    serialized: string tensor [batch].

  Returns:
    A dict with `item_ids` as a `tf.RaggedTensor` [batch, (len)] int64 and the
    scalar features as [batch] tensors.
  """
  import tensorflow as tf
  parsed = tf.io.parse_example(serialized, feature_spec())
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


def _prepare_hint(data_dir: str) -> str:
  return ("prepare it with: python -m data_tools.prepare "
          "--flagfile=configs/<dataset>.flags --output_dir=" + data_dir)


def load_manifest(data_dir: str, verify_hashes: bool = False) -> dict:
  """Reads and checks `manifest.json` of a prepared dataset.

  Args:
    data_dir: the folder written by `python -m data_tools.prepare`.
    verify_hashes: also check every listed file's SHA-256 (`verify_dataset`).

  Returns:
    The manifest as a dict.

  Raises:
    DataError: with a one-line message that names the file and says how to
      prepare the data.
  """
  hint = _prepare_hint(data_dir)
  path = os.path.join(data_dir, MANIFEST_FILE)
  if not os.path.exists(path):
    raise DataError(f"no prepared dataset at {data_dir} ({MANIFEST_FILE} missing); {hint}")
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except UnicodeDecodeError as error:
    raise DataError(f"{path} is not UTF-8 JSON ({error.reason} at byte {error.start}); "
                    f"{hint}") from None
  except json.JSONDecodeError as error:
    raise DataError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: "
                    f"{error.msg}); {hint}") from None
  if not isinstance(manifest, dict):
    raise DataError(f"{path} holds a JSON {type(manifest).__name__}, not an object; {hint}")
  if manifest.get("format_version") != FORMAT_VERSION:
    raise DataError(f"{path}: format_version {manifest.get('format_version')} != "
                    f"{FORMAT_VERSION} expected by this trainer; {hint}")
  _check_manifest_fields(path, manifest, hint)
  for name in manifest["file_hashes"]:
    file_path = os.path.join(data_dir, name)
    if not os.path.exists(file_path):
      raise DataError(f"{file_path} listed in the manifest is missing; {hint}")
  if verify_hashes:
    verify_dataset(data_dir, manifest)
  return manifest


def _check_manifest_fields(path: str, manifest: dict, hint: str) -> None:
  """Refuses a manifest without the fields every reader of a dataset uses."""
  expected = {"num_items": int, "files": dict, "file_hashes": dict}
  for key, kind in expected.items():
    if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
      raise DataError(f"{path}: field {key!r} is missing or not a JSON "
                      f"{'number' if kind is int else 'object'}; {hint}")
  if manifest["num_items"] < 2:
    raise DataError(f"{path}: num_items is {manifest['num_items']} (the padding row and at "
                    f"least one item are needed); {hint}")
  for split in SPLITS:
    shards = manifest["files"].get(split, [])
    if not isinstance(shards, list) or not all(isinstance(n, str) for n in shards):
      raise DataError(f"{path}: files.{split} is not a list of file names; {hint}")
  unhashed = [name for name in listed_files(manifest) if name not in manifest["file_hashes"]]
  if unhashed:
    raise DataError(f"{path}: {unhashed[0]} has no entry in file_hashes, so it cannot be "
                    f"verified; {hint}")


def listed_files(manifest: dict) -> List[str]:
  """Every file of a dataset its manifest names: the shards, the vocabulary and
  the text table (when there is one)."""
  names = [name for split in SPLITS for name in manifest["files"].get(split, [])]
  for key in ("vocab", "text_embeddings"):
    if manifest["files"].get(key):
      names.append(manifest["files"][key])
  return names


# Datasets verified in this process: (folder, (name, hash, size, mtime, inode,
# ctime) of every file). A file changed since (replaced, rewritten, touched)
# has another stat signature and is hashed again.
_VERIFIED: Set[Tuple] = set()


def verify_dataset(data_dir: str, manifest: dict) -> None:
  """Checks every file in the manifest's `file_hashes` against its SHA-256.

  Hashing reads the whole dataset once (Online Retail, 8.5 MB in 14 files:
  about 0.04 s, 0.07 s from a cold page cache); a dataset this process already
  verified is not read again unless a file's size, times or inode changed.

  Raises:
    DataError: naming every file whose bytes differ from the manifest (a shard
      replaced by other records, truncated, or with a flipped byte).
  """
  hashes = manifest["file_hashes"]
  signature = []
  for name in sorted(hashes):
    stat = os.stat(os.path.join(data_dir, name))
    signature.append((name, hashes[name], stat.st_size, stat.st_mtime_ns, stat.st_ino,
                      stat.st_ctime_ns))
  key = (os.path.abspath(data_dir), tuple(signature))
  if key in _VERIFIED:
    return
  changed = [name for name in sorted(hashes)
             if file_sha256(os.path.join(data_dir, name)) != hashes[name]]
  if changed:
    shown = ", ".join(os.path.join(data_dir, name) for name in changed[:3])
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
    raise DataError(
        f"{shown}{more} {'does' if len(changed) == 1 else 'do'} not match the SHA-256 in "
        f"{os.path.join(data_dir, MANIFEST_FILE)} (replaced, truncated or damaged after "
        f"preparation): nothing was trained; restore the file or {_prepare_hint(data_dir)}")
  _VERIFIED.add(key)


def find_damaged_shards(data_dir: str, manifest: dict) -> List[str]:
  """Reads every shard record by record; one line per unreadable shard.

  For a dataset whose hashes were not checked (--noverify_data) and whose
  reading failed: names the shard, the record and what is wrong (a truncated
  or corrupt record, a record that is not a session, an item index outside
  the vocabulary). Needs TensorFlow; costs one pass over the data.
  """
  import tensorflow as tf
  problems = []
  for split in SPLITS:
    for path in split_files(data_dir, manifest, split):
      record = 0
      try:
        for serialized in tf.data.TFRecordDataset(path):
          record += 1
          parsed = parse_examples(tf.reshape(serialized, [1]))
          items = parsed[ITEM_IDS].flat_values.numpy()
          if items.size < 2 or items.min() <= PADDING_INDEX or items.max() >= manifest["num_items"]:
            problems.append(f"{path} record {record}: item indices {items.tolist()[:8]} are not "
                            f"a session of >= 2 items in [1, {manifest['num_items'] - 1}]")
            break
      except tf.errors.OpError as error:
        problems.append(f"{path} record {record + 1}: {_op_error_reason(error)}")
  return problems


def _op_error_reason(error: "tf.errors.OpError") -> str:
  """The first line of a TensorFlow error without its op and function names."""
  text = (str(error.message or "").strip().splitlines() or [type(error).__name__])[0]
  text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
  return re.sub(r"\s*\[Op:[^\]]*\].*$", "", text).strip() or type(error).__name__


def split_files(data_dir: str, manifest: dict, split: str) -> List[str]:
  """Paths of the TFRecord shards of `split`."""
  return [os.path.join(data_dir, name) for name in manifest["files"].get(split, [])]


def read_vocab(data_dir: str) -> List[List[str]]:
  """Rows [raw_item_id, title] of the item vocabulary, indexed by dense index.

  Raises:
    DataError: naming the file and row that is not "index TAB raw_id TAB title".
  """
  path = os.path.join(data_dir, VOCAB_FILE)
  rows: List[List[str]] = []
  with open(path, encoding="utf-8") as f:
    header = f.readline()
    del header
    for line_number, line in enumerate(f, start=2):
      fields = line.rstrip("\n").split("\t", 2)
      if len(fields) != 3 or not fields[0].strip().isdigit():
        raise DataError(f"{path} row {line_number}: expected index<TAB>raw_item_id<TAB>title, "
                        f"got {line.rstrip()[:60]!r}; {_prepare_hint(data_dir)}")
      index, raw_id, title = fields
      if int(index) != len(rows):
        raise DataError(f"{path} row {line_number}: index {index}, expected {len(rows)}; "
                        f"{_prepare_hint(data_dir)}")
      rows.append([raw_id, title])
  return rows


def load_text_embeddings(data_dir: str, manifest: dict) -> Optional[np.ndarray]:
  """The frozen item text table float32 [num_items, text_dim], or None.

  Raises:
    DataError: the file is not a readable .npy table of the manifest's shape
      with finite values.
  """
  if not manifest.get("text_dim"):
    return None
  path = os.path.join(data_dir, TEXT_EMBEDDINGS_FILE)
  try:
    table = np.load(path)
  except (OSError, ValueError, EOFError) as error:
    raise DataError(f"{path} is not a readable .npy table ({error}); "
                    f"{_prepare_hint(data_dir)}") from None
  if table.shape != (manifest["num_items"], manifest["text_dim"]):
    raise DataError(f"{path} has shape {table.shape}, manifest says "
                    f"({manifest['num_items']}, {manifest['text_dim']}); "
                    f"{_prepare_hint(data_dir)}")
  if not np.all(np.isfinite(table)):
    row = int(np.flatnonzero(~np.isfinite(table).all(axis=1))[0])
    raise DataError(f"{path} row {row} holds NaN or infinite values; "
                    f"{_prepare_hint(data_dir)}")
  return table.astype(np.float32, copy=False)


def items_without_text(table: Optional[np.ndarray]) -> int:
  """Items (rows after the padding row 0) whose text vector is all zeros: the
  rows `data_tools.prepare --norequire_text` writes for items it found no text
  for. All of them (or no table) means a text model would learn nothing."""
  if table is None:
    return 0
  return int(np.sum(~np.any(table[1:] != 0, axis=1)))
