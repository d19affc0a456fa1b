"""The per-prefix reference input: one padded sequence per scored prefix.

The authors' public code feeds its model one example per prefix: the items
s_o..s_j of the prefix, right-padded to max_len, and the encoder runs once per
prefix. This package instead runs the causal encoder once per window and reads
the vector of every prefix from that one pass (see data.py). To measure what
that saves, and to test that it changes nothing, `expand_to_prefixes` turns a
window batch into the per-prefix batch of the reference:

  window w, scored position j  ->  one row with
    item_ids    = item_ids[w, :j+1] right-padded with 0 to max_len
    target_ids  = target_ids[w, j] at position j, 0 elsewhere
    target_mask = True at position j only

Rows come in the order of `tf.where(target_mask)` (window-major, then
position), the order in which `AlterRec.train_step` enumerates the scored
prefixes of a window batch, so both batches give the same targets in the same
order and a stateless seed draws the same [P, K] random negatives for both.
Positions inside a row are counted from the window's first item, as in the
window, so the Transformer sees the same inputs at the scored position.

`AlterRec.train_step` and `score_heads` only read `target_mask`, so the same
model trains and evaluates on expanded batches: that is the reference path.
Pure TensorFlow: works eagerly, inside `tf.function` and in `tf.data.map`.
"""

from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import tensorflow as tf

from alterrec_tf.data import windows as alter_data
from alterrec_tf.formats import schema

if TYPE_CHECKING:
  from alterrec_tf.models.alterrec import AlterRec


def expand_to_prefixes(batch: Dict[str, tf.Tensor],
                       max_len: Optional[int] = None) -> Dict[str, tf.Tensor]:
  """One row per scored prefix of a window batch.

  Args:
    batch: `ITEM_IDS`, `TARGET_IDS` int [B, n] and `TARGET_MASK` bool [B, n]
      (other keys are dropped). Batches trimmed to their longest window
      (n < max_len) are fine.
    max_len: pad every row to this length (the reference pads each prefix to
      the model's max_len); None keeps the batch's width n.

  Returns:
    The same keys with P rows, P = number of True entries of the mask:
    `ITEM_IDS`, `TARGET_IDS` [P, max_len or n] of the input dtypes,
    `TARGET_MASK` bool [P, max_len or n] with exactly one True per row.
  """
  item_ids = batch[alter_data.ITEM_IDS]
  target_ids = batch[alter_data.TARGET_IDS]
  mask = batch[alter_data.TARGET_MASK]
  if max_len is not None:
    width = tf.shape(item_ids)[1]
    extra = [[0, 0], [0, tf.maximum(max_len - width, 0)]]
    item_ids, target_ids = tf.pad(item_ids, extra), tf.pad(target_ids, extra)
    mask = tf.pad(mask, extra)
    item_ids, target_ids, mask = (
        tf.ensure_shape(t, [None, max_len]) for t in (item_ids, target_ids, mask))
  else:
    max_len = item_ids.shape[1]
    if max_len is None:
      max_len = tf.shape(item_ids)[1]
  positions = tf.where(mask)  # int64 [P, 2], row-major: the train_step order
  windows = tf.gather(item_ids, positions[:, 0])  # [P, L]
  scored = tf.cast(positions[:, 1], tf.int32)[:, None]  # [P, 1]
  columns = tf.range(max_len, dtype=tf.int32)[None, :]  # [1, L]
  padding = tf.cast(schema.PADDING_INDEX, item_ids.dtype)
  prefix_ids = tf.where(columns <= scored, windows, padding)
  at_target = tf.equal(columns, scored)  # [P, L]
  targets = tf.gather_nd(target_ids, positions)[:, None]
  prefix_targets = tf.where(at_target, targets, tf.zeros_like(targets))
  return {alter_data.ITEM_IDS: prefix_ids,
          alter_data.TARGET_IDS: prefix_targets,
          alter_data.TARGET_MASK: at_target}


def num_prefixes(batch: Dict[str, tf.Tensor]) -> tf.Tensor:
  """Scored prefixes of a (window or expanded) batch: int32 scalar."""
  return tf.reduce_sum(tf.cast(batch[alter_data.TARGET_MASK], tf.int32))


def tower_loss_and_gradients(model: "AlterRec", name: str, batch: Dict[str, tf.Tensor],
                             seed: tf.Tensor, training: bool = True
                             ) -> Tuple[tf.Tensor, List[Optional[tf.Tensor]], tf.Tensor]:
  """`AlterRec.loss_and_gradients` with dense gradients (for comparisons).

  Works on window batches and on `expand_to_prefixes` batches alike.

  Returns:
    (loss scalar, [dense gradient of each of tower.trainable_variables],
     negative_ids [P, K]).
  """
  loss, gradients, negative_ids = model.loss_and_gradients(name, batch, seed, training)
  gradients = [tf.convert_to_tensor(g) if g is not None else None for g in gradients]
  return loss, gradients, negative_ids
