"""SR, sequential rules (Ludewig & Jannach 2018, "Evaluation of session-based
recommendation algorithms"), a floor scored like the neural models.

As session-rec's `SequentialRules` (github.com/rn5l/session-rec,
algorithms/baselines/sr.py): in every training session, each item j adds
weighting(d) to the rule i -> j for each item i d = 1..steps places before it
(`neighbourhood.distance_weight`: "div" = 1 / d). With `pruning`, each item keeps
only its `pruning` strongest rules (0 < pruning < 1: drops that share of them, the
weakest; 0: keeps all); rules of equal weight are kept in the order the training
sessions (file order) first produced them, as session-rec's `Counter.most_common`.
A prefix is scored from its last item s_n only: score(j) = rule(s_n -> j), divided
by the prefix's largest score (session-rec's normalisation; it keeps the popularity
tie-break of `CountFloor` within float32 resolution). session-rec's idf weighting,
last_n_days and last_in_session options are not built. The rules are a dense float32
[V, V] matrix (47 MB at V = 3,432). The defaults were chosen on the validation
splits of Online Retail and Amazon Office (BUILD_NOTES.md, "Floors as published
(issue 35, item 3)").
"""

import time
from typing import Sequence

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from alterrec_tf.models import floor_defaults
from alterrec_tf.models.baselines import floors, neighbourhood


def keep_counts(rules_per_item: np.ndarray, pruning: float) -> np.ndarray:
  """How many rules each item keeps (session-rec's `prune`): int64 [V]."""
  if pruning <= 0:
    return rules_per_item
  if pruning < 1:
    return rules_per_item - (rules_per_item * pruning).astype(np.int64)
  return np.minimum(rules_per_item, int(pruning))


def rule_matrix(sessions: Sequence[np.ndarray], num_items: int, steps: int, weighting: str,
                pruning: float) -> np.ndarray:
  """R[i, j]: the weighted count of j following i within `steps` places (module doc).

  Args:
    sessions: list of int item index arrays, in file order.
    num_items: catalogue size V.
    steps: the largest distance counted.
    weighting: decay of the distance (`neighbourhood.WEIGHTINGS`).
    pruning: rules kept per item (module doc).

  Returns:
    float32 [V, V].
  """
  floors.check_dense_items("sequential_rules", num_items)
  neighbourhood.check_choice("weighting", weighting, neighbourhood.WEIGHTINGS)
  if steps < 1 or pruning < 0:
    raise ValueError(f"need steps >= 1 and pruning >= 0, got {steps} and {pruning}")
  lengths = np.array([len(s) for s in sessions], np.int64)
  flat = np.concatenate(sessions).astype(np.int64) if sessions else np.zeros([0], np.int64)
  session_of = np.repeat(np.arange(len(sessions)), lengths)
  decay = neighbourhood.distance_weight(
      weighting, np.arange(1, steps + 1, dtype=np.float64)).numpy()
  pairs, weights, order = [], [], []
  for d in range(1, steps + 1):
    before = np.flatnonzero(session_of[:-d] == session_of[d:])  # i's place; j's: + d
    pairs.append(flat[before] * num_items + flat[before + d])
    weights.append(np.full(before.shape, decay[d - 1]))
    order.append((before + d) * steps + d - 1)  # session-rec visits j, then d = 1, 2, ...
  pair, weight, visit = (np.concatenate(pairs), np.concatenate(weights),
                         np.concatenate(order))
  by_visit = np.argsort(visit)
  rules, first, inverse = np.unique(pair[by_visit], return_index=True, return_inverse=True)
  sums = np.bincount(inverse.reshape(-1), weights=weight[by_visit], minlength=len(rules))
  rows, cols = rules // num_items, rules % num_items
  strongest = np.lexsort((first, -sums, rows))  # per item: strongest, then first made
  rows, cols, sums = rows[strongest], cols[strongest], sums[strongest]
  per_item = np.bincount(rows, minlength=num_items)
  rank = np.arange(len(rows)) - np.repeat(np.cumsum(per_item) - per_item, per_item)
  kept = rank < keep_counts(per_item, pruning)[rows]
  matrix = np.zeros([num_items, num_items], np.float32)
  matrix[rows[kept], cols[kept]] = sums[kept]
  return matrix


class SequentialRules(floors.CountFloor):
  """SR: the rules of the prefix's last item (module doc).

  Args:
    rules: float32 [V, V] rule weights R[i, j].
    counts: training occurrences [V] (tie-break by popularity).
    exclude_seen: score the prefix's own items out.
  """

  def __init__(self, rules: npt.ArrayLike, counts: npt.ArrayLike, exclude_seen: bool = False,
               **kwargs) -> None:
    super().__init__(counts, exclude_seen, **kwargs)
    self.rules = tf.constant(np.asarray(rules, np.float32))

  @classmethod
  def from_files(cls, train_files: Sequence[str], num_items: int, exclude_seen: bool = False,
                 steps: int = floor_defaults.SR_STEPS, weighting: str = floor_defaults.SR_WEIGHTING,
                 pruning: float = floor_defaults.SR_PRUNING) -> "SequentialRules":
    """Counts only the sessions of `train_files` (the training split)."""
    start = time.perf_counter()
    sessions = floors.read_sessions(train_files)
    model = cls(rule_matrix(sessions, num_items, steps, weighting, pruning),
                floors.training_counts(sessions, num_items), exclude_seen)
    model.fit_seconds = time.perf_counter() - start
    return model

  def prefix_scores(self, item_ids: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """R[last item of the prefix, :] / its largest + popularity: [P, V]."""
    last_items = tf.gather_nd(item_ids, positions)  # [P]
    scores = neighbourhood.normalized(tf.gather(self.rules, last_items))
    return scores + self.popularity[None, :]
