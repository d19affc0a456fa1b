"""Two replicas in one process: the CPU split into two logical devices, then
`--distribution=mirrored` (MirroredStrategy over both), step by step against
no strategy, on the global batches of `test_distribution.exact_config`.

Run by tests/test_distribution.py in a subprocess (the logical devices must be
set before TensorFlow starts):

  python -m tests.two_replicas DATA_DIR OUT_JSON

Writes OUT_JSON:
  replicas   the strategy's replicas (2).
  gradient   `gradient_check`: one AlterRec step's applied gradient.
  towers     `tower_check`: AlterRec's towers around an ID and a text step.
  sasrec     `sasrec_check`: SASRec's logged losses and weights after a few
             Keras train steps, without a strategy and on the replicas.
"""

import json
import sys

import numpy as np

# (alterrec_tf first: it sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from alterrec_tf import config as alter_config
from alterrec_tf.data import windows as alter_data
from alterrec_tf.formats import schema
from alterrec_tf.models import contract, registry, replicas
from alterrec_tf.training import distribution
from tests import test_distribution

STEPS = 3  # SASRec steps compared


def split_cpu(count=2):
  """The CPU as `count` logical devices (before TensorFlow's runtime starts)."""
  import tensorflow as tf
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * count)


class Setup:
  """The dataset, its first global batches, and models built like `train` does."""

  def __init__(self, data_dir):
    self.data_dir = data_dir
    self.manifest = schema.load_manifest(data_dir)
    self.text = schema.load_text_embeddings(data_dir, self.manifest)
    self.config = test_distribution.exact_config(data_dir, "")
    split = alter_data.load_split(data_dir, self.manifest, "train", self.config.max_len,
                                  self.config.train_window_stride)
    self.prefixes_per_batch = split.num_examples / split.steps(self.config.batch_size)
    self.batches = split.epochs_of_batches(self.config.batch_size, self.config.seed, 0, 1)

  def model(self, name, placement):
    """Model `name` built and compiled under `placement`, as `train` builds it."""
    import keras
    keras.utils.set_random_seed(self.config.seed)
    config = alter_config.resolve_seen_items(
        self.config.replace(model=name, distribution=placement.distribution), self.manifest)
    with placement.strategy.scope():
      model = registry.build_model(config, self.manifest, self.text,
                                   prefixes_per_batch=self.prefixes_per_batch)
    distribution.compile_model(placement, model)
    return model

  def iterator(self, placement, count):
    """The first `count` global batches, as `fit` gets them under `placement`."""
    return iter(distribution.distribute_batches(placement, self.batches.take(count)))


def copies(variable):
  """Every replica's copy of a (Keras) variable: [numpy array]."""
  value = getattr(variable, "value", variable)
  return [np.array(v) for v in getattr(value, "values", [value])]


def gradient_check(setup, placement, model):
  """One ID-tower step on the first global batch, on one process and on the
  replicas, through a plain SGD (learning rate 1: a weight moves by minus the
  gradient the optimizer applied, the replicas' gradients as Keras sums them).

  Returns:
    {"loss": [single process, replicas], "largest_gradient", "largest_difference"
    (single-process gradient vs the weights' move on the replicas)}.
  """
  import keras
  import tensorflow as tf
  variables = model.tower("id").trainable_variables
  with placement.strategy.scope():
    sgd = keras.optimizers.SGD(1.0)
    sgd.build(variables)
  model.hard_negatives.assign(1)  # the partner's ranks: the same on any replica
  seed = tf.constant([0, 0], tf.int32)
  batch = next(iter(setup.batches))
  loss, gradients, _ = model.loss_and_gradients("id", batch, seed, training=False)
  before = [np.array(v) for v in variables]

  def step(share):
    share_loss, share_gradients, _ = model.loss_and_gradients("id", share, seed, training=False)
    sgd.apply(share_gradients, variables)
    return replicas.sum_over_replicas(share_loss)

  shares = next(setup.iterator(placement, 1))
  replica_loss = tf.function(lambda s: placement.strategy.run(step, args=(s,)))(shares)
  replica_loss = placement.strategy.experimental_local_results(replica_loss)[0]
  moved = [b - np.array(v) for b, v in zip(before, variables)]
  dense = [np.array(tf.convert_to_tensor(g)) for g in gradients]
  return {"loss": [float(loss), float(replica_loss)],
          "largest_gradient": max(float(np.abs(g).max()) for g in dense),
          "largest_difference": max(float(np.abs(g - m).max()) for g, m in zip(dense, moved))}


def tower_check(setup, placement, model):
  """One Keras train step of each phase (ID, then text; hard negatives) on the
  replicas: has the trained tower moved, is the other one (weights and Adam
  state, every replica's copy) bit-identical, are the copies equal?

  Returns:
    [{"trained", "trained_moved", "frozen_unchanged", "copies_equal"}] per step.
  """
  def state():
    return {name: [copies(v) for v in model.tower(name).trainable_variables
                   + list(model.optimizer_of(name).variables)]
            for name in model.tower_names}

  def same(a, b):
    return all(np.array_equal(x, y) for cx, cy in zip(a, b) for x, y in zip(cx, cy))

  model.make_train_function()
  iterator = setup.iterator(placement, 2)
  steps = []
  for trained, frozen, phase in (("id", "text", contract.ID_PHASE),
                                 ("text", "id", contract.TEXT_PHASE)):
    model.phase.assign(phase)
    before = state()
    model.train_function(iterator)
    after = state()
    steps.append({"trained": trained,
                  "trained_moved": not same(before[trained], after[trained]),
                  "frozen_unchanged": same(before[frozen], after[frozen]),
                  "copies_equal": all(np.array_equal(c, v[0]) for tower in after.values()
                                      for v in tower for c in v)})
  return steps


def sasrec_check(setup, placements):
  """SASRec's logged loss after each of `STEPS` Keras train steps and its
  weights after them, without a strategy and on the replicas (same initial
  weights).

  Returns:
    {"loss": {placement: [per step]}, "largest_weight", "largest_difference"}.
  """
  losses, weights = {}, {}
  initial = None
  for placement in placements:
    model = setup.model("sasrec", placement)
    if initial is None:
      initial = model.get_weights()
    model.set_weights(initial)
    model.make_train_function()  # (Keras' own returns None)
    iterator = setup.iterator(placement, STEPS)
    losses[placement.distribution] = [float(model.train_function(iterator)["loss"])
                                      for _ in range(STEPS)]
    weights[placement.distribution] = model.get_weights()
  first, second = weights.values()
  return {"loss": losses,
          "largest_weight": max(float(np.abs(w).max()) for w in first),
          "largest_difference": max(float(np.abs(a - b).max()) for a, b in zip(first, second))}


def main(data_dir, out_path):
  split_cpu()
  setup = Setup(data_dir)
  none, mirrored = distribution.place("none"), distribution.place("mirrored")
  alterrec = setup.model("alterrec", mirrored)
  out = {"replicas": mirrored.replicas,
         "gradient": gradient_check(setup, mirrored, alterrec),
         "towers": tower_check(setup, mirrored, alterrec),
         "sasrec": sasrec_check(setup, (none, mirrored))}
  with open(out_path, "w", encoding="utf-8") as f:
    json.dump(out, f)


if __name__ == "__main__":
  main(*sys.argv[1:3])
