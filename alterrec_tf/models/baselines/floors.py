"""Non-neural floors, scored by the same evaluation code as the neural models.

Both are built from the training TFRecords only (never valid or test) and have
no trainable variables, so the trainer evaluates them once without a training
loop (`train._finish_without_training`).

* `MostPopular`: every prefix gets the same ranking, items by their number of
  occurrences in the training sessions (ties: lower index first).
* `SessionKNN`: an item-to-item neighbourhood recommender in the family of
  item-kNN / sequential rules (Ludewig & Jannach 2018). From the training
  sessions it counts, for every ordered item pair (i, j), how often j occurs
  `d` positions after i (d = 1..window, window = max_len) with weight 1/d
  (optionally plus `backward_weight` times the same for j before i; 0 by
  default); each row i is then divided by its sum, so that C[i, :] is a
  distribution over the items that follow i. A prefix [s_1..s_t] scores item j
  by sum_u C[s_u, j] / (t - u + 1): every item of the prefix votes, the last
  item with weight 1, the one before with 1/2, and so on. A tiny popularity
  term (1e-6 x count / max count) orders the items no prefix item has seen, so
  the ranking falls back to popularity. The defaults were chosen on the
  Online Retail validation split (forward-only vs symmetric counting, window
  1/5/20/50/200, with or without row normalisation: row normalisation matters
  most, +6 points Hits@20; the rest moves Hits@20 by less than 1.6 points).
  C is a dense float32 [V, V] matrix (V = catalogue size): 44 MB at V = 3,336;
  catalogues above `MAX_DENSE_ITEMS` are refused with a message.
"""

import time
from typing import Tuple

import keras
import numpy as np
import scipy.sparse
import tensorflow as tf

from alterrec_tf.data import windows as alter_data
from alterrec_tf.models import layers as alter_layers
from alterrec_tf.formats import schema
from alterrec_tf.models import towers as alter_towers
from alterrec_tf.models.alterrec import scored_positions

MAX_DENSE_ITEMS = 20_000  # 20k x 20k float32 = 1.6 GB
TIE_BREAK = 1e-6


def read_sessions(files):
  """Item index sequences of every session in `files`: list of int64 arrays."""
  sessions = []
  dataset = tf.data.TFRecordDataset(files).batch(1024).map(schema.parse_examples)
  for batch in dataset:
    sessions.extend(batch[schema.ITEM_IDS].numpy())
  return sessions


def training_counts(sessions, num_items: int) -> np.ndarray:
  """Occurrences of each item index in the sessions: int64 [num_items]."""
  if not sessions:
    return np.zeros([num_items], np.int64)
  return np.bincount(np.concatenate(sessions), minlength=num_items).astype(np.int64)


def neighbour_matrix(sessions, num_items: int, window: int, backward_weight: float,
                     normalize: bool = True) -> np.ndarray:
  """C[i, j]: distance-weighted co-occurrence of j after (and before) i.

  Args:
    sessions: list of int item index arrays.
    num_items: catalogue size V.
    window: largest distance d counted.
    backward_weight: weight of j occurring before i (0: forward transitions only).
    normalize: divide each row by its sum.

  Returns:
    float32 [V, V].
  """
  if num_items > MAX_DENSE_ITEMS:
    raise ValueError(f"session_knn holds a dense [V, V] matrix; V={num_items} is above "
                     f"its limit of {MAX_DENSE_ITEMS} items")
  lengths = np.array([len(s) for s in sessions], np.int64)
  flat = np.concatenate(sessions) if sessions else np.zeros([0], np.int64)
  session_of = np.repeat(np.arange(len(sessions)), lengths)
  rows, cols, weights = [], [], []
  for d in range(1, window + 1):
    same = session_of[:-d] == session_of[d:]
    if not same.any():
      break
    before, after = flat[:-d][same], flat[d:][same]
    rows.append(before)
    cols.append(after)
    weights.append(np.full(before.shape, 1.0 / d))
    if backward_weight:
      rows.append(after)
      cols.append(before)
      weights.append(np.full(before.shape, backward_weight / d))
  if not rows:
    return np.zeros([num_items, num_items], np.float32)
  matrix = scipy.sparse.coo_matrix(
      (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
      shape=(num_items, num_items)).tocsr()  # sums duplicate pairs
  dense = matrix.toarray()
  if normalize:
    dense /= np.maximum(dense.sum(axis=1, keepdims=True), 1e-12)
  return dense.astype(np.float32)


class MostPopular(keras.Model):
  """Scores every item by its training count, the same for every prefix."""

  tower_names: Tuple[str, ...] = ()

  def __init__(self, counts, **kwargs):
    super().__init__(**kwargs)
    self.counts = tf.constant(np.asarray(counts, np.float32))
    self.fit_seconds = 0.0

  @classmethod
  def from_files(cls, train_files, num_items: int):
    start = time.perf_counter()
    model = cls(alter_data.item_counts(train_files, num_items).numpy())
    model.fit_seconds = time.perf_counter() - start
    return model

  def score_heads(self, batch):
    positions, targets = scored_positions(batch)
    scores = tf.tile(self.counts[None, :], [tf.shape(positions)[0], 1])
    return {"fused": alter_towers.mask_padding(scores)}, targets

  def call(self, item_ids, training=False):
    del training
    shape = tf.shape(item_ids)
    return alter_towers.mask_padding(
        tf.broadcast_to(self.counts, [shape[0], shape[1], tf.size(self.counts)]))


class SessionKNN(keras.Model):
  """Recency-weighted item neighbourhood votes of the prefix items (module doc).

  Args:
    neighbours: float32 [V, V] matrix C.
    counts: training occurrences [V] (tie-break by popularity).
  """

  tower_names: Tuple[str, ...] = ()

  def __init__(self, neighbours, counts, **kwargs):
    super().__init__(**kwargs)
    self.neighbours = tf.constant(np.asarray(neighbours, np.float32))
    counts = np.asarray(counts, np.float64)
    self.popularity = tf.constant(
        (TIE_BREAK * counts / max(counts.max(), 1.0)).astype(np.float32))
    self.fit_seconds = 0.0

  @classmethod
  def from_files(cls, train_files, num_items: int, window: int = 50,
                 backward_weight: float = 0.0, normalize: bool = True):
    """Counts only the sessions of `train_files` (the training split)."""
    start = time.perf_counter()
    sessions = read_sessions(train_files)
    model = cls(neighbour_matrix(sessions, num_items, window, backward_weight, normalize),
                training_counts(sessions, num_items))
    model.fit_seconds = time.perf_counter() - start
    return model

  def window_weights(self, item_ids):
    """Weight of window item u in the prefix ending at t: [B, L(t), L(u)].

    1 / (t - u + 1) for u <= t (the last item votes with weight 1, the one
    before with 1/2, ...); 0 for later items and padding.
    """
    steps = tf.range(tf.shape(item_ids)[1])
    distance = tf.cast(steps[:, None] - steps[None, :], tf.float32)  # t - u
    recency = tf.where(distance >= 0, 1.0 / (distance + 1.0), 0.0)
    real = tf.cast(alter_layers.padding_mask(item_ids), tf.float32)
    return recency[None, :, :] * real[:, None, :]

  def prefix_scores(self, item_ids, positions):
    """sum_u w[t, u] C[item u, :] + popularity at the scored prefixes: [P, V].

    One batched dense matmul per window batch ([B, L, L] x [B, L, V]), which
    runs far faster on CPU than a sparse [P, V] vote matrix times C.
    """
    rows = tf.gather(self.neighbours, item_ids)  # [B, L, V]
    scores = tf.matmul(self.window_weights(item_ids), rows)  # [B, L, V]
    scores = tf.gather_nd(scores, positions)
    return alter_towers.mask_padding(scores + self.popularity[None, :])

  def score_heads(self, batch):
    positions, targets = scored_positions(batch)
    return {"fused": self.prefix_scores(batch[alter_data.ITEM_IDS], positions)}, targets

  def call(self, item_ids, training=False):
    del training
    positions = tf.where(tf.ones_like(item_ids, tf.bool))
    scores = self.prefix_scores(item_ids, positions)
    shape = tf.shape(item_ids)
    return tf.reshape(scores, [shape[0], shape[1], -1])
