"""The serving graph's catalogue side: fused queries [B, D] -> top k item indices.

`CatalogueScorer` scores every item of the catalogue for a request's fused
queries (`serving.query`) and keeps the top k:

  scores = q @ item_matrix^T = q @ item_blocks[b] per block           [B, V]

with the popularity of an empty session in place of its scores, the request's
items at NEG_INF (`exclude_session_items`) and the padding column at
PADDING_SCORE, below them.

Ranking: the top k by score; equal scores are listed by lower item index
(tf.math.top_k's order over the whole catalogue), also when the catalogue is
scored in chunks. With `chunk_size` (export: --serving_chunk_size) below V,
items [offset, offset + C) are scored chunk by chunk (their matmul [B, C],
the popularity of empty sessions, the request's items and the padding column
scored out inside the chunk) and folded into a running top k in a
tf.while_loop (`models.scoring.top_k_over_chunks`, as evaluation ranks big
catalogues), so a request's scores take B x C floats, not B x V; the lists are
the one-matmul lists. Only standard TensorFlow ops (While, MatMul, TopKV2, ...).

`CatalogueScorer` is a plain object, not a `tf.Module`: the variables it reads
stay tracked by the `serving.module.ServingModule` that holds them.
"""

from typing import Dict, Tuple, Union

import numpy as np
import tensorflow as tf

from alterrec_tf.formats import schema
from alterrec_tf.models import scoring

NEG_INF = -1e9  # score of excluded items (as towers.NEG_INF)
PADDING_SCORE = 2 * NEG_INF  # the padding column: below every item

# name scopes of this side's pieces (benchmarks/serving_profile.py adds up the time of each)
SCOPE_SCORES = "scores"
SCOPE_SEEN = "seen_items"
SCOPE_TOP_K = "top_k"


def blocks(matrix: np.ndarray, chunk_size: int) -> np.ndarray:
  """The rows [V, D] as transposed blocks [ceil(V / C), D, C]: block b holds
  items b * C .. b * C + C - 1 as columns (the last block zero-padded)."""
  num_items, width = matrix.shape
  count = -(-num_items // chunk_size)
  result = np.zeros([count, width, chunk_size], np.float32)
  for block in range(count):
    rows = matrix[block * chunk_size:(block + 1) * chunk_size]
    result[block, :, :len(rows)] = rows.T
  return result


class CatalogueScorer:
  """Fused queries [B, D] -> the top k items of the catalogue.

  Args:
    item_blocks: variable float [ceil(V / C), D, C], `blocks` of the item matrix.
    popularity: variable float [V], the scores of an empty session.
    num_items: V.
    block_size: C (V without chunks).
    exclude_session_items: score the request's items NEG_INF.
  """

  def __init__(self, item_blocks: tf.Variable, popularity: tf.Variable, num_items: int,
               block_size: int, exclude_session_items: bool) -> None:
    self.item_blocks, self.popularity = item_blocks, popularity
    self.num_items, self.block_size = int(num_items), int(block_size)
    self.exclude_session_items = bool(exclude_session_items)

  def top_k(self, queries: tf.Tensor, dense: tf.Tensor, empty: tf.Tensor,
            k: Union[int, tf.Tensor]) -> Tuple[tf.Tensor, tf.Tensor]:
    """Top k (scores float [B, k], item indices int64 [B, k]) of fused queries
    [B, D] for the request's items dense int32 [B, L] (0 = padding) and its
    empty sessions bool [B]; k int32 [] is clipped to [0, V - 1].

    The catalogue is scored in one [B, V] matmul, or, with a block size below
    V, chunk by chunk into a running top k (`scoring.top_k_over_chunks`: the
    same lists, ties by lower item index)."""
    item_blocks = tf.convert_to_tensor(self.item_blocks)  # [chunks, D, C]

    def chunk_scores(offset: scoring.Index, size: scoring.Index) -> Dict[str, tf.Tensor]:
      return {"fused": self.item_scores(queries, item_blocks[offset // self.block_size], dense,
                                        empty, offset, size)}

    k = tf.clip_by_value(tf.cast(k, tf.int32), 0, self.num_items - 1)
    with tf.name_scope(SCOPE_TOP_K):
      values, indices = scoring.top_k_over_chunks(chunk_scores, self.num_items, k,
                                                  self.block_size)["fused"]
    return values, tf.cast(indices, tf.int64)

  def item_scores(self, queries: tf.Tensor, block: tf.Tensor, dense: tf.Tensor,
                  empty: tf.Tensor, offset: scoring.Index, size: scoring.Index) -> tf.Tensor:
    """Served scores [B, size] of items offset..offset + size - 1 (the first
    `size` columns of their block [D, C] of `item_blocks`): the fused score,
    the popularity of an empty session, NEG_INF for the request's items
    (`exclude_session_items`), PADDING_SCORE for the padding item."""
    with tf.name_scope(SCOPE_SCORES):
      scores = tf.matmul(queries, block)
      if not isinstance(size, int) or size < self.block_size:  # the last block: padded
        scores = scores[:, :size]
      popularity = self.popularity[offset:offset + size]
      scores = tf.where(empty[:, None], popularity[None, :], scores)
    if self.exclude_session_items:
      with tf.name_scope(SCOPE_SEEN):
        scores = scoring.mask_items(scores, dense, offset)
    with tf.name_scope(SCOPE_SCORES):
      # Padding ranks below everything, excluded items included, so that it
      # is never returned (k <= V - 1).
      is_padding = tf.equal(tf.range(size) + offset, schema.PADDING_INDEX)[None, :]
      return tf.where(is_padding, tf.constant(PADDING_SCORE, tf.float32), scores)
