"""What a step of one AlterRec tower trains against (Algorithm 1, lines 4-9).

Random phases: `settings.num_negatives` uniform negatives per scored prefix.
Hard phases: the frozen partner tower ranks the catalogue at each prefix (dropout
off, no gradient, the prefix's own items scored out when the settings say so);
its ranks k1..k2 are the negatives and, for AlterRec_aug, the top-p of
`AlterRec.augmentation_source_of` the augmented positives (section 4.3). The
false-negative guards then drop band items too close to the target (by text
cosine, `--false_negative_cosine`; by co-occurrence, `--false_negative_cooccurrence`)
and `random_negative_share` of the band is replaced by uniform draws (static, or
annealed by the model's `random_share` variable).

These functions read the model (`alterrec.AlterRec`): its towers, settings,
`hard_negatives` flag, `random_share` variable and guard tables (`guard_tables`).
"""

from typing import Any, Optional, Tuple

import numpy as np
import tensorflow as tf

from alterrec_tf.models import negatives as alter_negatives
from alterrec_tf.models import scoring
from alterrec_tf.models import settings as model_settings

# The model these functions read: an `alterrec.AlterRec` (which imports this module).
AlterRecModel = Any


def guard_tables(settings: model_settings.ModelSettings,
                 text_embeddings: Optional[np.ndarray],
                 partner_lists: Optional[np.ndarray]
                 ) -> Tuple[Optional[tf.Tensor], Optional[tf.Tensor]]:
  """The false-negative guards' tables: (unit text [V, text_dim], the rows
  L2-normalised, or None; partner lists int32 [V, N], or None).

  Raises:
    ValueError: the co-occurrence guard is on without partner lists.
  """
  unit_text = None
  if settings.false_negative_cosine > 0.0 and text_embeddings is not None:
    unit_text = tf.math.l2_normalize(tf.convert_to_tensor(text_embeddings, tf.float32), axis=1)
  lists = None
  if settings.false_negative_cooccurrence > 0:
    if partner_lists is None:
      raise ValueError("--false_negative_cooccurrence needs the training sessions' partner "
                       "lists (data.cooccurrence.top_cooccurring)")
    lists = tf.constant(partner_lists, tf.int32)
  return unit_text, lists


def frozen_top_k(model: AlterRecModel, name: str, item_ids: tf.Tensor, positions: tf.Tensor, k: int,
                 sorted_list: bool) -> Tuple[tf.Tensor, tf.Tensor]:
  """Top-k (scores, ids) of tower `name` at the prefixes, dropout off, no
  gradient: [P, k] each.

  In item chunks (`scoring.top_k_over_chunks`) when the catalogue is larger
  than `settings.score_chunk_size`, else over the whole [P, V] score matrix
  (unsorted unless `sorted_list`, found by `settings.hard_negative_selection`).

  Args:
    model: an `alterrec.AlterRec`.
    name: "id" or "text".
    item_ids: int [B, L] windows.
    positions: int64 [P, 2] (window, position) of each scored prefix.
    k: list length.
    sorted_list: whether the list must be in score order.
  """
  tower = model.tower(name)
  tables = {name: tower.item_matrix(training=False)}
  queries = {name: tf.gather_nd(tower.prefix_vectors(item_ids, tables[name], training=False),
                                positions)}
  seen = model.seen_items_of(item_ids, positions)
  settings = model.settings
  chunk_size = settings.score_chunk_size
  if chunk_size and model.num_items > chunk_size:
    values, ids = scoring.top_k_over_chunks(
        scoring.chunked_heads_fn(model, queries, tables, seen), model.num_items, k,
        chunk_size)[name]
  elif sorted_list:
    scores = scoring.heads_over_items(model, queries, tables, seen)[name]
    values, ids = tf.math.top_k(scores, k=k, sorted=True)
  else:
    scores = scoring.heads_over_items(model, queries, tables, seen)[name]
    values, ids = alter_negatives.top_k_set(scores, k, settings.hard_negative_selection)
  return tf.stop_gradient(values), tf.stop_gradient(ids)


def partner_signal(model: AlterRecModel, name: str, item_ids: tf.Tensor, positions: tf.Tensor,
                   targets: tf.Tensor, seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Negatives [P, K] and augmented positives [P, p] for a step of tower `name`.

  Hard phases (`model.hard_negatives` > 0): negatives from the partner's ranks
  k1..k2 (guarded, then mixed with uniform ones), augmented positives from the
  top-p of `model.augmentation_source_of(name)`. Random phases, or a model
  without partner negatives: uniform negatives and padding as augmented
  positives (dropped by the loss).

  Args:
    model: an `alterrec.AlterRec`.
    name: the tower that trains.
    item_ids: int [B, L] windows.
    positions: int64 [P, 2] scored prefixes.
    targets: int [P] their targets.
    seed: int32 [2] stateless seed of the uniform draws.
  """
  cfg = model.settings
  num_rows = tf.shape(targets)[0]
  num_augmented = cfg.p if model.variant.augmented_positives else 0
  partner_name = model.partner_of(name)

  def random_signal() -> Tuple[tf.Tensor, tf.Tensor]:
    random_ids = alter_negatives.uniform_negatives(seed, num_rows, cfg.num_negatives,
                                                   model.num_items)
    return random_ids, tf.zeros([num_rows, num_augmented], tf.int32)

  if partner_name is None:
    return random_signal()

  def hard_signal() -> Tuple[tf.Tensor, tf.Tensor]:
    source = model.augmentation_source_of(name)
    top_scores, top_ids = frozen_top_k(model, partner_name, item_ids, positions, cfg.k2,
                                       sorted_list=False)
    hard_ids, augmented_ids = alter_negatives.partner_ranking(
        top_scores, top_ids, cfg.k1, num_augmented if source == partner_name else 0)
    if num_augmented and source != partner_name:
      augmented_ids = frozen_top_k(model, source, item_ids, positions, num_augmented,
                                   sorted_list=True)[1]
    if model.unit_text is not None:
      hard_ids = alter_negatives.drop_close_negatives(
          hard_ids, targets, model.unit_text, cfg.false_negative_cosine)
    if model.partner_lists is not None:
      hard_ids = alter_negatives.drop_listed_negatives(hard_ids, targets, model.partner_lists)
    if cfg.random_share_decay_epochs:
      hard_ids = alter_negatives.mix_negatives_dynamic(hard_ids, seed, model.random_share,
                                                       model.num_items)
    else:
      hard_ids = alter_negatives.mix_negatives(hard_ids, seed, cfg.random_negative_share,
                                               model.num_items)
    return hard_ids, augmented_ids

  return tf.cond(model.hard_negatives > 0, hard_signal, random_signal)
