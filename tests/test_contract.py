"""The model contract (models.contract): every model the registry builds satisfies
the protocols of its role, AlterRec's ablations are typed variants, the loss
weighting and alpha reach a model through its own interface, and the training
code probes no model attribute outside the contract."""

import ast
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from alterrec_tf.data import windows as alter_data
from alterrec_tf.formats import schema
from alterrec_tf.models import contract, names, registry
from alterrec_tf.models.alterrec import AlterRec
from alterrec_tf.models.settings import ModelSettings
from alterrec_tf.training import schedule, trainer
from tests import synthetic
from tests.test_model import small_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LEN = 8

# role -> the protocols a model of that role satisfies (and those it does not)
ROLES = {
    "alterrec": {contract.RankingModel, contract.AlternatingModel, contract.FactorizedScorer,
                 contract.FusedItemMatrix},
    "neural": {contract.RankingModel, contract.FactorizedScorer},
    "floor": {contract.RankingModel, contract.CountModel},
}
PROTOCOLS = set().union(*ROLES.values())


def _role(name):
  if name in names.ALTERREC_VARIANTS:
    return "alterrec"
  return "floor" if name in names.FLOORS else "neural"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("contract_data"))
  manifest = synthetic.write_dataset(data_dir, num_items=40, num_sessions=40,
                                     max_session_length=12)
  return data_dir, manifest, schema.load_text_embeddings(data_dir, manifest)


def _build(dataset, name, prefixes_per_batch=None, **changes):
  data_dir, manifest, text = dataset
  config = small_config(model=name, max_len=MAX_LEN, embedding_dim=8, num_layers=1,
                        seen_items="exclude", dropout=0.0, **changes)
  keras.utils.set_random_seed(config.seed)
  return registry.build_model(config, manifest, text,
                              train_files=schema.split_files(data_dir, manifest, "train"),
                              prefixes_per_batch=prefixes_per_batch)


def _batch(dataset):
  data_dir, manifest, _ = dataset
  split = alter_data.load_split(data_dir, manifest, "train", MAX_LEN, 1)
  return next(iter(split.batches(16)))


@pytest.mark.parametrize("name", names.ALL)
def test_every_registered_model_satisfies_the_protocols_of_its_role(dataset, name):
  model = _build(dataset, name)
  expected = ROLES[_role(name)]
  for protocol in PROTOCOLS:
    assert isinstance(model, protocol) == (protocol in expected), (name, protocol.__name__)
  if isinstance(model, contract.AlternatingModel):
    assert model.tower_names == names.ALTERREC_TOWERS[name]
    assert model.variant is names.ALTERREC_VARIANTS[name]
    assert model.random_share is None  # (only with --random_share_decay_epochs)
  if isinstance(model, contract.CountModel):
    assert isinstance(model.fit_seconds, float) and model.fit_seconds >= 0.0


def test_ablations_are_typed_variants():
  variants = names.ALTERREC_VARIANTS
  assert {name: v.towers for name, v in variants.items()} == names.ALTERREC_TOWERS
  assert [name for name, v in variants.items() if v.augmented_positives] == ["alterrec_aug"]
  assert [name for name, v in variants.items() if v.partner_negatives] == ["alterrec",
                                                                           "alterrec_aug"]
  with pytest.raises(ValueError, match="both towers"):
    names.AlterRecVariant(("id",), partner_negatives=True, augmented_positives=False)
  with pytest.raises(ValueError, match="partner"):
    names.AlterRecVariant(("id", "text"), partner_negatives=False, augmented_positives=True)
  with pytest.raises(ValueError, match="towers"):
    names.AlterRecVariant(("image",), partner_negatives=False, augmented_positives=False)


def test_the_variant_not_the_name_decides_partners_and_augmentation(dataset):
  partners = {name: {tower: _build(dataset, name).partner_of(tower)
                     for tower in names.ALTERREC_TOWERS[name]}
              for name in ("alterrec", "alterrec_aug", "alterrec_random", "id_only")}
  assert partners["alterrec"] == partners["alterrec_aug"] == {"id": "text", "text": "id"}
  assert partners["alterrec_random"] == {"id": None, "text": None}
  assert partners["id_only"] == {"id": None}
  aug = _build(dataset, "alterrec_aug", p=1)
  assert aug.variant.augmented_positives
  assert not _build(dataset, "alterrec").variant.augmented_positives
  # a model named alterrec built as the augmented variant augments: the name is a label
  _, manifest, text = dataset
  settings = ModelSettings.of(small_config(model="alterrec", max_len=MAX_LEN, embedding_dim=8,
                                           seen_items="exclude"))
  relabelled = AlterRec(settings, manifest["num_items"], text,
                        names.ALTERREC_VARIANTS["alterrec_aug"])
  assert relabelled.variant.augmented_positives and relabelled.partner_of("id") == "text"
  random = AlterRec(settings, manifest["num_items"], text,
                    names.ALTERREC_VARIANTS["alterrec_random"])
  assert random.partner_of("id") is None and random.partner_of("text") is None


@pytest.mark.parametrize("name", ["alterrec", "sasrec", "nfrec_sum"])
def test_prefixes_per_batch_given_at_build_sets_the_loss_weighting(dataset, name):
  batch = _batch(dataset)
  num_prefixes = int(tf.reduce_sum(tf.cast(batch[alter_data.TARGET_MASK], tf.int32)))
  prefixes_per_batch = 7.5
  losses = {}
  for weighting in (None, prefixes_per_batch):
    model = _build(dataset, name, prefixes_per_batch=weighting)
    assert model.prefixes_per_batch == weighting
    if isinstance(model, contract.AlternatingModel):
      loss = model.loss_and_gradients("id", batch, tf.constant([0, 1]), training=False)[0]
    else:  # the loss of the step's batch, before its update
      loss = model.train_step(batch)["loss"]
    losses[weighting] = float(loss)
  # the batch mean (each prefix 1 / P) or the sum over prefixes / prefixes_per_batch
  assert losses[prefixes_per_batch] * prefixes_per_batch == pytest.approx(
      losses[None] * num_prefixes, rel=1e-5)


def test_the_trainer_weighs_prefixes_only_with_prefix_weighting(dataset):
  data_dir, manifest, _ = dataset
  config = small_config(data_dir=data_dir, max_len=MAX_LEN, batch_size=4)
  split = alter_data.load_split(data_dir, manifest, "train", MAX_LEN, 1)
  expected = split.num_examples / split.steps(4)
  assert trainer._prefixes_per_batch(config.replace(loss_weighting="prefix"),
                                     split) == expected
  assert trainer._prefixes_per_batch(config.replace(loss_weighting="batch"), split) is None
  assert trainer._prefixes_per_batch(config, None) is None


def test_set_alpha_reweighs_the_fused_score_only(dataset):
  model = _build(dataset, "alterrec", alpha=0.5)
  batch = _batch(dataset)
  before, _ = model.score_heads(batch)
  model.set_alpha(0.2)
  assert model.settings.alpha == 0.2
  after, _ = model.score_heads(batch)
  for head in ("id", "text"):
    np.testing.assert_array_equal(after[head].numpy(), before[head].numpy())
  np.testing.assert_allclose(after["fused"].numpy(),
                             (0.2 * after["id"] + 0.8 * after["text"]).numpy(), rtol=1e-6)


def test_the_phase_schedule_drives_only_alternating_models(dataset):
  callback = schedule.PhaseSchedule(small_config())
  with pytest.raises(TypeError, match="AlternatingModel"):
    callback.set_model(_build(dataset, "sasrec"))
  callback.set_model(_build(dataset, "id_only"))


# Keras' own API, which the training code may use on any model.
KERAS_ASSIGNED = {"stop_training", "_maybe_symbolic_build"}


def test_the_training_code_sets_no_model_attribute_and_probes_none():
  """Nothing under alterrec_tf/training assigns a model attribute (other than
  Keras' own) or reads one through getattr / hasattr / setattr."""
  folder = os.path.join(REPO, "alterrec_tf", "training")
  found = []
  for file_name in sorted(os.listdir(folder)):
    if not file_name.endswith(".py"):
      continue
    with open(os.path.join(folder, file_name), encoding="utf-8") as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      targets = (node.targets if isinstance(node, ast.Assign)
                 else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign))
                 else [])
      for target in targets:
        if (isinstance(target, ast.Attribute) and "model" in ast.unparse(target.value)
            and target.attr not in KERAS_ASSIGNED):
          found.append(f"{file_name}:{node.lineno}: {ast.unparse(target)} =")
      if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
          and node.func.id in ("getattr", "hasattr", "setattr") and node.args
          and "model" in ast.unparse(node.args[0])):
        found.append(f"{file_name}:{node.lineno}: {ast.unparse(node)}")
  assert not found, found
