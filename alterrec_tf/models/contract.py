"""What the trainer, the evaluator, alpha tuning and the schedule need from a model.

Every `--model` is a Keras model (the trainer fits and compiles it, and
callbacks stop it, through Keras' own API) and satisfies the protocols of its
role; the training code calls nothing else on a model and sets no attribute
of it, so a new model only has to satisfy these:

* `RankingModel`: every model (AlterRec, its ablations, the neural baselines,
  the count floors): the trainer fits it if it has trainable variables, saves
  and loads its weights, and `training.evaluation` ranks its score heads.
* `AlternatingModel`: AlterRec and its ablations, trained by Algorithm 1:
  `training.schedule.PhaseSchedule` sets its phase variables (and the annealed
  uniform share), `training.tower_selection` reads and sets each tower,
  `training.progress` names each tower's negatives (`partner_of`), and alpha
  tuning (`training.alpha`) ranks its towers' scores and then sets the chosen
  alpha (`set_alpha`).
* `CountModel`: the count floors, which are not trained: the trainer records
  the seconds their counting took (`fit_seconds`).
* `FactorizedScorer`: AlterRec and the neural baselines, whose heads are dot
  products of prefix queries and item tables: `models.scoring` and
  `training.evaluation` rank them in item chunks (`settings.score_chunk_size`).
* `FusedItemMatrix`: AlterRec and its ablations, whose fused score is one query
  times one item matrix: `training.evaluation` adds TFRS retrieval metrics.
"""

from typing import TYPE_CHECKING, Any, Dict, Optional, Protocol, Sequence, Tuple, runtime_checkable

import tensorflow as tf

from alterrec_tf.models.settings import ModelSettings

if TYPE_CHECKING:
  import keras

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
  """A model trained by Algorithm 1: one tower at a time, chosen by `phase`.

  Attributes:
    settings: its `ModelSettings` (alpha, the fused score's ID weight, Eq. 12).
    phase: int32 variable: which tower trains (ID_PHASE / TEXT_PHASE).
    hard_negatives: int32 variable: 0 uniform negatives, 1 the partner's ranks.
    random_share: float32 variable, the uniform share of hard-phase negatives
      that `PhaseSchedule` anneals (`settings.random_share_decay_epochs`), or
      None (the share is the static `settings.random_negative_share`).
  """

  settings: ModelSettings
  phase: tf.Variable
  hard_negatives: tf.Variable
  random_share: Optional[tf.Variable]

  def tower(self, name: str) -> "keras.layers.Layer":
    """The Keras layer of tower `name` ("id" or "text"): its weights are one
    tower's (`training.tower_selection`)."""
    ...

  def optimizer_of(self, name: str) -> "keras.optimizers.Optimizer":
    """The Keras optimizer of tower `name` (its learning rate is scheduled)."""
    ...

  def partner_of(self, name: str) -> Optional[str]:
    """The tower whose ranking gives tower `name` its hard negatives, or None
    (uniform negatives throughout: AlterRec_random, a single tower)."""
    ...

  def prefix_scores(self, item_ids: tf.Tensor, positions: tf.Tensor, training: bool = False
                    ) -> Dict[str, tf.Tensor]:
    """{tower: float [P, V]} scores of each tower at the prefixes (item_ids
    int [B, L], positions int64 [P, 2]), seen items and padding at -1e9."""
    ...

  def set_alpha(self, alpha: float) -> None:
    """Sets the ID score's weight in "fused" (Eq. 12), e.g. the alpha chosen on
    validation; nothing else changes."""
    ...


@runtime_checkable
class CountModel(RankingModel, Protocol):
  """A model counted from the training split rather than trained (the floors).

  Attributes:
    fit_seconds: seconds its counting took (the run's training time).
    floor_parameters: the parameters it scores with ({} when it has none);
      results.json records them, since they are module defaults, not flags.
  """

  fit_seconds: float
  floor_parameters: Dict[str, Any]


@runtime_checkable
class FactorizedScorer(Protocol):
  """A model whose heads are dot products of prefix queries and item tables
  (AlterRec and the neural baselines), which `models.scoring` can rank over the
  catalogue in item chunks.

  `scoring.heads_over_items` computes, for items [offset, offset + C):
  fuse_heads({h: mask(q_h . T_h[offset:offset + C] / temperature_h)}).

  Attributes:
    num_items: catalogue size V, padding row 0 included.
    settings: its `ModelSettings` (`score_chunk_size`: items scored at once,
      0 for the whole catalogue).
  """

  num_items: int
  settings: ModelSettings

  def item_tables(self, training: bool = False) -> Dict[str, tf.Tensor]:
    """{head: float [V, d_h]} item table of each head, rows in item-index order
    (may hold more entries: tables the queries read)."""
    ...

  def prefix_queries(self, item_ids: tf.Tensor, positions: tf.Tensor,
                     tables: Dict[str, tf.Tensor], training: bool = False
                     ) -> Dict[str, tf.Tensor]:
    """{head: float [P, d_h]} query of each scored prefix (positions int64 [P, 2])."""
    ...

  def head_temperatures(self) -> Dict[str, float]:
    """{head: temperature}; scores are divided by it when it is not 1."""
    ...

  def fuse_heads(self, heads: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """The evaluation heads (with "fused") from the scored base heads."""
    ...

  def seen_items_of(self, item_ids: tf.Tensor, positions: tf.Tensor) -> Optional[tf.Tensor]:
    """int32 [P, L] items scored out per prefix (0 = none), or None."""
    ...


@runtime_checkable
class FusedItemMatrix(Protocol):
  """A model whose "fused" score is one query per prefix times one item matrix
  (AlterRec and its ablations: the towers' matrices side by side, the queries
  scaled by alpha and the temperatures), which a retrieval index can serve.

  Attributes:
    settings: its `ModelSettings` (`max_len`, `seen_items`).
  """

  settings: ModelSettings

  def fused_item_matrix(self) -> tf.Tensor:
    """float [V, D]: every item's row of the fused score."""
    ...

  def score_heads_and_queries(self, batch: Batch
                              ) -> Tuple[Dict[str, tf.Tensor], tf.Tensor, tf.Tensor]:
    """`RankingModel.score_heads` plus each prefix's fused query float [P, D]:
    fused score = query . `fused_item_matrix()` rows (before seen items are
    scored out)."""
    ...
