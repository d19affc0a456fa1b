"""Negative sampling and the sampled softmax loss of AlterRec (Eq. 8-11).

Logits are gathered from the full-catalogue score matrix [P, V]; a
[P, negatives, d] tensor of item embeddings is never built.
"""

from typing import Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from alterrec_tf.formats import schema

SCORED_OUT = -1e8  # logits at or below this are scored-out items (-1e9)


def partner_ranking(top_scores: tf.Tensor, top_ids: tf.Tensor, k1: int,
                    p: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """Hard negatives and augmented positives from the partner's ranking (Eq. 7).

  The hard negatives are the items at the partner's ranks k1..k2-1 (0-based;
  the paper's r[k1:k2]) as a set, in no particular order: the loss is a sum
  over them and `mix_negatives` draws a uniformly random subset, so their
  order never matters, and an unsorted `top_k` is ~2x cheaper than a sorted
  one at k2=2000 (BUILD_NOTES, "Hard-negative selection").

  Args:
    top_scores, top_ids: float / int32 [P, k2]: the partner's k2 best items
      and their scores, in any order (`tf.math.top_k(scores, k2, sorted=False)`
      or `scoring.top_k_over_chunks`).
    k1: ranks k1..k2-1 are the negatives.
    p: the top-p ranks are the augmented positives, best first (0 for none).

  Returns:
    hard_negative_ids int32 [P, k2 - k1] and augmented_positive_ids int32 [P, p].
  """
  k2 = top_ids.shape[1]
  head = max(k1, p)
  if head == 0:
    return top_ids, top_ids[:, :0]
  # The best `head` of the k2 (a cheap sort of [P, k2] values), best first.
  head_positions = tf.math.top_k(top_scores, k=head, sorted=True).indices
  augmented_ids = tf.gather(top_ids, head_positions[:, :p], batch_dims=1)
  rows = tf.shape(top_ids)[0]
  row_index = tf.broadcast_to(tf.range(rows)[:, None], [rows, k1])
  in_head = tf.scatter_nd(tf.stack([row_index, head_positions[:, :k1]], axis=2),
                          tf.ones([rows, k1], tf.bool), [rows, k2])
  hard_negative_ids = tf.reshape(tf.boolean_mask(top_ids, tf.logical_not(in_head)),
                                 [-1, k2 - k1])
  return hard_negative_ids, augmented_ids


def top_k_set(scores: tf.Tensor, k: int,
              selection: str = "top_k") -> Tuple[tf.Tensor, tf.Tensor]:
  """The k best items of each row as a set (in no particular order).

  Args:
    scores: float [P, V].
    k: how many (static, at most V).
    selection: "top_k" (`tf.math.top_k`, unsorted) or "argpartition" (numpy's
      introselect through `tf.numpy_function`: the same set except among
      scores tied at the k-th place, which top_k breaks by lower index).

  Returns:
    (scores float [P, k], item ids int32 [P, k]).
  """
  if selection == "top_k":
    return tf.math.top_k(scores, k=k, sorted=False)
  if selection != "argpartition":
    raise ValueError(f"unknown selection {selection!r}: use top_k or argpartition")

  def best_k(rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    ids = np.argpartition(rows, rows.shape[1] - k, axis=1)[:, rows.shape[1] - k:]
    return np.take_along_axis(rows, ids, axis=1), ids.astype(np.int32)

  values, ids = tf.numpy_function(best_k, [scores], [scores.dtype, tf.int32], stateful=False)
  values.set_shape([None, k])
  ids.set_shape([None, k])
  return values, ids


def uniform_negatives(seed: tf.Tensor, num_rows: Union[int, tf.Tensor], count: int,
                      num_items: int) -> tf.Tensor:
  """Uniform item indices in [1, num_items): int32 [num_rows, count].

  Args:
    seed: int32 [2] stateless seed (e.g. [run seed, step]).
  """
  return tf.random.stateless_uniform([num_rows, count], seed=seed, minval=1,
                                     maxval=num_items, dtype=tf.int32)


def mix_negatives(hard_negative_ids: tf.Tensor, seed: tf.Tensor, random_share: float,
                  num_items: int) -> tf.Tensor:
  """Reference-code negatives: a random share uniform, the rest a random subset
  of the hard negatives, same total count."""
  count = hard_negative_ids.shape[1]
  num_random = int(round(random_share * count))
  if num_random == 0:
    return hard_negative_ids
  rows = tf.shape(hard_negative_ids)[0]
  noise = tf.random.stateless_uniform([rows, count], seed=seed)
  keep = tf.math.top_k(noise, k=count - num_random).indices
  subset = tf.gather(hard_negative_ids, keep, batch_dims=1)
  random_ids = uniform_negatives(seed + 1, rows, num_random, num_items)
  return tf.concat([subset, random_ids], axis=1)


def mix_negatives_dynamic(hard_negative_ids: tf.Tensor, seed: tf.Tensor,
                          random_share: tf.Tensor, num_items: int) -> tf.Tensor:
  """`mix_negatives` with the share a tensor (annealed during training).

  round(random_share * K) of the K slots hold uniform items, the others a
  uniformly random subset of the hard negatives; the count may change between
  steps without retracing.

  Args:
    hard_negative_ids: int32 [P, K].
    seed: int32 [2] stateless seed.
    random_share: float scalar tensor in [0, 1].
    num_items: catalogue size including padding.

  Returns:
    int32 [P, K].
  """
  count = hard_negative_ids.shape[1]
  rows = tf.shape(hard_negative_ids)[0]
  num_random = tf.cast(tf.round(tf.cast(random_share, tf.float32) * count), tf.int32)
  noise = tf.random.stateless_uniform([rows, count], seed=seed)
  shuffled = tf.gather(hard_negative_ids, tf.math.top_k(noise, k=count).indices,
                       batch_dims=1)
  random_ids = uniform_negatives(seed + 1, rows, count, num_items)
  is_hard = tf.range(count)[None, :] < count - num_random
  return tf.where(is_hard, shuffled, random_ids)


def drop_close_negatives(negative_ids: tf.Tensor, target_ids: tf.Tensor, unit_text: tf.Tensor,
                         min_cosine: float) -> tf.Tensor:
  """The false-negative guard: negatives whose text is too close to the target's
  become padding (id 0, whose logit is -1e9, so they add nothing to the loss).

  Args:
    negative_ids: int [P, K].
    target_ids: int [P].
    unit_text: float [V, t] L2-normalised item text vectors (padding row any).
    min_cosine: a negative with cosine(text of target, text of negative) >= this
      is dropped.

  Returns:
    int32 [P, K].
  """
  negative_ids = tf.cast(negative_ids, tf.int32)
  cosines = tf.matmul(tf.gather(unit_text, tf.cast(target_ids, tf.int32)), unit_text,
                      transpose_b=True)  # [P, V]
  close = tf.gather(cosines, negative_ids, batch_dims=1) >= min_cosine
  return tf.where(close, tf.zeros_like(negative_ids), negative_ids)


def drop_listed_negatives(negative_ids: tf.Tensor, target_ids: tf.Tensor,
                          partner_lists: tf.Tensor) -> tf.Tensor:
  """The co-occurrence guard: negatives on their target's list of frequent
  partners (`data.cooccurrence.top_cooccurring`) become padding (id 0).

  Args:
    negative_ids: int [P, K].
    target_ids: int [P].
    partner_lists: int32 [V, N], each row ascending (unused slots hold V).

  Returns:
    int32 [P, K].
  """
  negative_ids = tf.cast(negative_ids, tf.int32)
  lists = tf.gather(partner_lists, tf.cast(target_ids, tf.int32))  # [P, N]
  slots = tf.searchsorted(lists, negative_ids, side="left")  # [P, K]
  slots = tf.minimum(slots, tf.shape(lists)[1] - 1)
  listed = tf.equal(tf.gather(lists, slots, batch_dims=1), negative_ids)
  return tf.where(listed, tf.zeros_like(negative_ids), negative_ids)


def reduce_prefix_losses(per_prefix: tf.Tensor,
                         prefixes_per_batch: Optional[float] = None) -> tf.Tensor:
  """Batch loss from per-prefix losses [P]: their mean, or (with
  `prefixes_per_batch`, a constant of the split) their sum divided by it, so
  that every prefix weighs the same whatever its batch."""
  if prefixes_per_batch:
    return tf.reduce_sum(per_prefix) / tf.cast(prefixes_per_batch, per_prefix.dtype)
  return tf.reduce_mean(per_prefix)


def sampled_softmax_loss(logits: tf.Tensor, target_ids: tf.Tensor, negative_ids: tf.Tensor,
                         augmented_ids: Optional[tf.Tensor] = None, beta: float = 0.0,
                         prefixes_per_batch: Optional[float] = None) -> tf.Tensor:
  """Mean over prefixes of -log softmax(target | target + negatives) (Eq. 8-9),
  plus beta * sum over augmented positives of the same with their logit (Eq. 10-11).

  A negative or augmented positive equal to the target is dropped: the target
  is never its own negative, and counting it as augmented would double it.
  Items whose logit is -1e9 or less (padding, and the prefix's own items when
  they are scored out, `towers.mask_seen_items`) add nothing as negatives
  (exp(-1e9) = 0) and are dropped as augmented positives.

  Args:
    logits: float [P, V] full-catalogue scores of the trained tower.
    target_ids: int [P].
    negative_ids: int [P, K].
    augmented_ids: int [P, p] or None.
    beta: weight of the augmented positives.
    prefixes_per_batch: see `reduce_prefix_losses`.

  Returns:
    Scalar loss.
  """
  target_ids = tf.cast(target_ids, tf.int32)
  negative_ids = tf.cast(negative_ids, tf.int32)
  target_logits = tf.gather(logits, target_ids[:, None], batch_dims=1)[:, 0]
  negative_logits = tf.gather(logits, negative_ids, batch_dims=1)
  augmented_logits = None
  if augmented_ids is not None and augmented_ids.shape[1]:
    augmented_logits = tf.gather(logits, tf.cast(augmented_ids, tf.int32), batch_dims=1)
  return sampled_softmax_loss_from_logits(target_logits, target_ids, negative_logits,
                                          negative_ids, augmented_logits, augmented_ids,
                                          beta, prefixes_per_batch)


def sampled_softmax_loss_from_logits(target_logits: tf.Tensor, target_ids: tf.Tensor,
                                     negative_logits: tf.Tensor, negative_ids: tf.Tensor,
                                     augmented_logits: Optional[tf.Tensor] = None,
                                     augmented_ids: Optional[tf.Tensor] = None,
                                     beta: float = 0.0,
                                     prefixes_per_batch: Optional[float] = None) -> tf.Tensor:
  """`sampled_softmax_loss` from the logits it reads, already gathered (large
  catalogues score only these items, never [P, V]).

  Args:
    target_logits: float [P]; target_ids: int [P].
    negative_logits: float [P, K]; negative_ids: int [P, K].
    augmented_logits: float [P, p] or None; augmented_ids: int [P, p] or None.
    beta, prefixes_per_batch: as in `sampled_softmax_loss`.
  """
  target_ids = tf.cast(target_ids, tf.int32)
  is_target = tf.equal(tf.cast(negative_ids, tf.int32), target_ids[:, None])
  negative_logits = tf.where(is_target, tf.cast(-1e9, negative_logits.dtype), negative_logits)
  negatives_lse = tf.reduce_logsumexp(negative_logits, axis=1)
  # log(e^x + sum e^neg) - x = softplus(lse(neg) - x)
  per_prefix = tf.nn.softplus(negatives_lse - target_logits)
  if augmented_logits is not None and augmented_ids is not None and augmented_ids.shape[1]:
    augmented_ids = tf.cast(augmented_ids, tf.int32)
    keep = (tf.not_equal(augmented_ids, target_ids[:, None])
            & tf.not_equal(augmented_ids, schema.PADDING_INDEX)
            & (augmented_logits > SCORED_OUT))
    augmented = tf.nn.softplus(negatives_lse[:, None] - augmented_logits)
    per_prefix += beta * tf.reduce_sum(tf.where(keep, augmented, 0.0), axis=1)
  return reduce_prefix_losses(per_prefix, prefixes_per_batch)


def full_softmax_loss(logits: tf.Tensor, target_ids: tf.Tensor,
                      prefixes_per_batch: Optional[float] = None) -> tf.Tensor:
  """Cross-entropy over the whole catalogue (baselines): [P, V], [P] -> scalar
  (`reduce_prefix_losses`)."""
  return reduce_prefix_losses(tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.cast(target_ids, tf.int32), logits=logits), prefixes_per_batch)
