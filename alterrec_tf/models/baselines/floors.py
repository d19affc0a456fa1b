"""Non-neural floors, scored by the same evaluation code as the neural models.

Every floor is built from the training TFRecords only (never valid or test)
and has no trainable variables, so the trainer evaluates it once without a
training loop (`train._finish_without_training`). All of them put the padding
column at -1e9 and, with `exclude_seen` (`--seen_items=exclude`), the items of
the prefix too (`towers.mask_seen_items`; in de-duplicated sessions such an
item is never the answer). A tiny popularity term, TIE_BREAK x training count
/ largest count, orders the items a floor gives the same score (items no
neighbour or rule reaches fall back to popularity order).

* `MostPopular`: every prefix gets the same ranking, items by their number of
  occurrences in the training sessions (ties: lower index first).
* `FirstOrderTransition`: a prefix [s_1..s_t] scores item j by the number of
  training sessions' consecutive pairs (s_t -> j): a first-order Markov chain
  on the last item (Ludewig & Jannach 2018 call its recency-weighted extension
  "SR"). Dense float32 [V, V] counts.
* `SequentialRules` ("SR", Ludewig & Jannach 2018, "Evaluation of
  session-based recommendation algorithms"): from the training sessions it
  counts, for every ordered item pair (i, j), how often j occurs `d`
  positions after i (d = 1..window, window = max_len) with weight 1/d
  (optionally plus `backward_weight` times the same for j before i; 0 by
  default); each row i is then divided by its sum, so that C[i, :] is a
  distribution over the items that follow i. A prefix [s_1..s_t] scores item j
  by sum_u C[s_u, j] / (t - u + 1): every item of the prefix votes, the last
  item with weight 1, the one before with 1/2, and so on. The defaults were
  chosen on the Online Retail validation split (forward-only vs symmetric
  counting, window 1/5/20/50/200, with or without row normalisation: row
  normalisation matters most, +6 points Hits@20; the rest moves Hits@20 by less
  than 1.6 points). C is a dense float32 [V, V] matrix: 47 MB at V = 3,432.
* `SessionKNN` (V-SKNN): in `session_knn.py`, on the same `CountFloor`.

Dense [V, V] floors refuse catalogues above `MAX_DENSE_ITEMS` with a message.
"""

import time
from typing import Dict, List, Sequence, Tuple

import keras
import numpy as np
import numpy.typing as npt
import scipy.sparse
import tensorflow as tf

from alterrec_tf.data import windows as alter_data
from alterrec_tf.data.windows import scored_positions
from alterrec_tf.formats import schema
from alterrec_tf.models import layers as alter_layers
from alterrec_tf.models import towers as alter_towers

MAX_DENSE_ITEMS = 20_000  # 20k x 20k float32 = 1.6 GB
TIE_BREAK = 1e-6


def read_sessions(files: Sequence[str]) -> List[np.ndarray]:
  """Item index sequences of every session in `files`: list of int64 arrays."""
  return read_sessions_and_times(files)[0]


def read_sessions_and_times(files: Sequence[str]) -> Tuple[List[np.ndarray], np.ndarray]:
  """Sessions of `files` in file order and their timestamps.

  Returns:
    (list of int64 item index arrays, int64 [N] unix seconds, 0 where unknown).
  """
  sessions: List[np.ndarray] = []
  times = []
  dataset = tf.data.TFRecordDataset(files).batch(1024).map(schema.parse_examples)
  for batch in dataset:
    sessions.extend(batch[schema.ITEM_IDS].numpy())
    times.append(batch[schema.TIMESTAMP].numpy())
  return sessions, (np.concatenate(times) if times else np.zeros([0], np.int64))


def training_counts(sessions: Sequence[np.ndarray], num_items: int) -> np.ndarray:
  """Occurrences of each item index in the sessions: int64 [num_items]."""
  if not sessions:
    return np.zeros([num_items], np.int64)
  return np.bincount(np.concatenate(sessions), minlength=num_items).astype(np.int64)


def check_dense_items(model: str, num_items: int) -> None:
  """Refuses a dense [V, V] matrix for catalogues above `MAX_DENSE_ITEMS`."""
  if num_items > MAX_DENSE_ITEMS:
    raise ValueError(f"{model} holds a dense [V, V] float32 matrix; V={num_items} is "
                     f"above its limit of {MAX_DENSE_ITEMS} items "
                     f"({4 * num_items ** 2 / 1e9:.1f} GB)")


def transition_matrix(sessions: Sequence[np.ndarray], num_items: int) -> np.ndarray:
  """C[i, j]: how often j directly follows i in the sessions: float32 [V, V]."""
  check_dense_items("transition", num_items)
  counts = np.zeros([num_items, num_items], np.float32)
  for items in sessions:
    np.add.at(counts, (items[:-1], items[1:]), 1.0)
  return counts


def neighbour_matrix(sessions: Sequence[np.ndarray], num_items: int, window: int,
                     backward_weight: float, normalize: bool = True) -> np.ndarray:
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
  check_dense_items("sequential_rules", num_items)
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


class CountFloor(keras.Model):
  """A floor scoring every prefix from training counts (no trainable variables).

  Subclasses define `prefix_scores`; this class adds the padding and
  seen-item masks and the two entry points the trainer and the exporter use.

  Args:
    counts: training occurrences of each item, [V] (the popularity tie-break).
    exclude_seen: score the prefix's own items out (`--seen_items=exclude`).
  """

  tower_names: Tuple[str, ...] = ()

  def __init__(self, counts: npt.ArrayLike, exclude_seen: bool = False, **kwargs) -> None:
    super().__init__(**kwargs)
    counts = np.asarray(counts, np.float64)
    self.popularity = tf.constant(
        (TIE_BREAK * counts / max(counts.max(initial=0.0), 1.0)).astype(np.float32))
    self.exclude_seen = bool(exclude_seen)
    self.fit_seconds = 0.0

  def prefix_scores(self, item_ids: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """Raw scores of the whole catalogue at the given prefixes.

    Args:
      item_ids: int [B, L] window batch (0 = padding).
      positions: int64 [P, 2] (window b, position t): the prefix item_ids[b, :t+1].

    Returns:
      float32 [P, V].
    """
    raise NotImplementedError

  def scores(self, item_ids: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """`prefix_scores` with padding (and, with exclude_seen, the prefix's items) at -1e9."""
    scores = alter_towers.mask_padding(self.prefix_scores(item_ids, positions))
    if self.exclude_seen:
      scores = alter_towers.mask_seen_items(scores, item_ids, positions)
    return scores

  def score_heads(self, batch: Dict[str, tf.Tensor]) -> Tuple[Dict[str, tf.Tensor], tf.Tensor]:
    """({"fused": [P, V]}, targets [P]) at the scored prefixes of a window batch."""
    positions, targets = scored_positions(batch)
    return {"fused": self.scores(batch[alter_data.ITEM_IDS], positions)}, targets

  def call(self, item_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
    """Scores at every position of every window: int [B, L] -> [B, L, V]."""
    del training
    positions = tf.where(tf.ones_like(item_ids, tf.bool))
    scores = self.scores(item_ids, positions)
    shape = tf.shape(item_ids)
    return tf.reshape(scores, [shape[0], shape[1], -1])


class MostPopular(CountFloor):
  """Scores every item by its training count, the same for every prefix."""

  def __init__(self, counts: npt.ArrayLike, exclude_seen: bool = False, **kwargs) -> None:
    super().__init__(counts, exclude_seen, **kwargs)
    self.counts = tf.constant(np.asarray(counts, np.float32))

  @classmethod
  def from_files(cls, train_files: Sequence[str], num_items: int,
                 exclude_seen: bool = False) -> "MostPopular":
    """Counts only the sessions of `train_files` (the training split)."""
    start = time.perf_counter()
    model = cls(alter_data.item_counts(train_files, num_items).numpy(), exclude_seen)
    model.fit_seconds = time.perf_counter() - start
    return model

  def prefix_scores(self, item_ids: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """The training counts at every prefix: [P, V]."""
    return tf.tile(self.counts[None, :], [tf.shape(positions)[0], 1])


class FirstOrderTransition(CountFloor):
  """Counts of (last prefix item -> j) in the training sessions (module doc).

  Args:
    transitions: float32 [V, V], C[i, j] = consecutive pairs (i, j).
    counts: training occurrences [V] (tie-break by popularity).
    exclude_seen: score the prefix's own items out.
  """

  def __init__(self, transitions: npt.ArrayLike, counts: npt.ArrayLike,
               exclude_seen: bool = False, **kwargs) -> None:
    super().__init__(counts, exclude_seen, **kwargs)
    self.transitions = tf.constant(np.asarray(transitions, np.float32))

  @classmethod
  def from_files(cls, train_files: Sequence[str], num_items: int,
                 exclude_seen: bool = False) -> "FirstOrderTransition":
    """Counts only the sessions of `train_files` (the training split)."""
    start = time.perf_counter()
    sessions = read_sessions(train_files)
    model = cls(transition_matrix(sessions, num_items), training_counts(sessions, num_items),
                exclude_seen)
    model.fit_seconds = time.perf_counter() - start
    return model

  def prefix_scores(self, item_ids: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """C[last item of the prefix, :] + popularity: [P, V]."""
    last_items = tf.gather_nd(item_ids, positions)  # [P]
    return tf.gather(self.transitions, last_items) + self.popularity[None, :]


class SequentialRules(CountFloor):
  """Recency-weighted sequential-rule votes of the prefix items (module doc).

  Args:
    neighbours: float32 [V, V] matrix C.
    counts: training occurrences [V] (tie-break by popularity).
    exclude_seen: score the prefix's own items out.
  """

  def __init__(self, neighbours: npt.ArrayLike, counts: npt.ArrayLike,
               exclude_seen: bool = False, **kwargs) -> None:
    super().__init__(counts, exclude_seen, **kwargs)
    self.neighbours = tf.constant(np.asarray(neighbours, np.float32))

  @classmethod
  def from_files(cls, train_files: Sequence[str], num_items: int, window: int = 50,
                 backward_weight: float = 0.0, normalize: bool = True,
                 exclude_seen: bool = False) -> "SequentialRules":
    """Counts only the sessions of `train_files` (the training split)."""
    start = time.perf_counter()
    sessions = read_sessions(train_files)
    model = cls(neighbour_matrix(sessions, num_items, window, backward_weight, normalize),
                training_counts(sessions, num_items), exclude_seen)
    model.fit_seconds = time.perf_counter() - start
    return model

  def window_weights(self, item_ids: tf.Tensor) -> tf.Tensor:
    """Weight of window item u in the prefix ending at t: [B, L(t), L(u)].

    1 / (t - u + 1) for u <= t (the last item votes with weight 1, the one
    before with 1/2, ...); 0 for later items and padding.
    """
    steps = tf.range(tf.shape(item_ids)[1])
    distance = tf.cast(steps[:, None] - steps[None, :], tf.float32)  # t - u
    recency = tf.where(distance >= 0, 1.0 / (distance + 1.0), 0.0)
    real = tf.cast(alter_layers.padding_mask(item_ids), tf.float32)
    return recency[None, :, :] * real[:, None, :]

  def prefix_scores(self, item_ids: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """sum_u w[t, u] C[item u, :] + popularity at the scored prefixes: [P, V].

    One batched dense matmul per window batch ([B, L, L] x [B, L, V]), which
    runs far faster on CPU than a sparse [P, V] vote matrix times C.
    """
    rows = tf.gather(self.neighbours, item_ids)  # [B, L, V]
    scores = tf.matmul(self.window_weights(item_ids), rows)  # [B, L, V]
    return tf.gather_nd(scores, positions) + self.popularity[None, :]
