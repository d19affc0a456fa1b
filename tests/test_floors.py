"""The count-based floors: most_popular, transition and sequential_rules (SR) against
hand counts, and every floor (V-SKNN and STAN too: test_session_knn.py) for seen-item
exclusion and for reading the training split only."""

import math

import numpy as np
import pytest
import tensorflow as tf

from alterrec_tf.config import TrainConfig
from alterrec_tf.data import windows as alter_data
from alterrec_tf.formats import schema
from alterrec_tf.models import baselines
from alterrec_tf.models.baselines import floors, sequential_rules
from alterrec_tf.models.names import FLOORS
from alterrec_tf.models.towers import NEG_INF
from alterrec_tf.training import evaluation
from tests import synthetic

# Training sessions shared by the handmade datasets: 5 and 6 both occur in
# training, but never together (only in valid and test).
HANDMADE_TRAIN = [[1, 2, 3], [2, 3, 4], [1, 4, 2], [5, 1, 2], [6, 3, 4], [1, 2]]
HANDMADE_ITEMS = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("synthetic_floors"))
  manifest = synthetic.write_dataset(folder, num_items=60, num_sessions=80,
                                     max_session_length=25)
  return folder, manifest


def tiny_config(data_dir, **changes):
  return TrainConfig(data_dir=data_dir, max_len=10, eval_batch_size=32,
                     verbose=0).replace(**changes)


def read_training_split(files):
  """Numpy reference: (item lists, timestamps) of the sessions of `files`."""
  sessions, times = [], []
  for record in tf.data.TFRecordDataset(files):
    feature = tf.train.Example.FromString(record.numpy()).features.feature
    sessions.append([int(i) for i in feature[schema.ITEM_IDS].int64_list.value])
    times.append(int(feature[schema.TIMESTAMP].int64_list.value[0]))
  return sessions, times


def training_item_counts(files, num_items):
  """Numpy reference: occurrences of each item in the sessions of `files`."""
  counts = np.zeros(num_items, np.int64)
  for items in read_training_split(files)[0]:
    np.add.at(counts, np.array(items), 1)
  return counts


def build_floor(data_dir, manifest, name, seen_items="keep", max_len=10, splits=("train",)):
  """A floor built from the given splits' TFRecords (the trainer passes train only)."""
  files = [f for split in splits for f in schema.split_files(data_dir, manifest, split)]
  config = tiny_config(data_dir, model=name, max_len=max_len, seen_items=seen_items)
  return baselines.build_baseline(config, manifest["num_items"], None, files)


def handmade(tmp_path, valid, test, name="handmade"):
  folder = str(tmp_path / name)
  sessions = {"train": HANDMADE_TRAIN, "valid": valid, "test": test}
  return folder, synthetic.write_sessions(folder, sessions, HANDMADE_ITEMS)


def probe_batch(rows, targets):
  """A window batch scoring every position whose target is not padding."""
  item_ids = tf.constant(rows, tf.int32)
  target_ids = tf.constant(targets, tf.int32)
  return {alter_data.ITEM_IDS: item_ids, alter_data.TARGET_IDS: target_ids,
          alter_data.TARGET_MASK: target_ids != schema.PADDING_INDEX}


# --- most_popular -------------------------------------------------------------------------
def test_most_popular_ranks_every_prefix_by_training_counts(dataset):
  data_dir, manifest = dataset
  model = build_floor(data_dir, manifest, "most_popular")
  num_items = manifest["num_items"]
  train_files = schema.split_files(data_dir, manifest, "train")
  assert not model.trainable_variables
  counts = training_item_counts(train_files, num_items)
  np.testing.assert_array_equal(model.counts.numpy(), counts.astype(np.float32))

  split = alter_data.load_split(data_dir, manifest, "test", 10, 1)
  _, ranks = evaluation.Evaluator(model)(split.batches(32), keep_ranks=True)
  targets = ranks["targets"]
  scores = np.tile(counts.astype(np.float64), (len(targets), 1))
  scores[:, 0] = -1e9
  expected = np.minimum(evaluation.full_ranking_ranks(scores, targets), 21)
  np.testing.assert_array_equal(ranks["fused"], expected)


# --- transition ---------------------------------------------------------------------------
def test_transition_counts_consecutive_training_pairs_and_ranks_by_them(tmp_path):
  data_dir, manifest = handmade(tmp_path, valid=[[5, 6], [6, 5, 1]], test=[[1, 2, 3], [5, 6]])
  model = build_floor(data_dir, manifest, "transition")
  expected = np.zeros((HANDMADE_ITEMS, HANDMADE_ITEMS))
  for i, j in [(1, 2), (2, 3), (2, 3), (3, 4), (1, 4), (4, 2), (5, 1), (1, 2), (6, 3),
               (3, 4), (1, 2)]:  # the consecutive pairs of HANDMADE_TRAIN, by hand
    expected[i, j] += 1
  np.testing.assert_array_equal(model.transitions.numpy(), expected)
  assert model.transitions.numpy()[5, 6] == 0  # a valid/test pair only

  # training counts: 1: 4, 2: 5, 3: 3, 4: 3, 5: 1, 6: 1, 7: 0. Prefix [1]: 2 (3
  # pairs), 4 (1 pair), then popularity (1, 3, 5, 6, 7; equal counts: lower index).
  batch = probe_batch([[1, 0], [6, 5]], [[2, 0], [5, 1]])
  heads, targets = model.score_heads(batch)
  scores = heads["fused"].numpy()
  np.testing.assert_array_equal(targets.numpy(), [2, 5, 1])
  assert list(np.argsort(-scores[0], kind="stable")[:7]) == [2, 4, 1, 3, 5, 6, 7]
  # prefix [6, 5]: only the last item counts: 5 -> 1, then popularity
  assert list(np.argsort(-scores[2], kind="stable")[:7]) == [1, 2, 3, 4, 5, 6, 7]
  np.testing.assert_allclose(scores[0, 2], 3 + floors.TIE_BREAK * 5 / 5, rtol=1e-6)

  excluding = build_floor(data_dir, manifest, "transition", seen_items="exclude")
  scores = excluding.score_heads(batch)[0]["fused"].numpy()
  assert list(np.argsort(-scores[0], kind="stable")[:6]) == [2, 4, 3, 5, 6, 7]
  assert list(np.argsort(-scores[2], kind="stable")[:5]) == [1, 2, 3, 4, 7]


# --- sequential_rules (SR) ----------------------------------------------------------------
def test_sequential_rules_weights_by_hand():
  # HANDMADE_TRAIN with steps=2, "div": j one place after i adds 1, two places after 1/2
  sessions = [np.array(s) for s in HANDMADE_TRAIN]
  rules = sequential_rules.rule_matrix(sessions, HANDMADE_ITEMS, 2, "div", 0)
  expected = np.zeros((HANDMADE_ITEMS, HANDMADE_ITEMS))
  expected[1, 2] = 1 + 0.5 + 1 + 1  # [1,2,3], [1,4,2] (two places), [5,1,2], [1,2]
  expected[1, 3], expected[1, 4] = 0.5, 1  # [1,2,3] two places; [1,4,2]
  expected[2, 3], expected[2, 4] = 1 + 1, 0.5  # [1,2,3], [2,3,4]; [2,3,4] two places
  expected[3, 4] = 1 + 1  # [2,3,4], [6,3,4]
  expected[4, 2] = 1  # [1,4,2]
  expected[5, 1], expected[5, 2] = 1, 0.5  # [5,1,2]
  expected[6, 3], expected[6, 4] = 1, 0.5  # [6,3,4]
  np.testing.assert_allclose(rules, expected, rtol=1e-7)
  # steps=1: the consecutive pairs only
  one_step = sequential_rules.rule_matrix(sessions, HANDMADE_ITEMS, 1, "div", 0)
  assert one_step[1, 3] == 0.0 and one_step[1, 2] == 3.0 and one_step[2, 4] == 0.0
  # session-rec's other decays at distances 1 and 2 ([6,3,4]: 6 -> 3 at 1, 6 -> 4 at 2)
  for weighting, at_one, at_two in (("same", 1.0, 1.0), ("linear", 0.9, 0.8),
                                    ("quadratic", 1.0, 0.25),
                                    ("log", 1 / math.log10(2.7), 1 / math.log10(3.7))):
    rules = sequential_rules.rule_matrix(sessions, HANDMADE_ITEMS, 2, weighting, 0)
    assert rules[6, 3] == pytest.approx(at_one, rel=1e-6), weighting
    assert rules[6, 4] == pytest.approx(at_two, rel=1e-6), weighting


def test_sequential_rules_pruning_keeps_the_strongest_then_the_first_made():
  sessions = [np.array([1, 4]), np.array([1, 3]), np.array([1, 2]), np.array([1, 2])]
  # the rules of 1: -> 2 twice; -> 4 and -> 3 once each, -> 4 made first
  np.testing.assert_array_equal(sequential_rules.rule_matrix(sessions, 5, 1, "div", 0)[1],
                                [0, 0, 2, 1, 1])
  np.testing.assert_array_equal(sequential_rules.rule_matrix(sessions, 5, 1, "div", 2)[1],
                                [0, 0, 2, 0, 1])
  # a share below 1 drops that share of each item's rules, the weakest: 3 - int(3 * 0.5)
  # = 2 kept
  np.testing.assert_array_equal(sequential_rules.rule_matrix(sessions, 5, 1, "div", 0.5)[1],
                                [0, 0, 2, 0, 1])


def test_sequential_rules_score_the_last_item_only(tmp_path):
  data_dir, manifest = handmade(tmp_path, valid=[[5, 6], [6, 5, 1]], test=[[5, 6], [1, 2, 3]])
  model = build_floor(data_dir, manifest, "sequential_rules")  # the defaults: "div", no pruning
  assert model.rules.numpy()[5, 6] == 0.0 and model.rules.numpy()[6, 5] == 0.0
  counts = training_item_counts(schema.split_files(data_dir, manifest, "train"), 8)
  popularity = floors.TIE_BREAK * counts / counts.max()
  # the rules of 1 (all steps): [1,2,3] 2: 1, 3: 1/2; [1,4,2] 4: 1, 2: 1/2; [5,1,2] 2: 1;
  # [1,2] 2: 1. Of 2: [1,2,3] 3: 1; [2,3,4] 3: 1, 4: 1/2. Each divided by its largest.
  of_1 = np.array([0, 0, 3.5, 0.5, 1, 0, 0, 0]) / 3.5
  of_2 = np.array([0, 0, 0, 2, 0.5, 0, 0, 0]) / 2
  batch = probe_batch([[2, 0], [1, 2]], [[3, 0], [2, 3]])  # prefixes [2], [1], [1, 2]
  scores = model.score_heads(batch)[0]["fused"].numpy()
  for row, expected in ((0, of_2), (1, of_1), (2, of_2)):  # only the last item counts
    np.testing.assert_allclose(scores[row, 1:], (expected + popularity)[1:], rtol=1e-5,
                               atol=1e-9)
  # prefix [5] of the test split -> 6: 6 is no rule of 5, only the popularity tie-break
  first = model.score_heads(synthetic.first_batch(data_dir, manifest, "test", 4))
  assert first[1].numpy()[0] == 6
  np.testing.assert_allclose(first[0]["fused"].numpy()[0, 6], popularity[6], rtol=1e-5)


# --- every floor --------------------------------------------------------------------------
@pytest.mark.parametrize("name", FLOORS)
def test_seen_items_excluded_never_rank_a_prefix_item_and_kept_can(dataset, name):
  data_dir, manifest = dataset
  batch = synthetic.first_batch(data_dir, manifest, "test", 10)
  _, prefixes = synthetic.numpy_prefix_rows(batch)
  top_lists = {}
  for seen_items in ("exclude", "keep"):
    model = build_floor(data_dir, manifest, name, seen_items=seen_items)
    scores = model.score_heads(batch)[0]["fused"].numpy()
    top_lists[seen_items] = np.argsort(-scores, axis=1, kind="stable")[:, :20]
    if seen_items == "exclude":
      for row, prefix in zip(scores, prefixes):
        assert np.all(row[prefix] == NEG_INF)
      # the serving entry point agrees at the scored positions
      positions, _ = synthetic.numpy_prefix_rows(batch)
      every = model(batch[alter_data.ITEM_IDS]).numpy()
      np.testing.assert_allclose(every[positions[:, 0], positions[:, 1]], scores, rtol=1e-6)
  for seen_items, lists in top_lists.items():
    with_own_item = [bool(set(top) & set(prefix)) for top, prefix in zip(lists, prefixes)]
    if seen_items == "exclude":
      assert not any(with_own_item)
    else:
      assert any(with_own_item), "kept, a prefix's items are ranked like any other"


@pytest.mark.parametrize("name", FLOORS)
def test_every_floor_counts_only_training_sessions(tmp_path, name):
  # two datasets with the same training split, very different valid and test
  quiet = handmade(tmp_path, valid=[[1, 2]], test=[[2, 3]], name="quiet")
  loud = handmade(tmp_path, valid=[[5, 6, 7]] * 6, test=[[6, 5, 7], [7, 5, 6]] * 4,
                  name="loud")
  batch = probe_batch([[5, 0, 0], [1, 5, 6]], [[6, 0, 0], [5, 6, 7]])
  scores = {}
  for label, (data_dir, manifest) in (("quiet", quiet), ("loud", loud)):
    scores[label] = build_floor(data_dir, manifest, name).score_heads(batch)[0]["fused"]
  np.testing.assert_array_equal(scores["quiet"].numpy(), scores["loud"].numpy())
  # the probe sees the difference had valid and test been counted
  data_dir, manifest = loud
  everything = build_floor(data_dir, manifest, name, splits=("train", "valid", "test"))
  assert not np.allclose(everything.score_heads(batch)[0]["fused"].numpy(),
                         scores["loud"].numpy())


def test_a_floor_run_keeps_the_ranks_of_its_one_test_pass(dataset, tmp_path):
  # the grid's save_test_ranks: written with the run (and hashed), not ranked again
  from alterrec_tf import run_archive
  from alterrec_tf import runs as alter_runs
  from alterrec_tf.training import trainer
  data_dir, _ = dataset
  run_dir = tmp_path / "sequential_rules"
  results = trainer.train(tiny_config(data_dir, model="sequential_rules", run_dir=str(run_dir),
                                      seen_items="exclude"), save_test_ranks=True)
  ranks = np.load(run_dir / alter_runs.TEST_RANKS_FILE)
  assert len(ranks["fused"]) == len(ranks["targets"]) > 0
  for k in (10, 20):
    assert np.mean(ranks["fused"] <= k) == pytest.approx(results["test"]["fused"][f"hits@{k}"],
                                                         abs=1e-6)
  hashes = alter_runs.read_json(str(run_dir / alter_runs.HASHES_FILE))["sha256"]
  assert alter_runs.TEST_RANKS_FILE in hashes
  assert run_archive.check_hashes(str(run_dir))
  # the run says which parameters it scored with (the module defaults)
  assert results["floor_parameters"] == {"steps": 5, "weighting": "div", "pruning": 0}
  assert alter_runs.read_json(str(run_dir / "results.json"))["floor_parameters"] == (
      results["floor_parameters"])


def test_a_changed_floor_default_is_a_conflict_not_a_reused_run(dataset, tmp_path, monkeypatch):
  # a floor's parameters are module defaults, not flags: the run check compares the
  # finished run's recorded parameters with them, so a stale (or archived) run is not reused
  from alterrec_tf import config as alter_config
  from alterrec_tf import runs as alter_runs
  from alterrec_tf.models import floor_defaults
  from alterrec_tf.training import trainer
  data_dir, manifest = dataset
  config = tiny_config(data_dir, model="sequential_rules", run_dir=str(tmp_path / "sr"),
                       seen_items="exclude")
  first = trainer.train(config)
  assert alter_runs.run_conflicts(config, manifest)[0] == []
  assert trainer.train(config) == first  # the same run: read back, not trained again
  changed = {**floor_defaults.PARAMETERS["sequential_rules"], "steps": 2}
  monkeypatch.setitem(floor_defaults.PARAMETERS, "sequential_rules", changed)
  conflicts, _ = alter_runs.run_conflicts(config, manifest)
  assert conflicts == ["floor parameter steps=5 (now 2)"]
  with pytest.raises(alter_config.ConfigError, match="floor parameter steps=5"):
    trainer.train(config)
  again = trainer.train(config.replace(overwrite=True))
  assert again["floor_parameters"]["steps"] == 2
  assert alter_runs.run_conflicts(config, manifest)[0] == []
  # a floor run from before results.json recorded its parameters is not taken as matching
  assert floor_defaults.conflicts("sequential_rules", None)
  assert floor_defaults.conflicts("most_popular", None) == []
