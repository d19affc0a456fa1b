"""What the trainer, the evaluator and the exporter need from a model.

Every `--model` (AlterRec, its ablations, the neural baselines and the
count-based floors) is a `RankingModel`; AlterRec and its ablations are also
`AlternatingModel`s, which `training.schedule.PhaseSchedule` drives. The
trainer uses nothing else of a model, so a new model only has to satisfy these.
"""

from typing import Dict, Protocol, Sequence, Tuple, runtime_checkable

import tensorflow as tf

Batch = Dict[str, tf.Tensor]


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

  phase: tf.Variable  # int32: which tower trains (models.alterrec.ID_PHASE / TEXT_PHASE)
  hard_negatives: tf.Variable  # int32: 0 uniform negatives, 1 the partner's ranks

  def optimizer_of(self, name: str): ...
