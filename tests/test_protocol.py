"""Issue 15's protocol: seen items scored out, the exact test protocol, uniform
prefix weights."""

import json

import numpy as np
import pytest
import tensorflow as tf

from alterrec_tf import config as alter_config
from alterrec_tf import runs as alter_runs
from alterrec_tf.config import TrainConfig
from alterrec_tf.data import windows as alter_data
from alterrec_tf.data.windows import scored_positions
from alterrec_tf.formats import schema
from alterrec_tf.models import negatives, registry
from alterrec_tf.models import partner as alter_partner
from alterrec_tf.training import evaluation, trainer
from tests import synthetic

NUM_ITEMS = 90
MAX_LEN = 6
TEXT_DIM = 8


def write_dedup_dataset(folder, lengths_by_split, seed=0):
  """A prepared dataset of de-duplicated sessions (no item twice in a session)."""
  rng = np.random.default_rng(seed)
  text = rng.normal(size=(NUM_ITEMS, TEXT_DIM)).astype(np.float32)
  text[0] = 0.0
  sessions = {split: [rng.permutation(np.arange(1, NUM_ITEMS))[:n] for n in lengths]
              for split, lengths in lengths_by_split.items()}
  manifest = synthetic.write_sessions(folder, sessions, NUM_ITEMS, text,
                                      sessions_deduplicated=True)
  return manifest, sessions


@pytest.fixture(scope="module")
def dedup_data(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("dedup"))
  # test sessions longer than 2 * max_len, and short ones
  manifest, sessions = write_dedup_dataset(folder, {
      "train": [5, 9, 14, 3] * 5, "valid": [4, 7], "test": [2 * MAX_LEN + 5, 3, 3 * MAX_LEN, 8]})
  return folder, manifest, sessions


def tiny_config(data_dir, **changes):
  return TrainConfig(data_dir=data_dir, embedding_dim=8, max_len=MAX_LEN, num_layers=1,
                     k1=2, k2=20, p=2, dropout=0.0, id_encoder="transformer",
                     batch_size=8, eval_batch_size=8, verbose=0).replace(**changes)


def build(data_dir, manifest, **changes):
  config = alter_config.resolve_seen_items(tiny_config(data_dir, **changes), manifest)
  text = schema.load_text_embeddings(data_dir, manifest)
  return registry.build_model(config, manifest, text,
                              train_files=schema.split_files(data_dir, manifest, "train"))


def prefix_items(batch, positions):
  items = batch[alter_data.ITEM_IDS].numpy()
  return [set(items[b, :t + 1]) - {0} for b, t in positions.numpy()]


def test_auto_excludes_seen_items_only_on_deduplicated_data(dedup_data):
  _, manifest, _ = dedup_data
  config = TrainConfig()
  assert alter_config.resolve_seen_items(config, manifest).seen_items == "exclude"
  assert alter_config.resolve_seen_items(config, {}).seen_items == "keep"
  kept = config.replace(seen_items="keep")
  assert alter_config.resolve_seen_items(kept, manifest).seen_items == "keep"


@pytest.mark.parametrize("model_name", ["alterrec", "text_only", "sasrec", "fdsa", "nfrec_sum"])
def test_every_head_scores_the_prefix_items_out(dedup_data, model_name):
  data_dir, manifest, _ = dedup_data
  split = alter_data.load_split(data_dir, manifest, "test", MAX_LEN, 1)
  batch = next(iter(split.batches(8)))
  positions, _ = scored_positions(batch)
  seen = prefix_items(batch, positions)
  for setting, expect_out in (("exclude", True), ("keep", False)):
    model = build(data_dir, manifest, model=model_name, seen_items=setting)
    heads, _ = model.score_heads(batch)
    for name, scores in heads.items():
      scores = scores.numpy()
      out = [scores[row, sorted(items)].max() <= -1e8 for row, items in enumerate(seen)]
      assert all(out) if expect_out else not any(out), (model_name, setting, name)


@pytest.mark.parametrize("model_name", ["alterrec", "alterrec_aug"])
def test_hard_negatives_and_augmented_positives_are_never_prefix_items(dedup_data,
                                                                        model_name):
  data_dir, manifest, _ = dedup_data
  model = build(data_dir, manifest, model=model_name, seen_items="exclude")
  model.hard_negatives.assign(1)
  split = alter_data.load_split(data_dir, manifest, "test", MAX_LEN, 1)
  batch = next(iter(split.batches(8)))
  positions, targets = scored_positions(batch)
  seen = prefix_items(batch, positions)
  for tower in ("id", "text"):
    hard, augmented = alter_partner.partner_signal(
        model, tower, batch[alter_data.ITEM_IDS], positions, targets, tf.constant([1, 2]))
    for row, items in enumerate(seen):
      assert not items & set(hard.numpy()[row]), tower
      assert not items & set(augmented.numpy()[row]), tower
    if model_name == "alterrec_aug":
      assert augmented.shape[1] == 2


def test_scored_out_items_add_nothing_to_the_sampled_loss():
  rng = np.random.default_rng(0)
  logits = tf.constant(rng.normal(size=(3, 10)).astype(np.float32))
  targets = tf.constant([1, 2, 3])
  negatives_with_seen = tf.constant([[4, 5, 6], [4, 7, 8], [9, 5, 6]])
  seen = np.zeros((3, 10), bool)
  seen[0, 6] = seen[1, 4] = seen[2, 9] = True  # one drawn negative per row is seen
  masked = tf.where(seen, -1e9, logits)
  loss = negatives.sampled_softmax_loss(masked, targets, negatives_with_seen)
  without = [[4, 5], [7, 8], [5, 6]]  # the same negatives, the seen one left out
  reference = np.mean([np.log(np.exp(logits.numpy()[r, [t] + without[r]]).sum())
                       - logits.numpy()[r, t] for r, t in enumerate([1, 2, 3])])
  np.testing.assert_allclose(float(loss), reference, rtol=1e-5)


def test_exact_test_protocol_equals_a_per_prefix_loop_on_long_sessions(dedup_data):
  data_dir, manifest, sessions = dedup_data
  model = build(data_dir, manifest, model="alterrec")  # default seen_items: auto -> exclude
  split = alter_data.load_split(data_dir, manifest, "test", MAX_LEN,
                                trainer.TEST_WINDOW_STRIDE)
  metrics, ranks = evaluation.Evaluator(model)(split.batches(8), keep_ranks=True)
  reference, reference_targets = [], []
  for items in sessions["test"]:
    for t in range(1, len(items)):
      context = items[max(0, t - MAX_LEN):t]  # exactly the last max_len items
      row = np.zeros([1, MAX_LEN], np.int32)
      row[0, :len(context)] = context
      scores = model(tf.constant(row)).numpy()[0, len(context) - 1]
      assert scores[context].max() <= -1e8  # the prefix's items are scored out
      reference.append(evaluation.full_ranking_ranks(scores[None], np.array([items[t]]))[0])
      reference_targets.append(items[t])
  assert len(ranks["fused"]) == len(reference) == sum(len(s) - 1 for s in sessions["test"])
  order = np.lexsort((ranks["fused"], ranks["targets"]))
  reference = np.minimum(np.array(reference), 21)  # the evaluator caps ranks at max_k + 1
  reference_order = np.lexsort((reference, reference_targets))
  np.testing.assert_array_equal(ranks["targets"][order],
                                np.array(reference_targets)[reference_order])
  np.testing.assert_array_equal(ranks["fused"][order], reference[reference_order])
  expected = evaluation.metrics_from_ranks(reference)
  for name, value in expected.items():
    assert metrics["fused"][name] == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize("loss", ["sampled", "full"])
def test_each_prefix_weighs_the_same_whatever_its_batch(loss):
  rng = np.random.default_rng(1)
  prefixes_per_batch = 7.5
  for num_prefixes in (2, 11):  # a short-window batch and a long-window one
    logits = tf.constant(rng.normal(size=(num_prefixes, 12)).astype(np.float32))
    targets = tf.constant(rng.integers(1, 12, num_prefixes))
    negative_ids = tf.constant(rng.integers(1, 12, (num_prefixes, 4)))

    def batch_loss(weighting):
      if loss == "sampled":
        return float(negatives.sampled_softmax_loss(logits, targets, negative_ids,
                                                    prefixes_per_batch=weighting))
      return float(negatives.full_softmax_loss(logits, targets, weighting))

    # mean: each prefix weighs 1 / num_prefixes; prefix weighting: 1 / prefixes_per_batch
    per_prefix_sum = batch_loss(None) * num_prefixes
    assert batch_loss(prefixes_per_batch) == pytest.approx(
        per_prefix_sum / prefixes_per_batch, rel=1e-5)


def test_trainer_records_the_resolved_protocol_and_scores_every_training_prefix(dedup_data,
                                                                               tmp_path):
  data_dir, manifest, _ = dedup_data
  config = tiny_config(data_dir, run_dir=str(tmp_path / "run"), model="sasrec", m_max=1)
  results = trainer.train(config)
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["seen_items"] == "exclude" and saved["loss_weighting"] == "prefix"
  assert results["train_examples_per_epoch"] == sum(
      n - 1 for n in [5, 9, 14, 3] * 5)


def test_a_run_stored_with_resolved_seen_items_matches_the_auto_flag(dedup_data, tmp_path):
  data_dir, manifest, _ = dedup_data
  config = tiny_config(data_dir, run_dir=str(tmp_path / "run"))
  alter_runs.write_config(config.run_dir, alter_config.resolve_seen_items(config, manifest))
  assert alter_runs.run_conflicts(config, manifest)[0] == []  # auto == exclude here
  kept = config.replace(seen_items="keep")
  assert alter_runs.run_conflicts(kept, manifest)[0] == ["--seen_items=exclude (now keep)"]


@pytest.mark.parametrize("seen_items", ["exclude", "keep"])
def test_tfrs_factorized_top_k_equals_the_keras_rs_hits(dedup_data, seen_items):
  """Issue 14: TFRS FactorizedTopK over a BruteForce index of the fused item
  matrix gives the evaluator's Hits@K, seen items scored out or kept."""
  data_dir, manifest, _ = dedup_data
  model = build(data_dir, manifest, model="alterrec", seen_items=seen_items, ks=(1, 5, 10))
  split = alter_data.load_split(data_dir, manifest, "test", MAX_LEN,
                                trainer.TEST_WINDOW_STRIDE)
  metrics = evaluation.Evaluator(model, ks=(1, 5, 10))(split.batches(8))["fused"]
  for k in (1, 5, 10):
    assert metrics[f"tfrs_hits@{k}"] == pytest.approx(metrics[f"hits@{k}"], abs=1e-6), k
  assert 0.0 < metrics["hits@10"] < 1.0  # neither trivially empty nor full
  queries_only = evaluation.Evaluator(model, ks=(1, 5, 10), tfrs_metrics=False)
  assert "tfrs_hits@1" not in queries_only(split.batches(8))["fused"]
