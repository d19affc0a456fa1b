"""Checks that an exported SavedModel ranks like the Keras model it came from.

The exporter loads every version back before publishing it and compares its
top-k with the in-memory model's fused scores on real sessions; the tests use
the same helpers in a fresh process.
"""

from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

from alterrec_tf.formats import schema
from alterrec_tf.serving import module as serving


def pad_sessions(sessions: Sequence[Sequence[int]], max_len: int) -> np.ndarray:
  """Right-padded windows int32 [N, max_len] of each session's last max_len items."""
  window = np.zeros([len(sessions), max_len], np.int32)
  for row, items in enumerate(sessions):
    items = [int(i) for i in items if int(i) != schema.PADDING_INDEX][-max_len:]
    window[row, :len(items)] = items
  return window


def reference_scores(model, sessions: Sequence[Sequence[int]], batch_size: int = 64) -> np.ndarray:
  """The Keras model's fused scores [N, V] of each (non-empty) session's last prefix."""
  window = pad_sessions(sessions, model.config.max_len)
  last = np.maximum((window != schema.PADDING_INDEX).sum(axis=1) - 1, 0)
  out = []
  for start in range(0, len(window), batch_size):
    scores = model(tf.constant(window[start:start + batch_size]), training=False)
    out.append(tf.gather(scores, last[start:start + batch_size], batch_dims=1).numpy())
  return np.concatenate(out) if out else np.zeros([0, model.num_items], np.float32)


def top_k_mismatches(reference: np.ndarray, ids: np.ndarray, scores: np.ndarray,
                     atol: float = 1e-4) -> int:
  """Places where served (ids, scores) differ from the reference scores [N, V].

  The served list must hold the reference's top-k ids in order, and its scores
  must equal the reference scores of those ids; two ids may swap only where
  their reference scores tie within `atol` (top_k's order among near-equal
  floats is not a property of the model).
  """
  k = ids.shape[1]
  top = tf.math.top_k(reference, k=k)
  ref_ids, ref_scores = top.indices.numpy(), top.values.numpy()
  served_ref = np.take_along_axis(reference, ids.astype(np.int64), axis=1)
  bad = ~np.isclose(scores, ref_scores, atol=atol, rtol=1e-5)
  bad |= ~np.isclose(served_ref, ref_scores, atol=atol, rtol=1e-5)
  del ref_ids  # ids may differ only where the scores tie (checked above)
  return int(bad.sum())


def sample_sessions(data_dir: str, manifest: dict, count: int = 32) -> List[List[int]]:
  """The first `count` sessions of the test split (valid, train if absent)."""
  for split in ("test", "valid", "train"):
    files = schema.split_files(data_dir, manifest, split) if manifest["files"].get(split) else []
    if files:
      sessions = tf.data.TFRecordDataset(files).take(count).batch(count)
      for batch in sessions.map(schema.parse_examples):
        return [list(map(int, row)) for row in batch[schema.ITEM_IDS].to_list()]
  return []


def reference_text_vectors(model, sessions: Sequence[Sequence[int]]) -> np.ndarray:
  """The Keras text tower's session vectors [N, d] at each session's last item."""
  window = pad_sessions(sessions, model.config.max_len)
  last = np.maximum((window != schema.PADDING_INDEX).sum(axis=1) - 1, 0)
  tower = model.text_tower
  vectors = tower.prefix_vectors(tf.constant(window), tower.item_matrix(training=False))
  return tf.gather(vectors, last, batch_dims=1).numpy()


def expected_scores(model, sessions: Sequence[Sequence[int]],
                    new_rows: Optional[np.ndarray] = None,
                    exclude_session_items: bool = False) -> np.ndarray:
  """What the export should score [N, V + new], computed from the Keras model.

  Trained items: the model's fused score. Cold-start items: (1 - alpha) /
  temperature * (text session vector . projected new row), the text tower's
  term alone. Excluded session items: NEG_INF. Padding: below everything.
  """
  scores = reference_scores(model, sessions)
  if new_rows is not None and len(new_rows):
    scale = serving.tower_scales(model.config, model.tower_names)["text"]
    extra = scale * reference_text_vectors(model, sessions) @ new_rows.T
    scores = np.concatenate([scores, extra.astype(np.float32)], axis=1)
  if exclude_session_items:
    for row, items in enumerate(sessions):
      scores[row, [i for i in items if i != schema.PADDING_INDEX]] = serving.NEG_INF
  scores[:, schema.PADDING_INDEX] = serving.PADDING_SCORE
  return scores


def verify_export(path: str, model, sessions: Sequence[Sequence[int]], k: int,
                  new_rows: Optional[np.ndarray] = None,
                  exclude_session_items: bool = False) -> int:
  """Loads the SavedModel at `path`; counts top-k places that differ from
  `expected_scores` (0 = the export ranks as the Keras model)."""
  # the requests are the sessions' last max_len items (what is sent is excluded)
  sessions = [list(s)[-model.config.max_len:] for s in sessions if len(s)]
  if not sessions:
    return 0
  loaded = tf.saved_model.load(path)
  window = pad_sessions(sessions, model.config.max_len)
  out = loaded.signatures[serving.SIGNATURE_TOP_K](
      item_ids=tf.constant(window, tf.int64), k=tf.constant(k, tf.int32))
  return top_k_mismatches(expected_scores(model, sessions, new_rows, exclude_session_items),
                          out[serving.OUTPUT_INDICES].numpy(),
                          out[serving.OUTPUT_SCORES].numpy())


# --- warmup ---------------------------------------------------------------------------
