"""AlterRec: two uni-modal networks trained alternately (section 4.2, Algorithm 1).

`train_step` reads two non-trainable variables set by `PhaseSchedule`:
`phase` (which tower trains: ID_PHASE or TEXT_PHASE) and `hard_negatives`
(0: uniform random negatives, 1: the partner's ranks k1..k2). Only the active
tower's gradients are computed, and each tower has its own Adam optimizer, so
the frozen tower does not move at all (no Adam momentum leaks into it).

With `settings.seen_items == "exclude"` every score the model computes (the
trained tower's logits, the partner's ranking, evaluation heads) has the
prefix's own items at -1e9 (`towers.mask_seen_items`): they are never hard
negatives or augmented positives, add nothing as uniform negatives, and are
never recommended. Built with `prefixes_per_batch` (the trainer passes it
with `loss_weighting == "prefix"`), every scored prefix weighs the same in
every step.

What a tower's step trains against (uniform negatives, or the partner's ranks
with the guards and the uniform mix) is `partner.partner_signal`.

Which ablation it is comes from its `names.AlterRecVariant` (the towers, the
partner's negatives, augmented positives), never from `settings.model`.
"""

import functools
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from alterrec_tf.data import windows as alter_data
from alterrec_tf.data.windows import scored_positions
from alterrec_tf.models import negatives as alter_negatives
from alterrec_tf.models import partner, scoring
from alterrec_tf.models import replicas as alter_replicas
from alterrec_tf.models import settings as model_settings
from alterrec_tf.models import towers as alter_towers
from alterrec_tf.models.contract import ID_PHASE, TEXT_PHASE, Batch
from alterrec_tf.models.names import ALTERREC_VARIANTS, AlterRecVariant
from alterrec_tf.models.scoring import Heads

# A tower's gradients: dense, or IndexedSlices for the rows an ID table gathered.
Gradients = List[Union[tf.Tensor, tf.IndexedSlices]]


class AlterRec(keras.Model):
  """AlterRec and its single-tower ablations.

  Args:
    settings: a `settings.ModelSettings` (`ModelSettings.of(train_config)`).
    num_items: catalogue size including the padding row 0.
    text_embeddings: float [num_items, text_dim] frozen SBERT table, or None.
    variant: which ablation (`names.ALTERREC_VARIANTS`): its towers, whether
      hard phases take the partner's ranks, whether they add augmented
      positives; None: AlterRec itself (two towers, partner negatives).
    prefixes_per_batch: the training split's mean scored prefixes per batch:
      a batch's loss is its prefixes' summed loss divided by it
      (`negatives.reduce_prefix_losses`); None: the mean over the batch.
    partner_lists: int32 [num_items, N], each item's N most frequent partners
      in the training sessions, rows ascending (`data.cooccurrence.
      top_cooccurring`): hard negatives on their target's list are dropped
      (`settings.false_negative_cooccurrence`); None: no such guard.
  """

  train_function: Any  # Keras' compiled step (Keras sets it; typed for mypy)

  def __init__(self, settings: model_settings.ModelSettings, num_items: int,
               text_embeddings: Optional[np.ndarray] = None,
               variant: Optional[AlterRecVariant] = None,
               prefixes_per_batch: Optional[float] = None,
               partner_lists: Optional[np.ndarray] = None, **kwargs) -> None:
    super().__init__(**kwargs)
    if not isinstance(settings, model_settings.ModelSettings):
      raise TypeError(f"AlterRec takes a ModelSettings, not a {type(settings).__name__}: "
                      "narrow it with ModelSettings.of(...)")
    self.settings = settings
    self.num_items = num_items
    self.variant = ALTERREC_VARIANTS["alterrec"] if variant is None else variant
    towers = self.variant.towers
    self.tower_names = tuple(towers)
    self.id_tower = (alter_towers.build_tower("id", settings, num_items)
                     if "id" in towers else None)
    self.text_tower = (alter_towers.build_tower("text", settings, num_items, text_embeddings)
                       if "text" in towers else None)
    # Set between epochs (cross-replica) or, train_steps, by every replica's step
    # alike: under tf.distribute the first replica's update stands for all.
    self.phase = keras.Variable(ID_PHASE if "id" in towers else TEXT_PHASE,
                                dtype="int32", trainable=False, name="phase",
                                aggregation="only_first_replica")
    self.hard_negatives = keras.Variable(0, dtype="int32", trainable=False,
                                         name="hard_negatives",
                                         aggregation="only_first_replica")
    self.train_steps = keras.Variable(0, dtype="int64", trainable=False, name="train_steps",
                                      aggregation="only_first_replica")
    # The uniform share of hard-phase negatives, annealed by `PhaseSchedule`
    # when settings.random_share_decay_epochs > 0 (else the static share).
    # (created only then: without it the model's variables are those of earlier runs)
    self.random_share = None
    if settings.random_share_decay_epochs:
      self.random_share = keras.Variable(settings.random_negative_share, dtype="float32",
                                         trainable=False, name="random_share",
                                         aggregation="only_first_replica")
    # The false-negative guards' tables (`partner.guard_tables`): None when off.
    self.unit_text, self.partner_lists = partner.guard_tables(settings, text_embeddings,
                                                              partner_lists)
    self._replicated = tf.distribute.has_strategy()  # built in a strategy's scope
    self.id_optimizer = keras.optimizers.Adam(settings.learning_rate, name="id_adam")
    self.text_optimizer = keras.optimizers.Adam(settings.learning_rate, name="text_adam")
    self.prefixes_per_batch = prefixes_per_batch
    self.id_loss_tracker = keras.metrics.Mean(name="id_loss")
    self.text_loss_tracker = keras.metrics.Mean(name="text_loss")

  # --- building ---------------------------------------------------------------
  def build_all(self) -> None:
    """Creates every variable (both towers and both optimizers)."""
    dummy = tf.ones([1, self.settings.max_len], tf.int32)
    for name in self.tower_names:
      tower = self.tower(name)
      tower(dummy)
      self.optimizer_of(name).build(tower.trainable_variables)
    self.built = True
    if self.settings.init == "uniform":
      self._uniform_init()

  def _uniform_init(self) -> None:
    bound = self.settings.embedding_dim ** -0.5
    rng = tf.random.Generator.from_seed(self.settings.seed)
    for variable in self.trainable_variables:
      variable.assign(rng.uniform(variable.shape, -bound, bound))

  def tower(self, name: str) -> alter_towers.UniModalTower:
    # (None only for a name outside tower_names, which no caller passes)
    return self.id_tower if name == "id" else self.text_tower  # type: ignore[return-value]

  def optimizer_of(self, name: str) -> keras.optimizers.Optimizer:
    return self.id_optimizer if name == "id" else self.text_optimizer

  @property
  def metrics(self) -> List[keras.metrics.Metric]:
    return [self.id_loss_tracker, self.text_loss_tracker]

  # --- training ---------------------------------------------------------------
  def seen_items_of(self, item_ids: tf.Tensor, positions: tf.Tensor) -> Optional[tf.Tensor]:
    """The items scored out at each prefix: int32 [P, L] (0 = none), or None
    when the settings keep seen items."""
    if self.settings.seen_items == "exclude":
      return alter_towers.prefix_items(item_ids, positions)
    return None

  def partner_of(self, name: str) -> Optional[str]:
    """The tower whose ranking gives tower `name` its negatives, or None (random)."""
    if not self.variant.partner_negatives:
      return None
    return "text" if name == "id" else "id"

  def set_alpha(self, alpha: float) -> None:
    """Sets the ID score's weight in "fused" (Eq. 12): `settings.alpha`."""
    self.settings = self.settings.replace(alpha=alpha)

  def augmentation_source_of(self, name: str) -> Optional[str]:
    """The tower whose top-p are tower `name`'s augmented positives: the partner
    (paper), or the ID tower for both (reference code, `--augmentation_source=id`)."""
    return "id" if self.settings.augmentation_source == "id" else self.partner_of(name)

  def loss_and_gradients(self, name: str, batch: Batch, seed: tf.Tensor, training: bool = True
                         ) -> Tuple[tf.Tensor, Gradients, tf.Tensor]:
    """Loss of tower `name` on a batch and its gradients, without applying them.

    Args:
      name: "id" or "text", the tower that trains.
      batch: window batch (or any batch in that layout, e.g. one row per prefix).
      seed: int32 [2] stateless seed of the random negatives.
      training: dropout on (training) or off.

    Returns:
      (loss scalar, gradients of tower.trainable_variables, negative_ids [P, K]).
    """
    positions, targets = scored_positions(batch)
    item_ids = batch[alter_data.ITEM_IDS]
    negative_ids, augmented_ids = partner.partner_signal(self, name, item_ids, positions,
                                                         targets, seed)
    tower = self.tower(name)
    seen = self.seen_items_of(item_ids, positions)
    augmented_ids = augmented_ids if self.variant.augmented_positives else None
    with tf.GradientTape() as tape:
      tables = {name: tower.item_matrix(training=training)}
      queries = self.prefix_queries(item_ids, positions, tables, training=training)
      chunk_size = self.settings.score_chunk_size
      if chunk_size and self.num_items > chunk_size:
        # large catalogue: only the logits the loss reads, never [P, V]
        target_logits, negative_logits, augmented_logits = scoring.sampled_logits(
            queries[name], tables[name], targets, negative_ids, augmented_ids, seen,
            self.head_temperatures()[name])
        loss = alter_negatives.sampled_softmax_loss_from_logits(
            target_logits, targets, negative_logits, negative_ids, augmented_logits,
            augmented_ids, self.settings.beta, self.prefixes_per_batch)
      elif self.settings.softmax == "full":
        logits = scoring.heads_over_items(self, queries, tables, seen)[name]
        loss = alter_negatives.full_softmax_loss(logits, targets, self.prefixes_per_batch)
        if self.settings.hard_negative_weight and self.partner_of(name) is not None:
          hard_term = alter_negatives.sampled_softmax_loss(
              logits, targets, negative_ids, augmented_ids, self.settings.beta,
              self.prefixes_per_batch)
          loss += (self.settings.hard_negative_weight
                   * tf.cast(self.hard_negatives, loss.dtype) * hard_term)
      else:
        logits = scoring.heads_over_items(self, queries, tables, seen)[name]
        loss = alter_negatives.sampled_softmax_loss(
            logits, targets, negative_ids, augmented_ids, self.settings.beta,
            self.prefixes_per_batch)
    return loss, tape.gradient(loss, tower.trainable_variables), negative_ids

  def _tower_step(self, name: str, batch: Batch, seed: tf.Tensor) -> tf.Tensor:
    """One update of tower `name`; returns its loss on the global batch.

    Under tf.distribute, `batch` is this replica's share; the optimizer sums
    the replicas' gradients (see `training.distribution`).
    """
    loss, gradients, _ = self.loss_and_gradients(name, batch, seed)
    self.optimizer_of(name).apply(gradients, self.tower(name).trainable_variables)
    return alter_replicas.sum_over_replicas(loss)

  def make_train_function(self, force: bool = False
                          ) -> Callable[[Iterator[Batch]], Dict[str, tf.Tensor]]:
    """Keras' train function. Without a strategy: Keras' own, one trace.

    Under tf.distribute (`replicas.replicated_train_function`) with two
    towers, one traced step per phase, the one of the `phase` variable run at
    each step: an optimizer's cross-replica update cannot sit inside a
    `tf.cond` (TF's merge_call), so the tower is chosen in Python
    (`train_step(phase=)`) instead of in the graph.
    """
    if not self._replicated:
      return super().make_train_function(force)
    if self.train_function is not None and not force:
      return self.train_function
    phases = (ID_PHASE, TEXT_PHASE) if len(self.tower_names) == 2 else (None,)
    self.train_function = alter_replicas.replicated_train_function(
        self, {phase: functools.partial(self.train_step, phase=phase) for phase in phases},
        choose=(lambda: int(self.phase.numpy())) if len(phases) == 2 else None)
    return self.train_function

  def train_step(self, batch: Batch, phase: Optional[int] = None) -> Dict[str, tf.Tensor]:
    """One step of the tower of `phase` on a batch (this replica's share under
    tf.distribute); returns the logs (losses of the global batch).

    Args:
      batch: window batch {key: [B, n]}.
      phase: None: the `phase` variable chooses the tower in the graph (one
        trace for every epoch); ID_PHASE / TEXT_PHASE: that tower's step alone
        (`make_train_function`).
    """
    seed = tf.stack([tf.constant(self.settings.seed, tf.int32),
                     tf.cast(self.train_steps, tf.int32)])
    self.train_steps.assign_add(1)
    if len(self.tower_names) == 1:
      name = self.tower_names[0]
      loss = self._tower_step(name, batch, seed)
      (self.id_loss_tracker if name == "id" else self.text_loss_tracker).update_state(loss)
    else:
      def id_step() -> tf.Tensor:
        loss = self._tower_step("id", batch, seed)
        self.id_loss_tracker.update_state(loss)
        return loss

      def text_step() -> tf.Tensor:
        loss = self._tower_step("text", batch, seed)
        self.text_loss_tracker.update_state(loss)
        return loss

      if phase is None:
        loss = tf.cond(tf.equal(self.phase, ID_PHASE), id_step, text_step)
      else:
        loss = id_step() if phase == ID_PHASE else text_step()
    return {"loss": loss, "id_loss": self.id_loss_tracker.result(),
            "text_loss": self.text_loss_tracker.result()}

  # --- scoring (the `contract.FactorizedScorer` protocol) -----------------------
  def item_tables(self, training: bool = False) -> Heads:
    """{tower: item matrix [V, d]}."""
    return {name: self.tower(name).item_matrix(training=training)
            for name in self.tower_names}

  def prefix_queries(self, item_ids: tf.Tensor, positions: tf.Tensor,
                     tables: Heads, training: bool = False) -> Heads:
    """{tower in `tables`: session vector [P, d] of each scored prefix}.

    Args:
      item_ids: int [B, L] windows.
      positions: int64 [P, 2] (window, position) of each scored prefix.
      tables: {tower: [V, d]} from `item_tables` (the prefix's items are read
        from them).
      training: dropout on or off.
    """
    return {name: tf.gather_nd(self.tower(name).prefix_vectors(item_ids, table, training),
                               positions)
            for name, table in tables.items()}

  def head_temperatures(self) -> Dict[str, float]:
    return {name: self.tower(name).temperature for name in self.tower_names}

  def fuse_heads(self, heads: Heads) -> Heads:
    """Adds "fused" when every tower has a head: alpha * ID + (1 - alpha) * text
    (Eq. 12), or the single tower's scores."""
    if not all(name in heads for name in self.tower_names):
      return heads
    heads = dict(heads)
    if len(self.tower_names) == 2:
      alpha = self.settings.alpha
      heads["fused"] = alpha * heads["id"] + (1.0 - alpha) * heads["text"]
    else:
      heads["fused"] = heads[self.tower_names[0]]
    return heads

  # --- inference ----------------------------------------------------------------
  def prefix_scores(self, item_ids: tf.Tensor, positions: tf.Tensor,
                    training: bool = False) -> Heads:
    """Scores of each tower at the given prefixes: {name: [P, V]}."""
    heads = self.prefix_heads(item_ids, positions, training)
    return {name: heads[name] for name in self.tower_names}

  def prefix_heads(self, item_ids: tf.Tensor, positions: tf.Tensor,
                   training: bool = False) -> Heads:
    """Every head ("fused" and each tower's) at the given prefixes: {name: [P, V]}."""
    tables = self.item_tables(training)
    queries = self.prefix_queries(item_ids, positions, tables, training)
    return scoring.heads_over_items(self, queries, tables,
                                    self.seen_items_of(item_ids, positions))

  def score_heads(self, batch: Batch) -> Tuple[Heads, tf.Tensor]:
    """Evaluation heads: {"fused", "id", "text"} scores [P, V] and targets [P].

    fused = alpha * ID + (1 - alpha) * text (Eq. 12); a single-tower model has
    its tower's scores as "fused".
    """
    positions, targets = scored_positions(batch)
    return self.prefix_heads(batch[alter_data.ITEM_IDS], positions), targets

  def score_heads_and_queries(self, batch: Batch) -> Tuple[Heads, tf.Tensor, tf.Tensor]:
    """`score_heads` plus each prefix's fused query [P, D]: fused score =
    query . `fused_item_matrix()` rows (before the prefix's items are scored out)."""
    positions, targets = scored_positions(batch)
    item_ids = batch[alter_data.ITEM_IDS]
    tables = self.item_tables()
    queries = self.prefix_queries(item_ids, positions, tables)
    heads = scoring.heads_over_items(self, queries, tables,
                                     self.seen_items_of(item_ids, positions))
    scales = scoring.fused_query_scales(self.settings, self.tower_names)
    fused_queries = tf.concat([scales[name] * queries[name] for name in self.tower_names],
                              axis=1)
    return heads, targets, fused_queries

  def fused_item_matrix(self) -> tf.Tensor:
    """The towers' item matrices side by side, in `tower_names` order: [V, D]
    (what the export serves)."""
    return tf.concat(list(self.item_tables().values()), axis=1)

  def call(self, item_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
    """Fused scores of every prefix: int [B, L] -> [B, L, V]."""
    positions = tf.where(tf.ones_like(item_ids, tf.bool))
    fused = self.prefix_heads(item_ids, positions, training)["fused"]
    shape = tf.shape(item_ids)
    return tf.reshape(fused, [shape[0], shape[1], -1])
