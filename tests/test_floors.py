"""The count-based floors: most_popular, transition, sequential_rules (SR) and
session_knn (V-SKNN), each checked against hand counts or a plain Python
reference, for seen-item exclusion, and for reading the training split only."""

import math

import numpy as np
import pytest
import tensorflow as tf

from alterrec_tf.config import TrainConfig
from alterrec_tf.data import windows as alter_data
from alterrec_tf.formats import schema
from alterrec_tf.models import baselines
from alterrec_tf.models.baselines import floors, session_knn
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
def test_sequential_rules_counts_training_sessions_only(tmp_path):
  data_dir, manifest = handmade(tmp_path, valid=[[5, 6], [6, 5, 1]],
                                test=[[5, 6], [6, 5], [1, 2, 3]])
  model = build_floor(data_dir, manifest, "sequential_rules", max_len=4)
  neighbours = model.neighbours.numpy()
  assert neighbours[5, 6] == 0.0 and neighbours[6, 5] == 0.0

  # brute force: j at distance d = 1..window after i weighs 1/d, rows normalised
  expected = np.zeros((8, 8))
  for items in HANDMADE_TRAIN:
    for a, i in enumerate(items):
      for b, j in enumerate(items):
        if 0 < b - a <= 4:
          expected[i, j] += 1.0 / (b - a)
  expected /= np.maximum(expected.sum(axis=1, keepdims=True), 1e-12)
  np.testing.assert_allclose(neighbours, expected, rtol=1e-6, atol=1e-7)

  # prefix [5] -> 6: no vote, only the popularity tie-break
  batch = synthetic.first_batch(data_dir, manifest, "test", 4)
  heads, targets = model.score_heads(batch)
  counts = training_item_counts(schema.split_files(data_dir, manifest, "train"), 8)
  first = heads["fused"].numpy()[0]
  assert targets.numpy()[0] == 6
  np.testing.assert_allclose(first[6], floors.TIE_BREAK * counts[6] / counts.max(), rtol=1e-5)


def test_sequential_rules_scores_are_recency_weighted_votes(dataset):
  data_dir, manifest = dataset
  model = build_floor(data_dir, manifest, "sequential_rules")
  neighbours = model.neighbours.numpy().astype(np.float64)
  popularity = model.popularity.numpy().astype(np.float64)
  batch = synthetic.first_batch(data_dir, manifest, "test", 10)
  heads, _ = model.score_heads(batch)
  _, prefixes = synthetic.numpy_prefix_rows(batch)
  expected = []
  for prefix in prefixes:
    weights = 1.0 / np.arange(len(prefix), 0, -1)  # oldest 1/t ... last 1
    expected.append(weights @ neighbours[prefix] + popularity)
  np.testing.assert_allclose(heads["fused"].numpy()[:, 1:], np.array(expected)[:, 1:],
                             rtol=1e-4, atol=1e-7)


# --- session_knn (V-SKNN) -----------------------------------------------------------------
def vsknn_reference(prefix, sessions, times, neighbours, sample_size, popularity):
  """Plain Python V-SKNN of one prefix: (scores [V] float64, ambiguous).

  `ambiguous`: a candidate left out is within 1e-5 of the last neighbour's
  similarity (equal similarities from different sums may differ in the last
  float32 bit, so the model may cut such a tie by value, not by recency).
  """
  newest_first = sorted(range(len(sessions)), key=lambda n: (times[n], n), reverse=True)
  weights = {}
  for position, item in enumerate(prefix, start=1):
    weights[int(item)] = position / len(prefix)  # a repeated item keeps its latest weight
  prefix_norm = math.sqrt(sum(w * w for w in weights.values()))
  candidates = []
  for recency, n in enumerate(newest_first):
    items = set(sessions[n])
    dot = sum(weights.get(i, 0.0) for i in items)
    if dot > 0:
      candidates.append((dot / (prefix_norm * math.sqrt(len(items))), recency, items))
  if sample_size:
    candidates = candidates[:sample_size]  # the most recent candidates
  candidates.sort(key=lambda c: (-c[0], c[1]))  # equal similarity: the newer first
  ambiguous = (len(candidates) > neighbours and
               candidates[neighbours - 1][0] - candidates[neighbours][0] < 1e-5)
  scores = np.array(popularity, np.float64)
  for similarity, _, items in candidates[:neighbours]:
    for item in items:
      scores[item] += similarity
  return scores, ambiguous


@pytest.mark.parametrize("neighbours,sample_size", [(5, 0), (5, 12), (100, 0), (3, 1)])
def test_session_knn_equals_a_plain_python_reference(dataset, neighbours, sample_size):
  data_dir, manifest = dataset
  train_files = schema.split_files(data_dir, manifest, "train")
  model = session_knn.SessionKNN.from_files(train_files, manifest["num_items"], neighbours,
                                       sample_size)
  sessions, times = read_training_split(train_files)
  popularity = model.popularity.numpy().astype(np.float64)
  batch = synthetic.first_batch(data_dir, manifest, "test", 10)
  scores = model.score_heads(batch)[0]["fused"].numpy()
  _, prefixes = synthetic.numpy_prefix_rows(batch)
  assert any(len(set(p)) < len(p) for p in prefixes), "the data should repeat items"
  compared = 0
  for row, prefix in zip(scores, prefixes):
    expected, ambiguous = vsknn_reference(prefix, sessions, times, neighbours, sample_size,
                                          popularity)
    if ambiguous:
      continue
    compared += 1
    np.testing.assert_allclose(row[1:], expected[1:], rtol=1e-5, atol=1e-6)
    assert row[0] == NEG_INF
  print(f"{compared} of {len(prefixes)} prefixes compared")
  assert compared >= 0.5 * len(prefixes)


def test_session_knn_orders_sessions_by_timestamp_then_file_position():
  sessions = [np.array([3, 1, 3]), np.array([2]), np.array([4]), np.array([5])]
  ordered = session_knn.sessions_newest_first(sessions, [20, 10, 20, 0])
  assert [list(s) for s in ordered] == [[4], [1, 3], [2], [5]]


def test_session_knn_prefers_recent_sessions(tmp_path):
  # sessions 0..3 in time order (file order, no timestamps); prefix [1]
  sessions = {"train": [[1, 2], [1, 3], [1, 4], [6, 7]], "test": [[1, 5]]}
  folder = str(tmp_path / "recent")
  manifest = synthetic.write_sessions(folder, sessions, 8)
  files = schema.split_files(folder, manifest, "train")
  batch = probe_batch([[1]], [[5]])
  top = lambda model: list(np.argsort(-model.score_heads(batch)[0]["fused"].numpy()[0],
                                      kind="stable")[:4])
  # one neighbour among equally similar sessions: the newest ([1, 4])
  newest = session_knn.SessionKNN.from_files(files, 8, neighbours=1, sample_size=0)
  assert top(newest) == [1, 4, 2, 3]
  # all neighbours, but only the 2 most recent candidates
  recent = session_knn.SessionKNN.from_files(files, 8, neighbours=3, sample_size=2)
  assert top(recent) == [1, 3, 4, 2]


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
