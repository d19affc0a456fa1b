"""Fused Hits@K with TFRS retrieval metrics over the exported item matrix.

`tfrs.metrics.FactorizedTopK` ranks a `tfrs.layers.factorized_top_k.BruteForce`
index of the fused item matrix (the towers' item vectors side by side: what
the SavedModel serves) for each prefix's fused query, and counts the target in
the top K. The evaluator reports it as `tfrs_hits@K` of the "fused" head next
to the keras-rs metrics, which rank the fused scores themselves.

TFRS 0.7.7 is built on Keras 2: it imports only when TensorFlow was first
imported with `TF_USE_LEGACY_KERAS=1` (`alterrec_tf/__init__.py` sets it);
`tf.keras` is then Keras 2 while the models stay Keras 3 (`import keras`).
Where it cannot be imported (TensorFlow imported first without it), the
evaluator reports no TFRS figures and says why once.

Seen items: with `--seen_items=exclude` the prefix's items are never ranked.
`FactorizedTopK` hands its index nothing but the query tensor, so the
prefix's item ids travel in it as extra float columns (exact for ids below
2**24) and `SeenItemsExcludedIndex` takes them out again and calls the
BruteForce index's `query_with_exclusions` logic (top k + L, then the
prefix's items removed).

Ties: both rankings put the lower item index first among equal scores, but
the fused score is summed in another order here (one matmul over [V, D]
instead of alpha * ID + (1 - alpha) * text), so a target tied to float
precision with another item can move by one place: the two Hits@K agree to
within that (BUILD_NOTES, "TFRS retrieval metrics").
"""

import functools
import sys
from types import ModuleType
from typing import Any, Dict, NoReturn, Optional, Sequence, Tuple

import tensorflow as tf

_MAX_EXACT_FLOAT_ID = 2 ** 24


@functools.lru_cache(maxsize=None)
def load_tfrs() -> Optional[ModuleType]:
  """The `tensorflow_recommenders` module, or None (with one stderr line, once, saying why)."""
  try:
    import tensorflow_recommenders as tfrs
    return tfrs
  except Exception as error:  # TFRS raises several kinds
    print("note: no TFRS retrieval metrics: tensorflow_recommenders cannot be imported "
          f"({type(error).__name__}: {str(error).splitlines()[0][:120]}); import "
          "alterrec_tf before tensorflow, or set TF_USE_LEGACY_KERAS=1",
          file=sys.stderr, flush=True)
    return None


def _index_classes(tfrs: Any) -> type:
  """The index layer that reads the prefix's items from the query's last columns."""

  class SeenItemsExcludedIndex(tfrs.layers.factorized_top_k.TopK):
    """BruteForce top-k whose queries carry the ids to exclude.

    Args:
      index: an indexed `BruteForce`.
      query_dim: D; query columns D.. hold the prefix's item ids as floats.
    """

    def __init__(self, index: Any, query_dim: int, k: int) -> None:
      super().__init__(k=k)
      self._index, self._query_dim = index, query_dim

    def index(self, candidates: tf.Tensor,
              identifiers: Optional[tf.Tensor] = None) -> NoReturn:
      raise NotImplementedError("index the wrapped BruteForce")

    def call(self, queries: tf.Tensor, k: Optional[int] = None) -> Tuple[tf.Tensor, tf.Tensor]:
      k = k if k is not None else self._k
      vectors, seen = queries[:, :self._query_dim], queries[:, self._query_dim:]
      exclusions = tf.cast(seen, tf.int32)
      scores, ids = self._index(vectors, k=k + seen.shape[1])
      return tfrs.layers.factorized_top_k._exclude(
          scores, ids, exclude=exclusions, k=k)

    def is_exact(self) -> bool:
      return True

  return SeenItemsExcludedIndex


class RetrievalHits:
  """TFRS FactorizedTopK Hits@K of one evaluation over one index.

  Args:
    tfrs: the imported module (`load_tfrs()`).
    item_matrix: float [V, D] fused item matrix; row 0 (padding) is not indexed.
    ks: the cut-offs.
    max_len: L, columns of the seen-items matrix (with `exclude_seen`).
    exclude_seen: never rank the prefix's own items.
  """

  def __init__(self, tfrs: ModuleType, item_matrix: tf.Tensor, ks: Sequence[int], max_len: int,
               exclude_seen: bool) -> None:
    item_matrix = tf.convert_to_tensor(item_matrix, tf.float32)
    num_items = int(item_matrix.shape[0])
    if exclude_seen and num_items > _MAX_EXACT_FLOAT_ID:
      raise ValueError(f"{num_items} items: ids above 2**24 do not survive the float "
                       "columns that carry the seen items")
    self.ks, self.exclude_seen, self.max_len = tuple(ks), exclude_seen, max_len
    self._dim = int(item_matrix.shape[1])
    index = tfrs.layers.factorized_top_k.BruteForce(k=max(self.ks))
    index.index(item_matrix[1:], identifiers=tf.range(1, num_items))
    candidates = (_index_classes(tfrs)(index, self._dim, max(self.ks)) if exclude_seen
                  else index)
    self.metric = tfrs.metrics.FactorizedTopK(candidates=candidates, ks=list(self.ks))
    width = self._dim + (max_len if exclude_seen else 0)
    self._update = tf.function(self._update_eager, input_signature=[
        tf.TensorSpec([None, width], tf.float32), tf.TensorSpec([None], tf.int32)])

  def _update_eager(self, queries: tf.Tensor, target_ids: tf.Tensor) -> tf.Tensor:
    true_vectors = tf.zeros_like(queries)  # id-based evaluation: only the shape is read
    self.metric.update_state(queries, true_vectors, true_candidate_ids=target_ids)
    return tf.constant(0)

  def update(self, queries: tf.Tensor, target_ids: tf.Tensor,
             seen_ids: Optional[tf.Tensor] = None) -> None:
    """Adds prefixes.

    Args:
      queries: float [P, D] fused queries.
      target_ids: int [P].
      seen_ids: int [P, L] the prefix's items (0 = none), with `exclude_seen`.
    """
    if self.exclude_seen:
      queries = tf.concat([queries, tf.cast(seen_ids, tf.float32)], axis=1)
    self._update(tf.cast(queries, tf.float32), tf.cast(target_ids, tf.int32))

  def result(self) -> Dict[str, float]:
    """{"tfrs_hits@K": value}."""
    values = self.metric.result()
    return {f"tfrs_hits@{k}": float(v) for k, v in zip(self.ks, values)}
