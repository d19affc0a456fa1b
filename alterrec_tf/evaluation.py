"""Full-catalogue evaluation: Hits@K, NDCG@K and MRR@K of every scored prefix.

Every item but padding is ranked. `tf.math.top_k` keeps the top max_k items of
each prefix (ties: lower index first), and the keras-rs ranking metrics read
those top-K lists: y_true marks the target's place in the list (at most one
relevant item), y_pred is the list order. Hits@K is keras-rs RecallAtK with
one relevant item. `rank_of_target` gives the same tie rule for a numpy
full-ranking reference (tests) and the per-prefix analysis (long tail).
"""

from typing import Dict, Iterable

import keras_rs
import numpy as np
import tensorflow as tf

from alterrec_tf import data as alter_data


def metric_names(ks: Iterable[int], mrr_k: int):
  names = []
  for k in ks:
    names += [f"hits@{k}", f"ndcg@{k}"]
  return names + [f"mrr@{mrr_k}"]


class RankingMetrics:
  """keras-rs metrics of one score head, fed with top-K lists."""

  def __init__(self, ks: Iterable[int], mrr_k: int):
    self.metrics = {}
    for k in ks:
      self.metrics[f"hits@{k}"] = keras_rs.metrics.RecallAtK(k=k)
      self.metrics[f"ndcg@{k}"] = keras_rs.metrics.NDCG(k=k)
    self.metrics[f"mrr@{mrr_k}"] = keras_rs.metrics.MeanReciprocalRank(k=mrr_k)

  def update(self, top_ids, target_ids):
    """top_ids int [P, K] best first, target_ids int [P]."""
    relevance = tf.cast(tf.equal(top_ids, tf.cast(target_ids, top_ids.dtype)[:, None]),
                        tf.float32)
    list_size = tf.shape(top_ids)[1]
    order = tf.cast(list_size - tf.range(list_size), tf.float32)
    order = tf.broadcast_to(order[None, :], tf.shape(relevance))
    for metric in self.metrics.values():
      metric.update_state(relevance, order)

  def result(self) -> Dict[str, float]:
    return {name: float(metric.result()) for name, metric in self.metrics.items()}


def top_k_ids(scores, k: int):
  """Indices of the k best items of [P, V] scores: int32 [P, k]."""
  return tf.math.top_k(scores, k=k, sorted=True).indices


def target_ranks(top_ids, target_ids):
  """1-based rank of each target in its top-K list, K + 1 if absent: [P]."""
  hit = tf.equal(top_ids, tf.cast(target_ids, top_ids.dtype)[:, None])
  k = tf.shape(top_ids)[1]
  first = tf.argmax(tf.cast(hit, tf.int32), axis=1, output_type=tf.int32) + 1
  return tf.where(tf.reduce_any(hit, axis=1), first, k + 1)


class Evaluator:
  """Ranks the whole catalogue for every scored prefix of a split.

  The scoring graph is traced once per evaluator (fixed input signature), so
  evaluating after every epoch costs no retracing.

  Args:
    model: has `score_heads(batch) -> ({head: [P, V] scores}, targets [P])`.
    ks: cut-offs of Hits and NDCG.
    mrr_k: cut-off of MRR.
  """

  def __init__(self, model, ks=(10, 20), mrr_k=20):
    self.model = model
    self.ks, self.mrr_k = tuple(ks), mrr_k
    self.max_k = max(max(self.ks), mrr_k)
    spec = {
        alter_data.ITEM_IDS: tf.TensorSpec([None, None], tf.int32),
        alter_data.TARGET_IDS: tf.TensorSpec([None, None], tf.int32),
        alter_data.TARGET_MASK: tf.TensorSpec([None, None], tf.bool),
    }
    self._top_lists = tf.function(self._top_lists_eager, input_signature=[spec])

  def _top_lists_eager(self, batch):
    scores, targets = self.model.score_heads(batch)
    return {name: top_k_ids(head, self.max_k) for name, head in scores.items()}, targets

  def __call__(self, batches, keep_ranks: bool = False):
    """Evaluates a dataset of window batches.

    Returns:
      {head: {metric: value}} and, with keep_ranks, {"targets": [N], head: ranks [N]}
      (1-based rank of the target, max_k + 1 when outside the top max_k).
    """
    trackers, ranks, targets_seen = {}, {}, []
    for batch in batches:
      tops, targets = self._top_lists(batch)
      if not trackers:
        trackers = {name: RankingMetrics(self.ks, self.mrr_k) for name in tops}
      for name, top_ids in tops.items():
        trackers[name].update(top_ids, targets)
        if keep_ranks:
          ranks.setdefault(name, []).append(target_ranks(top_ids, targets).numpy())
      if keep_ranks:
        targets_seen.append(targets.numpy())
    results = {name: tracker.result() for name, tracker in trackers.items()}
    if not keep_ranks:
      return results
    per_prefix = {name: np.concatenate(r) for name, r in ranks.items()}
    per_prefix["targets"] = (np.concatenate(targets_seen) if targets_seen
                             else np.zeros([0], np.int32))
    return results, per_prefix


def metrics_from_ranks(ranks: np.ndarray, ks=(10, 20), mrr_k=20) -> Dict[str, float]:
  """Hits/NDCG/MRR from 1-based target ranks (numpy; the reference definition)."""
  ranks = np.asarray(ranks, dtype=np.float64)
  out = {}
  for k in ks:
    hit = ranks <= k
    out[f"hits@{k}"] = float(hit.mean()) if ranks.size else 0.0
    out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean()) if ranks.size else 0.0
  hit = ranks <= mrr_k
  out[f"mrr@{mrr_k}"] = float(np.where(hit, 1.0 / ranks, 0.0).mean()) if ranks.size else 0.0
  return out


def full_ranking_ranks(scores: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
  """Numpy reference: 1-based rank of each target over the whole catalogue,
  padding (column 0) excluded, ties broken by lower item index first."""
  scores = np.asarray(scores, dtype=np.float64)
  target_scores = scores[np.arange(len(target_ids)), target_ids]
  higher = (scores[:, 1:] > target_scores[:, None]).sum(axis=1)
  item_index = np.arange(1, scores.shape[1])[None, :]
  tied_before = ((scores[:, 1:] == target_scores[:, None])
                 & (item_index < target_ids[:, None])).sum(axis=1)
  return 1 + higher + tied_before
