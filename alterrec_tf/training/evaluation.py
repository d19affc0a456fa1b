"""Full-catalogue evaluation: Hits@K, NDCG@K and MRR@K of every scored prefix.

Every item but padding is ranked. The traced graph returns each target's place
in its prefix's top-max_k list (ties: lower index first, as `tf.math.top_k`),
counted without sorting; the keras-rs ranking metrics then read the top-K
lists of the whole split at once (y_true marks the target's place, at most one
relevant item; y_pred is the list order), so no metric runs eagerly per batch.
Hits@K is keras-rs RecallAtK with one relevant item. `full_ranking_ranks` is the
numpy reference with the same tie rule (tests), and the per-prefix ranks feed
the long-tail analysis. With a chunk size (`--score_chunk_size`) smaller than
the catalogue, models with item tables (`contract.FactorizedScorer`) are ranked
in chunks of items with a running top-k: the same ranks, memory set by the
chunk. Models with a fused item matrix (`contract.FusedItemMatrix`: AlterRec
and its ablations) also get `tfrs_hits@K` in their "fused" head: TFRS
FactorizedTopK over a BruteForce index of that matrix (`training.retrieval`).
"""

from typing import (
  TYPE_CHECKING,
  Callable,
  Dict,
  Iterable,
  List,
  Literal,
  Optional,
  Sequence,
  Tuple,
  Union,
  overload,
)

import keras_rs
import numpy as np
import tensorflow as tf

from alterrec_tf.data import windows as alter_data
from alterrec_tf.models import contract, scoring, towers
from alterrec_tf.models.contract import Batch
from alterrec_tf.models.scoring import Heads
from alterrec_tf.training import retrieval

if TYPE_CHECKING:
  import keras

# {head: {metric: value}} of one split.
Metrics = Dict[str, Dict[str, float]]


def metric_names(ks: Iterable[int], mrr_k: int) -> List[str]:
  names = []
  for k in ks:
    names += [f"hits@{k}", f"ndcg@{k}"]
  return names + [f"mrr@{mrr_k}"]


def ranking_metrics(ranks: np.ndarray, ks: Iterable[int], mrr_k: int) -> Dict[str, float]:
  """keras-rs Hits (RecallAtK), NDCG and MRR from each prefix's top-K list.

  The top-K list of a prefix is rebuilt from the target's 1-based rank in it
  (K + 1 = not in the list): y_true is 1 at that place, y_pred the list order.

  Args:
    ranks: int [N] target ranks within the top max(ks, mrr_k) list.
  """
  list_size = max(max(ks), mrr_k)
  relevance = np.zeros([len(ranks), list_size], np.float32)
  inside = ranks <= list_size
  relevance[np.flatnonzero(inside), ranks[inside] - 1] = 1.0
  order = np.broadcast_to(np.arange(list_size, 0, -1, dtype=np.float32), relevance.shape)
  metrics = {}
  for k in ks:
    metrics[f"hits@{k}"] = keras_rs.metrics.RecallAtK(k=k)
    metrics[f"ndcg@{k}"] = keras_rs.metrics.NDCG(k=k)
  metrics[f"mrr@{mrr_k}"] = keras_rs.metrics.MeanReciprocalRank(k=mrr_k)
  results = {}
  for name, metric in metrics.items():
    if len(ranks):
      metric.update_state(relevance, order)
    results[name] = float(metric.result())
  return results


def target_ranks(scores: tf.Tensor, target_ids: tf.Tensor, max_k: int) -> tf.Tensor:
  """1-based rank of each target over the whole catalogue, capped at max_k + 1.

  rank = 1 + #items scoring higher + #items tied with a lower index, which is
  the place of the target in `tf.math.top_k`'s list (ties: lower index first),
  computed without sorting.

  Args:
    scores: float [P, V], padding column already at -1e9.
    target_ids: int [P].
    max_k: ranks beyond it are reported as max_k + 1 (not in the top-K list).
  """
  targets = tf.cast(target_ids, tf.int32)
  target_scores = tf.gather(scores, targets[:, None], batch_dims=1)
  higher = tf.reduce_sum(tf.cast(scores > target_scores, tf.int32), axis=1)
  index = tf.range(tf.shape(scores)[1])[None, :]
  tied_before = tf.reduce_sum(
      tf.cast((scores == target_scores) & (index < targets[:, None]), tf.int32), axis=1)
  return tf.minimum(1 + higher + tied_before, max_k + 1)


class Evaluator:
  """Ranks the whole catalogue for every scored prefix of a split.

  The scoring graph is traced once per evaluator (fixed input signature), so
  evaluating after every epoch costs no retracing.

  Args:
    model: a `contract.RankingModel`: `score_heads(batch) -> ({head: [P, V]
      scores}, targets [P])`; ranked in item chunks if a
      `contract.FactorizedScorer`, with TFRS metrics if a `contract.FusedItemMatrix`.
    ks: cut-offs of Hits and NDCG.
    mrr_k: cut-off of MRR.
    tfrs_metrics: add TFRS `tfrs_hits@K` where the model has a fused item matrix.
    chunk_size: items ranked at once; None: the model's `settings.score_chunk_size`.
  """

  def __init__(self, model: "keras.Model", ks: Sequence[int] = (10, 20), mrr_k: int = 20,
               tfrs_metrics: bool = True, chunk_size: Optional[int] = None) -> None:
    self.model = model
    self.ks, self.mrr_k = tuple(ks), mrr_k
    self.max_k = max(max(self.ks), mrr_k)
    spec = {
        alter_data.ITEM_IDS: tf.TensorSpec([None, None], tf.int32),
        alter_data.TARGET_IDS: tf.TensorSpec([None, None], tf.int32),
        alter_data.TARGET_MASK: tf.TensorSpec([None, None], tf.bool),
    }
    factorized = isinstance(model, contract.FactorizedScorer)
    if chunk_size is None:
      chunk_size = model.settings.score_chunk_size if factorized else 0
    # In item chunks: models with item tables, catalogues larger than a chunk.
    self.chunk_size = (chunk_size if chunk_size and factorized
                       and model.num_items > chunk_size else 0)
    # TFRS FactorizedTopK over the fused item matrix, for models that have one
    # (not in chunks: its BruteForce index scores the whole catalogue at once).
    self._tfrs = (retrieval.load_tfrs()
                  if tfrs_metrics and isinstance(model, contract.FusedItemMatrix)
                  and not self.chunk_size else None)
    self._batch_spec = spec
    self._top_lists = tf.function(self._top_lists_eager, input_signature=[spec])
    self._tables = tf.function(lambda: model.item_tables(training=False))
    # traced at the first call, for the tables' shapes
    self._chunked_ranks: Optional[Callable] = None

  def _chunked_ranks_eager(self, batch: Batch,
                           tables: Heads) -> Tuple[Dict[str, tf.Tensor], tf.Tensor]:
    """Target ranks per head and targets, ranking the catalogue in chunks of
    `chunk_size` items (`scoring.top_k_over_chunks`)."""
    positions, targets = alter_data.scored_positions(batch)
    item_ids = batch[alter_data.ITEM_IDS]
    queries = self.model.prefix_queries(item_ids, positions, tables, training=False)
    seen = self.model.seen_items_of(item_ids, positions)
    lists = scoring.top_k_over_chunks(
        scoring.chunked_heads_fn(self.model, queries, tables, seen), self.model.num_items,
        self.max_k, self.chunk_size)
    return {name: scoring.ranks_in_lists(ids, targets) for name, (_, ids) in lists.items()}, \
        targets

  def _top_lists_eager(self, batch: Batch
                       ) -> Tuple[Union[Dict[str, tf.Tensor], tf.Tensor], ...]:
    """Target ranks per head and targets; with TFRS also the fused queries
    [P, D] and each prefix's items [P, max_len]."""
    # Two returns, no annotated local: AutoGraph cannot convert an if/else that
    # assigns an annotated name ("can't be nonlocal") and warns on every Evaluator.
    if self._tfrs is None:
      scores, targets = self.model.score_heads(batch)
      return self._ranks(scores, targets), targets
    scores, targets, queries = self.model.score_heads_and_queries(batch)
    seen = towers.prefix_items(batch[alter_data.ITEM_IDS],
                               tf.where(batch[alter_data.TARGET_MASK]))
    seen = tf.pad(seen, [[0, 0], [0, self.model.settings.max_len - tf.shape(seen)[1]]])
    return self._ranks(scores, targets), targets, queries, seen

  def _ranks(self, scores: Heads, targets: tf.Tensor) -> Dict[str, tf.Tensor]:
    """{head: 1-based target ranks} of each head's scores."""
    return {name: target_ranks(head, targets, self.max_k) for name, head in scores.items()}

  def _retrieval_hits(self) -> retrieval.RetrievalHits:
    settings = self.model.settings
    # (called only with TFRS loaded: `__call__`)
    return retrieval.RetrievalHits(self._tfrs,  # type: ignore[arg-type]
                                   self.model.fused_item_matrix(), self.ks,
                                   settings.max_len, settings.seen_items == "exclude")

  @overload
  def __call__(self, batches: Iterable[Batch], keep_ranks: Literal[False] = False) -> Metrics:
    ...

  @overload
  def __call__(self, batches: Iterable[Batch], keep_ranks: Literal[True]
               ) -> Tuple[Metrics, Dict[str, np.ndarray]]:
    ...

  def __call__(self, batches: Iterable[Batch], keep_ranks: bool = False
               ) -> Union[Metrics, Tuple[Metrics, Dict[str, np.ndarray]]]:
    """Evaluates a dataset of window batches.

    Returns:
      {head: {metric: value}} and, with keep_ranks, {"targets": [N], head: ranks [N]}
      (1-based rank of the target, max_k + 1 when outside the top max_k).
    """
    ranks: Dict[str, list] = {}
    targets_seen = []
    hits = self._retrieval_hits() if self._tfrs is not None else None
    tables = self._tables() if self.chunk_size else None
    chunked_ranks = self._chunked_ranks
    if tables is not None and chunked_ranks is None:
      table_spec = {name: tf.TensorSpec(table.shape, table.dtype)
                    for name, table in tables.items()}
      chunked_ranks = self._chunked_ranks = tf.function(
          self._chunked_ranks_eager, input_signature=[self._batch_spec, table_spec])
    for batch in batches:
      if tables is not None and chunked_ranks is not None:
        batch_ranks, targets, *extra = chunked_ranks(batch, tables)
      else:
        batch_ranks, targets, *extra = self._top_lists(batch)
      for name, head_ranks in batch_ranks.items():
        ranks.setdefault(name, []).append(head_ranks.numpy())
      targets_seen.append(targets.numpy())
      if hits is not None:
        hits.update(extra[0], targets, extra[1])
    per_prefix = {name: np.concatenate(r) for name, r in ranks.items()}
    results = {name: ranking_metrics(r, self.ks, self.mrr_k) for name, r in per_prefix.items()}
    if hits is not None and "fused" in results:
      results["fused"].update(hits.result())
    if not keep_ranks:
      return results
    per_prefix["targets"] = (np.concatenate(targets_seen) if targets_seen
                             else np.zeros([0], np.int32))
    return results, per_prefix


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = (10, 20),
                       mrr_k: int = 20) -> Dict[str, float]:
  """Hits/NDCG/MRR from 1-based target ranks (numpy; the reference definition)."""
  ranks = np.asarray(ranks, dtype=np.float64)
  out = {}
  for k in ks:
    hit = ranks <= k
    out[f"hits@{k}"] = float(hit.mean()) if ranks.size else 0.0
    out[f"ndcg@{k}"] = (float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
                        if ranks.size else 0.0)
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
