"""Catalogue scores of factorized heads, whole or in item chunks.

Every neural model of the package scores an item as a dot product: head h of a
prefix has a query q_h [d_h] and the catalogue an item table T_h [V, d_h]; the
score is q_h . T_h[i] (divided by the head's temperature), with the padding
row and, when the model scores them out, the prefix's own items at -1e9. A
model may add heads combined from those (AlterRec's fused head, Eq. 12).

Models that implement this contract (`contract.FactorizedScorer`) can be ranked over the
catalogue in chunks of items: each chunk's scores [P, C] are computed with the
same ops as the whole-catalogue scores and folded into a running top-k, so
peak memory depends on the chunk size, not on the catalogue. The top-k lists
and target ranks are those of `tf.math.top_k` over the whole catalogue (ties:
lower item index first), as tests/test_chunked_scoring.py checks on trained
shapes of every neural model. One caveat: a [P, C] matmul may round a score's
last bit differently from a [P, V] one (the CPU kernel blocks by shape), so
two items whose scores differ by less than that rounding (~1e-7 relative) can
swap places; scores that are exact in float32 (ties of the test) never do.
"""

from typing import Callable, Dict, Optional, Protocol, Sequence, Tuple, Union

import tensorflow as tf

from alterrec_tf.formats import schema
from alterrec_tf.models.contract import FactorizedScorer

NEG_INF = -1e9

Heads = Dict[str, tf.Tensor]
# An item index, offset or count: a Python int, or an int32 scalar tensor in a graph loop.
Index = Union[int, tf.Tensor]
# {head: (values float [P, k], ids int32 [P, k])} of `top_k_over_chunks`.
TopK = Dict[str, Tuple[tf.Tensor, tf.Tensor]]


class FusionSettings(Protocol):
  """What `fused_query_scales` reads: a `ModelSettings` or a `TrainConfig`."""

  @property
  def alpha(self) -> float: ...

  @property
  def text_temperature(self) -> float: ...


def fused_query_scales(settings: FusionSettings,
                       tower_names: Sequence[str]) -> Dict[str, float]:
  """Weight of each tower's session vector in the fused query (Eq. 12): alpha
  and (1 - alpha) / text_temperature, or 1 / temperature for a single tower.

  One definition for the model's fused head and the serving graph.

  Args:
    settings: anything with `alpha` and `text_temperature`.
    tower_names: the model's towers, ("id", "text"), ("id",) or ("text",).

  Returns:
    {"id": scale, "text": scale} (floats).
  """
  text_scale = 1.0 / settings.text_temperature
  if len(tower_names) == 1:
    return {"id": 1.0, "text": text_scale}
  return {"id": settings.alpha, "text": (1.0 - settings.alpha) * text_scale}


def mask_padding(scores: tf.Tensor, offset: Index = 0) -> tf.Tensor:
  """Puts the padding item (index 0) of [..., C] scores of items
  [offset, offset + C) at -1e9."""
  is_padding = tf.equal(tf.range(tf.shape(scores)[-1]) + offset, schema.PADDING_INDEX)
  return tf.where(is_padding, tf.cast(NEG_INF, scores.dtype), scores)


def mask_items(scores: tf.Tensor, items: tf.Tensor, offset: Index = 0) -> tf.Tensor:
  """Scores [P, C] of items [offset, offset + C) with each row's `items`
  [P, L] (0 = none) at -1e9; items outside the range are ignored. No gradient
  flows to the replaced entries."""
  items = tf.cast(items, tf.int32) - offset
  width = tf.shape(scores)[1]
  inside = (items >= 0) & (items < width)
  rows = tf.broadcast_to(tf.range(tf.shape(items)[0])[:, None], tf.shape(items))
  indices = tf.boolean_mask(tf.stack([rows, items], axis=-1), inside)
  fill = tf.fill([tf.shape(indices)[0]], tf.cast(NEG_INF, scores.dtype))
  return tf.tensor_scatter_nd_update(scores, indices, fill)


def heads_over_items(model: FactorizedScorer, queries: Heads, tables: Heads,
                     seen_items: Optional[tf.Tensor] = None, offset: Index = 0) -> Heads:
  """The model's heads for the items whose rows `tables` hold.

  Args:
    model: a `FactorizedScorer`.
    queries: {head: [P, d_h]} (`prefix_queries`).
    tables: {head: [C, d_h]}: rows offset..offset + C - 1 of `item_tables`.
    seen_items: int [P, L] items scored out per prefix (0 = none), or None.
    offset: item index of the tables' first row.

  Returns:
    {head: float [P, C]}.
  """
  temperatures = model.head_temperatures()
  heads = {}
  for name, query in queries.items():
    logits = tf.matmul(query, tables[name], transpose_b=True)
    temperature = temperatures.get(name, 1.0)
    if temperature != 1.0:
      logits = logits / temperature
    logits = mask_padding(logits, offset)
    heads[name] = logits if seen_items is None else mask_items(logits, seen_items, offset)
  return model.fuse_heads(heads)


def top_k_over_chunks(chunk_scores: Callable[[Index, Index], Heads],
                      num_items: int, k: Index, chunk_size: int) -> TopK:
  """Top-k (values, item ids) of each head over items 0..num_items - 1, chunk
  by chunk, without a [P, num_items] tensor.

  The lists equal `tf.math.top_k` over the whole catalogue: sorted by score,
  ties by lower item index (the running list holds lower indices than each new
  chunk and comes first in the merge, which keeps ties in that order).

  Args:
    chunk_scores: (offset, size) -> {head: float [P, size]} scores of items
      offset..offset + size - 1.
    num_items: V, the catalogue size including padding.
    k: list length (at most num_items; chunks may be shorter than k): a
      Python int, or an int32 scalar tensor (the lists' length is then not
      static).
    chunk_size: items per chunk (at least 1).

  Returns:
    {head: (values float [P, k], ids int32 [P, k])}.
  """
  num_chunks = -(-num_items // chunk_size)
  first_size = min(chunk_size, num_items)
  static_k = isinstance(k, int)
  state = {name: _top_k_with_ids(scores, min(k, first_size) if static_k
                                 else tf.minimum(k, first_size), 0)
           for name, scores in chunk_scores(0, first_size).items()}
  if num_chunks == 1:
    return state

  def body(chunk: tf.Tensor, state: TopK) -> Tuple[tf.Tensor, TopK]:
    offset = chunk * chunk_size
    size = tf.minimum(chunk_size, num_items - offset)
    merged = {}
    for name, scores in chunk_scores(offset, size).items():
      values, ids = state[name]
      new_values, new_ids = _top_k_with_ids(scores, tf.minimum(k, size), offset)
      merged[name] = _top_k_merge(tf.concat([values, new_values], axis=1),
                                  tf.concat([ids, new_ids], axis=1), k)
    return chunk + 1, merged

  invariants = {name: (tf.TensorShape([None, None]), tf.TensorShape([None, None]))
                for name in state}
  _, state = tf.while_loop(lambda chunk, _: chunk < num_chunks, body, (tf.constant(1), state),
                           shape_invariants=(tf.TensorShape([]), invariants))
  for values, ids in state.values():  # the loop forgets the list length
    values.set_shape([None, min(k, num_items) if static_k else None])
    ids.set_shape([None, min(k, num_items) if static_k else None])
  return state


def _top_k_with_ids(scores: tf.Tensor, k: Index, offset: Index) -> Tuple[tf.Tensor, tf.Tensor]:
  values, positions = tf.math.top_k(scores, k=k)
  return values, positions + offset


def _top_k_merge(values: tf.Tensor, ids: tf.Tensor, k: Index) -> Tuple[tf.Tensor, tf.Tensor]:
  top_values, positions = tf.math.top_k(values, k=tf.minimum(k, tf.shape(values)[1]))
  return top_values, tf.gather(ids, positions, batch_dims=1)


def ranks_in_lists(top_ids: tf.Tensor, target_ids: tf.Tensor) -> tf.Tensor:
  """1-based place of each target in its top-k list, k + 1 when absent: int32 [P]."""
  k = tf.shape(top_ids)[1]
  hit = tf.equal(top_ids, tf.cast(target_ids, top_ids.dtype)[:, None])
  place = tf.argmax(tf.cast(hit, tf.int32), axis=1, output_type=tf.int32) + 1
  return tf.where(tf.reduce_any(hit, axis=1), place, k + 1)


def slice_tables(tables: Heads, offset: Index, size: Index) -> Heads:
  """Rows offset..offset + size - 1 of each table."""
  return {name: table[offset:offset + size] for name, table in tables.items()}


def chunked_heads_fn(model: FactorizedScorer, queries: Heads, tables: Heads,
                     seen_items: Optional[tf.Tensor]) -> Callable[[Index, Index], Heads]:
  """(offset, size) -> the model's heads over items offset..offset + size - 1."""
  def chunk_scores(offset: Index, size: Index) -> Heads:
    return heads_over_items(model, queries, slice_tables(tables, offset, size),
                            seen_items, offset)
  return chunk_scores


def sampled_logits(queries: tf.Tensor, table: tf.Tensor, targets: tf.Tensor,
                   negative_ids: tf.Tensor, augmented_ids: Optional[tf.Tensor],
                   seen: Optional[tf.Tensor], temperature: float = 1.0
                   ) -> Tuple[tf.Tensor, tf.Tensor, Optional[tf.Tensor]]:
  """One head's logits of the targets [P], negatives [P, K] and augmented
  positives [P, p] (or None) from the item rows they name, with padding and the
  prefix's items (`seen`, int [P, L], 0 = none) at `NEG_INF`, as in the [P, V]
  scores of `heads_over_items` (a large catalogue's loss never builds [P, V]).

  Args:
    queries: float [P, d] the head's query of each prefix.
    table: float [V, d] its item table.
    targets, negative_ids, augmented_ids: int item ids.
    seen: the prefix's items, or None when seen items are kept.
    temperature: the head's temperature (logits divided by it).
  """
  seen = None if seen is None else tf.cast(seen, tf.int32)

  def logits_of(ids: tf.Tensor) -> tf.Tensor:
    ids = tf.cast(ids, tf.int32)
    logits = tf.einsum("pd,pkd->pk", queries, tf.gather(table, ids))
    if temperature != 1.0:
      logits = logits / temperature
    scored_out = tf.equal(ids, 0)
    if seen is not None:
      scored_out |= tf.reduce_any(tf.equal(ids[:, :, None], seen[:, None, :]), axis=2)
    return tf.where(scored_out, tf.cast(NEG_INF, logits.dtype), logits)

  augmented = None if augmented_ids is None else logits_of(augmented_ids)
  return logits_of(targets[:, None])[:, 0], logits_of(negative_ids), augmented
