"""A small synthetic prepared dataset, written through the real schema.

Items fall into clusters; a session draws its items from one cluster, and an
item's text embedding is its cluster centre plus noise, so text carries signal
and ID can learn co-occurrence. Shared by the model, export and baseline tests.
"""

import json
import os

import numpy as np
import tensorflow as tf

from alterrec_tf.data import windows as alter_data
from alterrec_tf.formats import schema


def write_dataset(out_dir, num_items=120, num_sessions=240, text_dim=16, num_clusters=6,
                  max_session_length=70, seed=0, eval_protocol=schema.EVAL_ALL_PREFIXES):
  """Writes a prepared dataset folder and returns its manifest.

  Args:
    out_dir: folder to create.
    num_items: vocabulary size including the padding row 0.
    num_sessions: training sessions; valid and test get a fifth each.
    text_dim: width of the fake text embeddings (0 for none).
    num_clusters: item clusters (topics).
    max_session_length: sessions have 2..max_session_length items.
    seed: numpy seed.
    eval_protocol: all_prefixes, or leave_one_out (valid/test score the last item).
  """
  rng = np.random.default_rng(seed)
  os.makedirs(out_dir, exist_ok=True)
  clusters = rng.integers(0, num_clusters, num_items)
  files = {"vocab": schema.VOCAB_FILE, "text_embeddings": None}
  if text_dim:
    centres = rng.normal(size=(num_clusters, text_dim))
    text = centres[clusters] + 0.3 * rng.normal(size=(num_items, text_dim))
    text[0] = 0.0
    np.save(os.path.join(out_dir, schema.TEXT_EMBEDDINGS_FILE), text.astype(np.float32))
    files["text_embeddings"] = schema.TEXT_EMBEDDINGS_FILE
  counts = {}
  for split, n in (("train", num_sessions), ("valid", num_sessions // 5),
                   ("test", num_sessions // 5)):
    name = schema.shard_name(split, 0, 1)
    interactions = 0
    with tf.io.TFRecordWriter(os.path.join(out_dir, name)) as writer:
      for s in range(n):
        pool = np.flatnonzero(clusters == rng.integers(0, num_clusters))
        pool = pool[pool > 0]
        items = rng.choice(pool, size=int(rng.integers(2, max_session_length + 1)))
        eval_start = 1
        if split != "train" and eval_protocol == schema.EVAL_LEAVE_ONE_OUT:
          eval_start = len(items) - 1
        writer.write(schema.make_example(items, f"{split}-{s}", f"user-{s % 50}",
                                         1_300_000_000 + s, eval_start))
        interactions += len(items)
    files[split] = [name]
    counts[split] = n
  with open(os.path.join(out_dir, schema.VOCAB_FILE), "w", encoding="utf-8") as f:
    f.write("index\traw_item_id\ttitle\n0\t[PAD]\t\n")
    for i in range(1, num_items):
      f.write(f"{i}\tSKU{i:05d}\tproduct {i} of topic {clusters[i]}\n")
  hashes = {name: schema.file_sha256(os.path.join(out_dir, name))
            for name in sorted(os.listdir(out_dir)) if name != schema.MANIFEST_FILE}
  manifest = {
      "format_version": schema.FORMAT_VERSION, "dataset_name": "synthetic",
      "num_items": num_items, "num_sessions": counts, "text_dim": text_dim,
      "eval_protocol": eval_protocol, "files": files, "file_hashes": hashes,
      "content_hash": schema.content_hash(hashes),
  }
  with open(os.path.join(out_dir, schema.MANIFEST_FILE), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
  return manifest


def write_sessions(folder, sessions_by_split, num_items, text=None, **manifest_fields):
  """A prepared dataset holding exactly the given sessions.

  Args:
    folder: folder to create.
    sessions_by_split: {split: [item index sequences]}.
    num_items: vocabulary size including the padding row 0.
    text: float [num_items, text_dim] item text table, or None (no text).
    **manifest_fields: extra manifest entries (e.g. sessions_deduplicated=True).

  Returns:
    The manifest.
  """
  os.makedirs(folder, exist_ok=True)
  files = {"vocab": schema.VOCAB_FILE, "text_embeddings": None}
  if text is not None:
    np.save(os.path.join(folder, schema.TEXT_EMBEDDINGS_FILE), np.asarray(text, np.float32))
    files["text_embeddings"] = schema.TEXT_EMBEDDINGS_FILE
  for split, sessions in sessions_by_split.items():
    name = schema.shard_name(split, 0, 1)
    with tf.io.TFRecordWriter(os.path.join(folder, name)) as writer:
      for i, items in enumerate(sessions):
        writer.write(schema.make_example(items, f"{split}-{i}"))
    files[split] = [name]
  with open(os.path.join(folder, schema.VOCAB_FILE), "w", encoding="utf-8") as f:
    f.write("index\traw_item_id\ttitle\n0\t[PAD]\t\n")
    for i in range(1, num_items):
      f.write(f"{i}\tI{i}\titem {i}\n")
  hashes = {n: schema.file_sha256(os.path.join(folder, n)) for n in os.listdir(folder)}
  manifest = {"format_version": schema.FORMAT_VERSION, "dataset_name": "handmade",
              "num_items": num_items, "text_dim": 0 if text is None else int(text.shape[1]),
              "files": files, "file_hashes": hashes,
              "content_hash": schema.content_hash(hashes), **manifest_fields}
  with open(os.path.join(folder, schema.MANIFEST_FILE), "w", encoding="utf-8") as f:
    json.dump(manifest, f)
  return manifest


def first_batch(data_dir, manifest, split, max_len, batch_size=32):
  """The first evaluation batch of a split, every prefix with exactly its last max_len items."""
  windows = alter_data.load_split(data_dir, manifest, split, max_len, 1)
  return next(iter(windows.batches(batch_size)))


def numpy_prefix_rows(batch):
  """(window, position) of every scored prefix and its context (items 0..t)."""
  positions = np.argwhere(batch[alter_data.TARGET_MASK].numpy())
  items = batch[alter_data.ITEM_IDS].numpy()
  return positions, [items[b, :t + 1] for b, t in positions]
