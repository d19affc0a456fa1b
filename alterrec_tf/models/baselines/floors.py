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
  on the last item (SR, `sequential_rules.py`, extends it to items a few steps
  later, with a decay). Dense float32 [V, V] counts.
* `SequentialRules` (SR, `sequential_rules.py`), `SessionKNN` (V-SKNN,
  `session_knn.py`) and `STAN` (`stan.py`): the published floors, on the same
  `CountFloor`; `floor_registry.py` builds every floor by name.

Dense [V, V] floors refuse catalogues above `MAX_DENSE_ITEMS` with a message.
"""

import time
from typing import Any, Dict, List, Sequence, Tuple

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf

from alterrec_tf.data import windows as alter_data
from alterrec_tf.data.windows import scored_positions
from alterrec_tf.formats import schema
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
    self.floor_parameters: Dict[str, Any] = {}  # set by floor_registry.build_floor

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
