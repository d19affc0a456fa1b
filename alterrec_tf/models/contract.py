"""What the trainer, the evaluator and the exporter need from a model.

Every `--model` (AlterRec, its ablations, the neural baselines and the
count-based floors) is a `RankingModel`; AlterRec and its ablations are also
`AlternatingModel`s, which `training.schedule.PhaseSchedule` drives. The
trainer uses nothing else of a model, so a new model only has to satisfy these.
"""

from typing import Dict, Protocol, Sequence, Tuple, runtime_checkable

import tensorflow as tf

Batch = Dict[str, tf.Tensor]

# Values of `AlternatingModel.phase`: which tower trains (Algorithm 1).
ID_PHASE = 0
TEXT_PHASE = 1


@runtime_checkable
class RankingModel(Protocol):
  """A model the trainer can fit (if it has trainable variables) and evaluate.

  Attributes:
    tower_names: the alternately trained towers ("id", "text"); empty for
      models trained as one piece (baselines) or not trained (floors).
    trainable_variables: empty for the floors (the trainer then evaluates once).
  """

  tower_names: Tuple[str, ...]

  @property
  def trainable_variables(self) -> Sequence[tf.Variable]: ...

  def save_weights(self, filepath: str) -> None: ...

  def load_weights(self, filepath: str) -> None: ...

  def score_heads(self, batch: Batch) -> Tuple[Dict[str, tf.Tensor], tf.Tensor]:
    """Scores of the whole catalogue at every scored prefix of a window batch.

    Args:
      batch: `data.windows` keys: item_ids, target_ids int32 [B, L], target_mask bool [B, L].

    Returns:
      ({"fused": [P, V], other heads: [P, V]}, targets int32 [P]), padding column at -1e9.
    """
    ...


@runtime_checkable
class AlternatingModel(RankingModel, Protocol):
  """A model trained by Algorithm 1: one tower at a time, chosen by `phase`."""

  phase: tf.Variable  # int32: which tower trains (ID_PHASE / TEXT_PHASE)
  hard_negatives: tf.Variable  # int32: 0 uniform negatives, 1 the partner's ranks

  def optimizer_of(self, name: str): ...


@runtime_checkable
class FactorizedScorer(Protocol):
  """A model whose heads are dot products of prefix queries and item tables
  (AlterRec and the neural baselines), which `models.scoring` can rank over the
  catalogue in item chunks.

  `scoring.heads_over_items` computes, for items [offset, offset + C):
  fuse_heads({h: mask(q_h . T_h[offset:offset + C] / temperature_h)}).
  """

  num_items: int

  def item_tables(self, training: bool = False) -> Dict[str, tf.Tensor]:
    """{head: float [V, d_h]} item table of each head, rows in item-index order
    (may hold more entries: tables the queries read)."""
    ...

  def prefix_queries(self, item_ids, positions, tables, training: bool = False
                     ) -> Dict[str, tf.Tensor]:
    """{head: float [P, d_h]} query of each scored prefix (positions int64 [P, 2])."""
    ...

  def head_temperatures(self) -> Dict[str, float]:
    """{head: temperature}; scores are divided by it when it is not 1."""
    ...

  def fuse_heads(self, heads: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """The evaluation heads (with "fused") from the scored base heads."""
    ...

  def seen_items_of(self, item_ids, positions):
    """int32 [P, L] items scored out per prefix (0 = none), or None."""
    ...
