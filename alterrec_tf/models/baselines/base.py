"""Shared base of the neural baselines: one Adam, full-softmax cross-entropy.

A baseline only says how it scores the catalogue at the scored prefixes
(`item_tables` and `prefix_queries`, the `contract.FactorizedScorer` protocol);
this class does the rest for the trainer: building every
variable (`build_all`), the training step (full-softmax CE of the "fused" head
over the whole catalogue, one optimizer for every weight), the evaluation
heads (`score_heads`) and `call`.

Heads other than "fused" named in `part_names` are parts of the fused score
(e.g. NFRec's ID and text parts, Eq. 14). Their training cross-entropy is
logged every epoch as `<part>_loss` without any gradient, so the imbalance of
the paper's Figure 3 can be drawn from history.json.
"""

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import keras
import tensorflow as tf

from alterrec_tf.data import windows as alter_data
from alterrec_tf.data.windows import scored_positions
from alterrec_tf.models import negatives as alter_negatives
from alterrec_tf.models import replicas as alter_replicas
from alterrec_tf.models import scoring
from alterrec_tf.models import settings as model_settings
from alterrec_tf.models import towers as alter_towers
from alterrec_tf.models.contract import Batch
from alterrec_tf.models.scoring import Heads


class FullSoftmaxModel(keras.Model):
  """Base of NFRec, SASRec and FDSA.

  Subclasses create their layers in `__init__` and implement `item_tables`
  and `prefix_queries`.

  Args:
    settings: a `settings.ModelSettings`.
    num_items: catalogue size including padding.
    prefixes_per_batch: the training split's mean scored prefixes per batch:
      a batch's loss is its prefixes' summed CE divided by it
      (`negatives.reduce_prefix_losses`); None: the mean over the batch.

  Attributes:
    tower_names: empty: there is no alternation (the trainer adds no
      `PhaseSchedule`).
    part_names: heads (besides "fused") whose training CE is logged.
  """

  tower_names: Tuple[str, ...] = ()
  part_names: Tuple[str, ...] = ()

  train_function: Any  # Keras' compiled step (Keras sets it; typed for mypy)

  def __init__(self, settings: model_settings.ModelSettings, num_items: int,
               prefixes_per_batch: Optional[float] = None, **kwargs) -> None:
    super().__init__(**kwargs)
    if not isinstance(settings, model_settings.ModelSettings):
      raise TypeError(f"{type(self).__name__} takes a ModelSettings, not a "
                      f"{type(settings).__name__}: narrow it with ModelSettings.of(...)")
    self.settings = settings
    self.num_items = num_items
    self.prefixes_per_batch = prefixes_per_batch
    self.adam = keras.optimizers.Adam(settings.learning_rate, name="adam")
    self.train_steps = keras.Variable(0, dtype="int64", trainable=False, name="train_steps",
                                      aggregation="only_first_replica")  # (tf.distribute)
    self._replicated = tf.distribute.has_strategy()  # built in a strategy's scope
    self.loss_tracker = keras.metrics.Mean(name="loss")
    self.part_trackers = [keras.metrics.Mean(name=f"{part}_loss") for part in self.part_names]

  # --- scoring (the `contract.FactorizedScorer` protocol) -----------------------
  def item_tables(self, training: bool = False) -> Heads:
    """{head: item table [V, d_h]} (more entries may hold tables the queries read)."""
    raise NotImplementedError

  def prefix_queries(self, item_ids: tf.Tensor, positions: tf.Tensor, tables: Heads,
                     training: bool = False) -> Heads:
    """{head: query [P, d_h]} of each scored prefix.

    Args:
      item_ids: int [B, L] windows.
      positions: int64 [P, 2] (window, position) of each scored prefix.
      tables: `item_tables(training)`.
      training: dropout on or off.
    """
    raise NotImplementedError

  def head_temperatures(self) -> Dict[str, float]:
    return {}

  def fuse_heads(self, heads: Heads) -> Heads:
    """The heads are scored separately (no combined head)."""
    return heads

  def prefix_heads(self, item_ids: tf.Tensor, positions: tf.Tensor,
                   training: bool = False) -> Heads:
    """Scores of the catalogue at the given prefixes.

    Returns:
      {"fused": [P, V], part: [P, V] for each of `part_names`}, padding column
      at -1e9.
    """
    return self.heads(item_ids, positions, training, seen_items="keep")

  def heads(self, item_ids: tf.Tensor, positions: tf.Tensor, training: bool = False,
            seen_items: Optional[model_settings.SeenItems] = None) -> Heads:
    """`prefix_heads` with the prefix's items scored out when
    `settings.seen_items == "exclude"` (`scoring.mask_items`): they are never
    recommended and, in training, never in the softmax."""
    tables = self.item_tables(training)
    queries = self.prefix_queries(item_ids, positions, tables, training)
    return scoring.heads_over_items(self, queries, tables,
                                    self.seen_items_of(item_ids, positions, seen_items))

  def seen_items_of(self, item_ids: tf.Tensor, positions: tf.Tensor,
                    seen_items: Optional[model_settings.SeenItems] = None
                    ) -> Optional[tf.Tensor]:
    """The items scored out at each prefix: int32 [P, L] (0 = none), or None
    when `seen_items` (default: the settings') keeps them."""
    if (seen_items or self.settings.seen_items) == "exclude":
      return alter_towers.prefix_items(item_ids, positions)
    return None

  # --- building ---------------------------------------------------------------
  def build_all(self) -> None:
    """Creates every variable (layers and Adam slots)."""
    dummy = tf.ones([1, self.settings.max_len], tf.int32)
    self.heads(dummy, tf.where(tf.ones_like(dummy, tf.bool)))
    self.adam.build(self.trainable_variables)
    self.built = True
    if self.settings.init == "uniform":
      bound = self.settings.embedding_dim ** -0.5
      rng = tf.random.Generator.from_seed(self.settings.seed)
      for variable in self.trainable_variables:
        variable.assign(rng.uniform(variable.shape, -bound, bound))

  @property
  def metrics(self) -> List[keras.metrics.Metric]:
    return [self.loss_tracker] + list(self.part_trackers)

  # --- training ---------------------------------------------------------------
  def make_train_function(self, force: bool = False
                          ) -> Callable[[Iterator[Batch]], Dict[str, tf.Tensor]]:
    """Keras' own; under tf.distribute, `replicas.replicated_train_function`
    (scalar logs whatever the strategy)."""
    if not self._replicated:
      return super().make_train_function(force)
    if self.train_function is None or force:
      self.train_function = alter_replicas.replicated_train_function(
          self, {"step": self.train_step})
    return self.train_function

  def train_step(self, batch: Batch) -> Dict[str, tf.Tensor]:
    self.train_steps.assign_add(1)
    positions, targets = scored_positions(batch)
    with tf.GradientTape() as tape:
      heads = self.heads(batch[alter_data.ITEM_IDS], positions, training=True)
      loss = alter_negatives.full_softmax_loss(heads["fused"], targets,
                                               self.prefixes_per_batch)
    variables = self.trainable_variables
    self.adam.apply(tape.gradient(loss, variables), variables)  # summed over replicas
    self.loss_tracker.update_state(alter_replicas.sum_over_replicas(loss))
    logs = {"loss": self.loss_tracker.result()}
    for part, tracker in zip(self.part_names, self.part_trackers):
      tracker.update_state(alter_replicas.mean_over_replicas(
          alter_negatives.full_softmax_loss(tf.stop_gradient(heads[part]), targets),
          tf.size(targets)))
      logs[f"{part}_loss"] = tracker.result()
    return logs

  # --- inference ----------------------------------------------------------------
  def score_heads(self, batch: Batch) -> Tuple[Heads, tf.Tensor]:
    """Evaluation heads {"fused", *part_names}: [P, V], and targets [P]."""
    positions, targets = scored_positions(batch)
    return self.heads(batch[alter_data.ITEM_IDS], positions), targets

  def call(self, item_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
    """Fused scores of every prefix: int [B, L] -> [B, L, V]."""
    positions = tf.where(tf.ones_like(item_ids, tf.bool))
    fused = self.heads(item_ids, positions, training=training)["fused"]
    shape = tf.shape(item_ids)
    return tf.reshape(fused, [shape[0], shape[1], -1])
