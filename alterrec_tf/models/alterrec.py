"""AlterRec: two uni-modal networks trained alternately (section 4.2, Algorithm 1).

`train_step` reads two non-trainable variables set by `PhaseSchedule`:
`phase` (which tower trains: ID_PHASE or TEXT_PHASE) and `hard_negatives`
(0: uniform random negatives, 1: the partner's ranks k1..k2). Only the active
tower's gradients are computed, and each tower has its own Adam optimizer, so
the frozen tower does not move at all (no Adam momentum leaks into it).

With `config.seen_items == "exclude"` every score the model computes (the
trained tower's logits, the partner's ranking, evaluation heads) has the
prefix's own items at -1e9 (`towers.mask_seen_items`): they are never hard
negatives or augmented positives, add nothing as uniform negatives, and are
never recommended. With `loss_weighting == "prefix"` the trainer sets
`prefixes_per_batch` and every scored prefix weighs the same in every step.
"""

import keras
import tensorflow as tf

from alterrec_tf.data import windows as alter_data
from alterrec_tf.models import negatives as alter_negatives
from alterrec_tf.models import towers as alter_towers

ID_PHASE = 0
TEXT_PHASE = 1
TOWER_NAMES = ("id", "text")


def fused_query_scales(config, tower_names) -> dict:
  """Weight of each tower's session vector in the fused query (Eq. 12): alpha
  and (1 - alpha) / text_temperature, or 1 / temperature for a single tower."""
  text_scale = 1.0 / config.text_temperature
  if len(tower_names) == 1:
    return {"id": 1.0, "text": text_scale}
  return {"id": config.alpha, "text": (1.0 - config.alpha) * text_scale}


def scored_positions(batch):
  """Indices [P, 2] of the scored prefixes of a window batch, and targets [P]."""
  positions = tf.where(batch[alter_data.TARGET_MASK])
  return positions, tf.gather_nd(batch[alter_data.TARGET_IDS], positions)


class AlterRec(keras.Model):
  """AlterRec and its single-tower ablations.

  Args:
    config: a `TrainConfig`.
    num_items: catalogue size including the padding row 0.
    text_embeddings: float [num_items, text_dim] frozen SBERT table, or None.
    towers: which uni-modal networks exist: ("id", "text"), ("id",) or ("text",).
  """

  def __init__(self, config, num_items: int, text_embeddings=None,
               towers=TOWER_NAMES, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.num_items = num_items
    self.tower_names = tuple(towers)
    self.id_tower = (alter_towers.build_tower("id", config, num_items)
                     if "id" in towers else None)
    self.text_tower = (alter_towers.build_tower("text", config, num_items, text_embeddings)
                       if "text" in towers else None)
    self.phase = keras.Variable(ID_PHASE if "id" in towers else TEXT_PHASE,
                                dtype="int32", trainable=False, name="phase")
    self.hard_negatives = keras.Variable(0, dtype="int32", trainable=False,
                                         name="hard_negatives")
    self.train_steps = keras.Variable(0, dtype="int64", trainable=False, name="train_steps")
    self.id_optimizer = keras.optimizers.Adam(config.learning_rate, name="id_adam")
    self.text_optimizer = keras.optimizers.Adam(config.learning_rate, name="text_adam")
    self.prefixes_per_batch = None  # set by the trainer (loss_weighting="prefix")
    self.id_loss_tracker = keras.metrics.Mean(name="id_loss")
    self.text_loss_tracker = keras.metrics.Mean(name="text_loss")

  # --- building ---------------------------------------------------------------
  def build_all(self):
    """Creates every variable (both towers and both optimizers)."""
    dummy = tf.ones([1, self.config.max_len], tf.int32)
    for name in self.tower_names:
      tower = self.tower(name)
      tower(dummy)
      self.optimizer_of(name).build(tower.trainable_variables)
    self.built = True
    if self.config.init == "uniform":
      self._uniform_init()

  def _uniform_init(self):
    bound = self.config.embedding_dim ** -0.5
    rng = tf.random.Generator.from_seed(self.config.seed)
    for variable in self.trainable_variables:
      variable.assign(rng.uniform(variable.shape, -bound, bound))

  def tower(self, name):
    return self.id_tower if name == "id" else self.text_tower

  def optimizer_of(self, name):
    return self.id_optimizer if name == "id" else self.text_optimizer

  @property
  def metrics(self):
    return [self.id_loss_tracker, self.text_loss_tracker]

  # --- training ---------------------------------------------------------------
  def exclude_seen(self, scores, item_ids, positions):
    """`scores` [P, V] with the prefix's items scored out when the config says so."""
    if self.config.seen_items == "exclude":
      return alter_towers.mask_seen_items(scores, item_ids, positions)
    return scores

  def _frozen_scores(self, name, item_ids, positions):
    """Tower `name`'s scores at the prefixes, dropout off, no gradient: [P, V]."""
    tower = self.tower(name)
    matrix = tower.item_matrix(training=False)
    vectors = tf.gather_nd(tower.prefix_vectors(item_ids, matrix, training=False), positions)
    return tf.stop_gradient(
        self.exclude_seen(tower.scores(vectors, matrix), item_ids, positions))

  def _partner_signal(self, name, item_ids, positions, targets, seed):
    """Negatives [P, K] and augmented positives [P, p] for a step of tower `name`.

    Hard phases: negatives from the partner's ranks k1..k2 (mixed with uniform
    ones by `random_negative_share`), augmented positives from the top-p of
    `augmentation_source_of(name)`. Random phases: uniform negatives and
    padding as augmented positives (dropped by the loss).
    """
    cfg = self.config
    num_rows = tf.shape(targets)[0]
    num_augmented = cfg.p if self._augments() else 0
    partner_name = self.partner_of(name)

    def random_signal():
      random_ids = alter_negatives.uniform_negatives(seed, num_rows, cfg.num_negatives,
                                                     self.num_items)
      return random_ids, tf.zeros([num_rows, num_augmented], tf.int32)

    if partner_name is None:
      return random_signal()

    def hard_signal():
      source = self.augmentation_source_of(name)
      hard_ids, augmented_ids = alter_negatives.partner_ranking(
          self._frozen_scores(partner_name, item_ids, positions), cfg.k1, cfg.k2,
          num_augmented if source == partner_name else 0)
      if num_augmented and source != partner_name:
        augmented_ids = tf.math.top_k(self._frozen_scores(source, item_ids, positions),
                                      k=num_augmented).indices
      hard_ids = alter_negatives.mix_negatives(hard_ids, seed, cfg.random_negative_share,
                                               self.num_items)
      return hard_ids, augmented_ids

    return tf.cond(self.hard_negatives > 0, hard_signal, random_signal)

  def _augments(self):
    return self.config.model == "alterrec_aug"

  def partner_of(self, name):
    """The tower whose ranking gives tower `name` its negatives, or None (random)."""
    if len(self.tower_names) < 2 or self.config.model == "alterrec_random":
      return None
    return "text" if name == "id" else "id"

  def augmentation_source_of(self, name):
    """The tower whose top-p are tower `name`'s augmented positives: the partner
    (paper), or the ID tower for both (reference code, `--augmentation_source=id`)."""
    return "id" if self.config.augmentation_source == "id" else self.partner_of(name)

  def loss_and_gradients(self, name, batch, seed, training=True):
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
    negative_ids, augmented_ids = self._partner_signal(name, item_ids, positions, targets,
                                                       seed)
    tower = self.tower(name)
    with tf.GradientTape() as tape:
      matrix = tower.item_matrix(training=training)
      vectors = tf.gather_nd(tower.prefix_vectors(item_ids, matrix, training=training),
                             positions)
      logits = self.exclude_seen(tower.scores(vectors, matrix), item_ids, positions)
      loss = alter_negatives.sampled_softmax_loss(
          logits, targets, negative_ids, augmented_ids if self._augments() else None,
          self.config.beta, self.prefixes_per_batch)
    return loss, tape.gradient(loss, tower.trainable_variables), negative_ids

  def _tower_step(self, name, batch, seed):
    """One update of tower `name`; returns its loss."""
    loss, gradients, _ = self.loss_and_gradients(name, batch, seed)
    self.optimizer_of(name).apply(gradients, self.tower(name).trainable_variables)
    return loss

  def train_step(self, batch):
    seed = tf.stack([tf.constant(self.config.seed, tf.int32),
                     tf.cast(self.train_steps, tf.int32)])
    self.train_steps.assign_add(1)
    if len(self.tower_names) == 1:
      name = self.tower_names[0]
      loss = self._tower_step(name, batch, seed)
      (self.id_loss_tracker if name == "id" else self.text_loss_tracker).update_state(loss)
    else:
      def id_step():
        loss = self._tower_step("id", batch, seed)
        self.id_loss_tracker.update_state(loss)
        return loss

      def text_step():
        loss = self._tower_step("text", batch, seed)
        self.text_loss_tracker.update_state(loss)
        return loss

      loss = tf.cond(tf.equal(self.phase, ID_PHASE), id_step, text_step)
    return {"loss": loss, "id_loss": self.id_loss_tracker.result(),
            "text_loss": self.text_loss_tracker.result()}

  # --- inference ----------------------------------------------------------------
  def prefix_scores(self, item_ids, positions, training=False):
    """Scores of each tower at the given prefixes: {name: [P, V]}."""
    scores = {}
    for name in self.tower_names:
      tower = self.tower(name)
      matrix = tower.item_matrix(training=training)
      vectors = tf.gather_nd(tower.prefix_vectors(item_ids, matrix, training), positions)
      scores[name] = self.exclude_seen(tower.scores(vectors, matrix), item_ids, positions)
    return scores

  def score_heads(self, batch):
    """Evaluation heads: {"fused", "id", "text"} scores [P, V] and targets [P].

    fused = alpha * ID + (1 - alpha) * text (Eq. 12); a single-tower model has
    its tower's scores as "fused".
    """
    heads, targets, _ = self.score_heads_and_queries(batch)
    return heads, targets

  def score_heads_and_queries(self, batch):
    """`score_heads` plus each prefix's fused query [P, D]: fused score =
    query . `fused_item_matrix()` rows (before the prefix's items are scored out)."""
    positions, targets = scored_positions(batch)
    item_ids = batch[alter_data.ITEM_IDS]
    scales = fused_query_scales(self.config, self.tower_names)
    heads, queries = {}, []
    for name in self.tower_names:
      tower = self.tower(name)
      matrix = tower.item_matrix(training=False)
      vectors = tf.gather_nd(tower.prefix_vectors(item_ids, matrix, False), positions)
      heads[name] = self.exclude_seen(tower.scores(vectors, matrix), item_ids, positions)
      queries.append(scales[name] * vectors)
    if len(self.tower_names) == 2:
      alpha = self.config.alpha
      heads["fused"] = alpha * heads["id"] + (1.0 - alpha) * heads["text"]
    else:
      heads["fused"] = heads[self.tower_names[0]]
    return heads, targets, tf.concat(queries, axis=1)

  def fused_item_matrix(self):
    """The towers' item matrices side by side, in `tower_names` order: [V, D]
    (what the export serves)."""
    return tf.concat([self.tower(name).item_matrix(training=False)
                      for name in self.tower_names], axis=1)

  def call(self, item_ids, training=False):
    """Fused scores of every prefix: int [B, L] -> [B, L, V]."""
    positions = tf.where(tf.ones_like(item_ids, tf.bool))
    heads = self.prefix_scores(item_ids, positions, training)
    fused = (heads[self.tower_names[0]] if len(self.tower_names) == 1 else
             self.config.alpha * heads["id"] + (1.0 - self.config.alpha) * heads["text"])
    shape = tf.shape(item_ids)
    return tf.reshape(fused, [shape[0], shape[1], -1])
