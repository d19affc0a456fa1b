"""The session-neighbourhood floors, V-SKNN (`session_knn`) and STAN (`stan`): exact
scores of small sessions computed by hand, and a plain Python reference of session-rec's
definitions (vsknn.py, stan.py) on every prefix of a synthetic batch."""

import math

import numpy as np
import pytest
import tensorflow as tf

from alterrec_tf.formats import schema
from alterrec_tf.models.baselines import floor_registry, neighbourhood, session_knn, stan
from alterrec_tf.models.towers import NEG_INF
from tests import synthetic
from tests.test_floors import probe_batch, read_training_split

DAY = 86400

# V-SKNN by hand: four training sessions (times 10..40), the prefix [2, 3]
KNN_SESSIONS = [[1, 2, 3], [2, 4], [3, 5, 6], [7, 8]]  # A, B, C, D
KNN_TIMES = [10, 20, 30, 40]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("synthetic_neighbourhoods"))
  manifest = synthetic.write_dataset(folder, num_items=60, num_sessions=80,
                                     max_session_length=25)
  return folder, manifest


def knn_floor(**params):
  """V-SKNN of KNN_SESSIONS: "div" places and score decay, cosine, no idf unless given."""
  params = {"weighting": "div", "weighting_score": "div", "similarity": "cosine",
            "idf_weighting": 0.0, **params}
  sessions = [np.array(s) for s in KNN_SESSIONS]
  counts = np.bincount(np.concatenate(sessions), minlength=9)
  return session_knn.SessionKNN(sessions, KNN_TIMES, counts, **params)


def prefix_scores(model, prefix):
  """The floor's scores of one prefix without the popularity tie-break: [V] float64."""
  item_ids = tf.constant([prefix], tf.int32)
  positions = tf.constant([[0, len(prefix) - 1]], tf.int64)
  scores = model.prefix_scores(item_ids, positions).numpy()[0]
  return scores.astype(np.float64) - model.popularity.numpy()


def test_position_and_distance_weights_are_session_rec_s():
  places, n = np.array([1.0, 9.0, 12.0]), 12.0
  for name, expected in (("same", [1, 1, 1]), ("div", [1 / 12, 9 / 12, 1]),
                         ("linear", [0, 0.7, 1]),  # 1 - 0.1 (n - i), at least 0
                         ("log", [1 / math.log10(12.7), 1 / math.log10(4.7), 1 / math.log10(1.7)]),
                         ("quadratic", [1 / 144, 81 / 144, 1])):
    np.testing.assert_allclose(neighbourhood.position_weight(name, places, n).numpy(),
                               expected, rtol=1e-6, atol=1e-12, err_msg=name)
  steps = np.array([1.0, 2.0, 12.0])
  for name, expected in (("same", [1, 1, 1]), ("div", [1, 1 / 2, 1 / 12]),
                         ("linear", [0.9, 0.8, 0]),
                         ("log", [1 / math.log10(2.7), 1 / math.log10(3.7), 1 / math.log10(13.7)]),
                         ("quadratic", [1, 1 / 4, 1 / 144])):
    np.testing.assert_allclose(neighbourhood.distance_weight(name, steps).numpy(), expected,
                               rtol=1e-6, atol=1e-12, err_msg=name)


def test_session_knn_by_hand():
  # prefix [2, 3], "div" places: q = {2: 1/2, 3: 1}, |q| = sqrt(5/4); cosines:
  a = (0.5 + 1) / (math.sqrt(1.25) * math.sqrt(3))  # A = [1, 2, 3] holds 2 and 3
  b = 0.5 / (math.sqrt(1.25) * math.sqrt(2))  # B = [2, 4] holds 2
  c = 1 / (math.sqrt(1.25) * math.sqrt(3))  # C = [3, 5, 6] holds 3; D shares nothing
  # "div" score decay by the most recent shared item: A and C hold the last item (1),
  # B only the one before (1/2)
  expected = np.zeros(9)
  expected[[1, 2, 3]] += a
  expected[[2, 4]] += b / 2
  expected[[3, 5, 6]] += c
  np.testing.assert_allclose(prefix_scores(knn_floor(neighbours=3), [2, 3]),
                             expected / expected.max(), rtol=1e-5, atol=1e-7)
  # two neighbours: A and C (b is the smallest)
  two = np.zeros(9)
  two[[1, 2, 3]] += a
  two[[3, 5, 6]] += c
  np.testing.assert_allclose(prefix_scores(knn_floor(neighbours=2), [2, 3]),
                             two / two.max(), rtol=1e-5, atol=1e-7)
  # a sample of the 2 most recent candidates: C (30) and B (20), not A (10)
  recent = np.zeros(9)
  recent[[2, 4]] += b / 2
  recent[[3, 5, 6]] += c
  np.testing.assert_allclose(prefix_scores(knn_floor(neighbours=3, sample_size=2), [2, 3]),
                             recent / recent.max(), rtol=1e-5, atol=1e-7)
  # idf weighting 1: a vote for j times 1 + log(4 sessions / occurrences of j)
  idf = np.log(4 / np.array([1, 1, 2, 2, 1, 1, 1, 1, 1]))
  weighted = expected * (1 + idf)
  np.testing.assert_allclose(prefix_scores(knn_floor(neighbours=3, idf_weighting=1.0), [2, 3]),
                             weighted / weighted.max(), rtol=1e-5, atol=1e-7)
  # "vec": q.b / 2 distinct prefix items; "same" score decay: B's vote is not halved
  vec = np.zeros(9)
  vec[[1, 2, 3]] += 1.5 / 2
  vec[[2, 4]] += 0.5 / 2
  vec[[3, 5, 6]] += 1 / 2
  model = knn_floor(neighbours=3, similarity="vec", weighting_score="same")
  np.testing.assert_allclose(prefix_scores(model, [2, 3]), vec / vec.max(), rtol=1e-5,
                             atol=1e-7)


def test_session_knn_decays_by_the_most_recent_shared_item_of_a_long_prefix():
  # prefix [1, 7, 4, 3]: A holds 1 and 3 (the last item: d = 1), B holds 4 (d = 2), D
  # holds 7 (d = 3); "same" places: q = 1 everywhere, |q| = 2
  a, b, d = 2 / (2 * math.sqrt(3)), 1 / (2 * math.sqrt(2)), 1 / (2 * math.sqrt(2))
  c = 1 / (2 * math.sqrt(3))  # C holds 3 (d = 1)
  expected = np.zeros(9)
  for sim, items, step in ((a, [1, 2, 3], 1), (b, [2, 4], 2), (c, [3, 5, 6], 1),
                           (d, [7, 8], 3)):
    expected[items] += sim / step ** 2  # "quadratic" score decay: 1 / d^2
  model = knn_floor(neighbours=4, weighting="same", weighting_score="quadratic")
  np.testing.assert_allclose(prefix_scores(model, [1, 7, 4, 3]), expected / expected.max(),
                             rtol=1e-5, atol=1e-7)


def test_stan_by_hand():
  # A = [1, 2, 3] at day 0, B = [4, 2, 5] at day 1, C = [3, 6] at day 2; prefix [2, 3]
  sessions = [np.array([1, 2, 3]), np.array([4, 2, 5]), np.array([3, 6])]
  counts = np.bincount(np.concatenate(sessions), minlength=7)
  times = [0, DAY, 2 * DAY]
  e = math.exp
  # lambda_1 = 1: q = {2: e^-1, 3: 1}
  norm = math.sqrt(e(-2) + 1)
  cos_a = (e(-1) + 1) / (norm * math.sqrt(3))
  cos_b = e(-1) / (norm * math.sqrt(3))
  cos_c = 1 / (norm * math.sqrt(2))
  # lambda_2 = 1 day: each similarity times e^-(t - t_c) (t: any time of the prefix)
  a, b, c = cos_a * e(-2), cos_b * e(-1), cos_c
  # lambda_3 = 1: a vote times e^-|p(j) - p*|, p* the neighbour's last shared place:
  # A: 3 (item 3); B: 2 (item 2); C: 1 (item 3)
  expected = np.zeros(7)
  expected[[1, 2, 3]] += a * np.exp(-np.array([2, 1, 0]))
  expected[[4, 2, 5]] += b * np.exp(-np.array([1, 0, 1]))
  expected[[3, 6]] += c * np.exp(-np.array([0, 1]))
  model = stan.STAN(sessions, times, counts, neighbours=3, lambda_1=1.0, lambda_2=1.0,
                    lambda_3=1.0)
  np.testing.assert_allclose(prefix_scores(model, [2, 3]), expected / expected.max(),
                             rtol=1e-5, atol=1e-7)
  # one neighbour: C (c = 0.66 > a = 0.10 > b = 0.07)
  one = stan.STAN(sessions, times, counts, neighbours=1, lambda_1=1.0, lambda_2=1.0,
                  lambda_3=1.0)
  np.testing.assert_allclose(prefix_scores(one, [2, 3])[1:], [0, 0, 1, 0, 0, e(-1)],
                             rtol=1e-5, atol=1e-7)
  # no time decay (lambda_2 = 0): A is the nearest (cos_a = 0.74 > cos_c = 0.66)
  timeless = stan.STAN(sessions, times, counts, neighbours=1, lambda_1=1.0, lambda_2=0.0,
                       lambda_3=1.0)
  np.testing.assert_allclose(prefix_scores(timeless, [2, 3])[1:],
                             [e(-2), e(-1), 1, 0, 0, 0], rtol=1e-5, atol=1e-7)
  # every decay off: binary cosines, plain votes
  plain = stan.STAN(sessions, times, counts, neighbours=3, lambda_1=0.0, lambda_2=0.0,
                    lambda_3=0.0)
  binary = np.zeros(7)
  binary[[1, 2, 3]] += 2 / (math.sqrt(2) * math.sqrt(3))
  binary[[4, 2, 5]] += 1 / (math.sqrt(2) * math.sqrt(3))
  binary[[3, 6]] += 1 / (math.sqrt(2) * math.sqrt(2))
  np.testing.assert_allclose(prefix_scores(plain, [2, 3]), binary / binary.max(), rtol=1e-5,
                             atol=1e-7)


def test_stan_places_are_last_occurrences_and_old_sessions_do_not_underflow():
  items, places = neighbourhood.last_occurrences([4, 2, 4, 5])
  assert list(items) == [2, 4, 5] and list(places) == [2, 3, 4]
  # a year between sessions at lambda_2 = 1 day: e^-365 is 0 in float32, yet the older
  # session still ranks and votes (relative to the newer one, as float64 would)
  sessions = [np.array([1, 2]), np.array([3, 4])]
  model = stan.STAN(sessions, [0, 365 * DAY], np.array([0, 1, 1, 1, 1]), neighbours=2,
                    lambda_1=1.0, lambda_2=1.0, lambda_3=0.0)
  scores = prefix_scores(model, [1])
  assert scores[2] == pytest.approx(1.0) and scores[3] == 0.0


def test_sessions_are_ordered_by_timestamp_then_file_position():
  assert list(neighbourhood.newest_first([20, 10, 20, 0])) == [2, 0, 1, 3]


def test_session_knn_prefers_recent_sessions(tmp_path):
  # sessions 0..3 in time order (file order, no timestamps); prefix [1]
  sessions = {"train": [[1, 2], [1, 3], [1, 4], [6, 7]], "test": [[1, 5]]}
  folder = str(tmp_path / "recent")
  manifest = synthetic.write_sessions(folder, sessions, 8)
  files = schema.split_files(folder, manifest, "train")
  batch = probe_batch([[1]], [[5]])
  top = lambda model: list(np.argsort(-model.score_heads(batch)[0]["fused"].numpy()[0],
                                      kind="stable")[:4])
  for name, params in (("session_knn", {"idf_weighting": 0.0}), ("stan", {})):
    # one neighbour among equally similar sessions: the newest ([1, 4])
    newest = floor_registry.build_floor(name, files, 8, neighbours=1, sample_size=0, **params)
    assert top(newest) == [1, 4, 2, 3], name
    # all neighbours, but only the 2 most recent candidates
    recent = floor_registry.build_floor(name, files, 8, neighbours=3, sample_size=2, **params)
    assert top(recent) == [1, 3, 4, 2], name


def test_floor_registry_refuses_unknown_parameters():
  with pytest.raises(ValueError, match="stan has no parameter weighting"):
    floor_registry.build_floor("stan", [], 8, weighting="div")
  with pytest.raises(ValueError, match="not one of"):
    knn_floor(weighting_score="exp")
  assert floor_registry.parameters("most_popular") == {}


# --- plain Python references (session-rec's loops) ---------------------------------------
def _position_weight(name, i, n):
  return {"same": 1.0, "div": i / n, "linear": max(1 - 0.1 * (n - i), 0.0),
          "log": 1 / math.log10(n - i + 1.7), "quadratic": (i / n) ** 2}[name]


def _distance_weight(name, d):
  return {"same": 1.0, "div": 1 / d, "linear": max(1 - 0.1 * d, 0.0),
          "log": 1 / math.log10(d + 1.7), "quadratic": 1 / d ** 2}[name]


def neighbours_reference(prefix, sessions, times, k, sample_size, similarity_of):
  """session-rec's candidates, sample and top k: ([(similarity, session list)], ambiguous).

  `ambiguous`: a cut (sample or top k) falls between candidates whose keys are within
  1e-5 relatively (float32 sums may order them differently).
  """
  newest_first = sorted(range(len(sessions)), key=lambda n: (times[n], n), reverse=True)
  relevant = [n for n in newest_first if set(sessions[n]) & set(prefix)]
  if sample_size:
    relevant = relevant[:sample_size]
  scored = [(similarity_of(sessions[n], times[n]), -rank, sessions[n])
            for rank, n in enumerate(relevant)]
  scored.sort(key=lambda c: (c[0], c[1]), reverse=True)  # equal: the newer first
  ambiguous = (len(scored) > k and scored[k][0] > 0
               and scored[k - 1][0] - scored[k][0] <= 1e-5 * scored[k - 1][0])
  return [(s, items) for s, _, items in scored[:k]], ambiguous


def vsknn_reference(prefix, sessions, times, params, idf):
  n = len(prefix)
  pos_map = {}
  for i, item in enumerate(prefix, start=1):
    pos_map[item] = _position_weight(params["weighting"], i, n)
  norm = math.sqrt(sum(w * w for w in pos_map.values()))

  def similarity(items, _):
    dot = sum(pos_map[i] for i in set(items) & set(prefix))
    if params["similarity"] == "vec":
      return dot / len(pos_map)
    return dot / (norm * math.sqrt(len(set(items))))

  chosen, ambiguous = neighbours_reference(prefix, sessions, times, params["neighbours"],
                                           params["sample_size"], similarity)
  scores = np.zeros(len(idf))
  for sim, items in chosen:
    if sim <= 0:
      continue
    step = next(d for d, item in enumerate(reversed(prefix), start=1) if item in items)
    for item in set(items):
      scores[item] += (sim * _distance_weight(params["weighting_score"], step)
                       * (1 + params["idf_weighting"] * idf[item]))
  return scores, ambiguous


def stan_reference(prefix, sessions, times, params, num_items):
  n, now = len(prefix), max(times)
  pos_map = {}
  for i, item in enumerate(prefix, start=1):
    pos_map[item] = math.exp((i - n) / params["lambda_1"])
  norm = math.sqrt(sum(w * w for w in pos_map.values()))

  def similarity(items, time):
    dot = sum(pos_map[i] for i in set(items) & set(prefix))
    cosine = dot / (norm * math.sqrt(len(set(items))))
    return cosine * math.exp(-(now - time) / (params["lambda_2"] * DAY))

  chosen, ambiguous = neighbours_reference(prefix, sessions, times, params["neighbours"],
                                           params["sample_size"], similarity)
  scores = np.zeros(num_items)
  for sim, items in chosen:
    last_place = {item: place for place, item in enumerate(items, start=1)}
    shared = max(place for place, item in enumerate(items, start=1) if item in pos_map)
    for item, place in last_place.items():
      scores[item] += sim * math.exp(-abs(place - shared) / params["lambda_3"])
  return scores, ambiguous


KNN_SETTINGS = [
    dict(neighbours=5, sample_size=0, weighting="div", weighting_score="div",
         similarity="cosine", idf_weighting=0.0),
    dict(neighbours=10, sample_size=20, weighting="log", weighting_score="quadratic",
         similarity="cosine", idf_weighting=2.0),
    dict(neighbours=100, sample_size=0, weighting="linear", weighting_score="linear",
         similarity="vec", idf_weighting=0.0),
    dict(neighbours=3, sample_size=1, weighting="same", weighting_score="same",
         similarity="cosine", idf_weighting=0.0),
]
STAN_SETTINGS = [
    dict(neighbours=5, sample_size=0, lambda_1=1.0, lambda_2=60 / DAY, lambda_3=2.0),
    dict(neighbours=20, sample_size=15, lambda_1=3.0, lambda_2=1000 / DAY, lambda_3=0.5),
]


@pytest.mark.parametrize("name,params", [("session_knn", p) for p in KNN_SETTINGS]
                         + [("stan", p) for p in STAN_SETTINGS])
def test_neighbourhood_floors_equal_a_plain_python_reference(dataset, name, params):
  data_dir, manifest = dataset
  train_files = schema.split_files(data_dir, manifest, "train")
  num_items = manifest["num_items"]
  model = floor_registry.build_floor(name, train_files, num_items, **params)
  sessions, times = read_training_split(train_files)
  assert any(len(set(s)) < len(s) for s in sessions), "training sessions should repeat items"
  batch = synthetic.first_batch(data_dir, manifest, "test", 10)
  scores = model.score_heads(batch)[0]["fused"].numpy()
  popularity = model.popularity.numpy().astype(np.float64)
  _, prefixes = synthetic.numpy_prefix_rows(batch)
  assert any(len(set(p)) < len(p) for p in prefixes), "the prefixes should repeat items"
  counts = np.bincount(np.concatenate(sessions), minlength=num_items)
  idf = np.log(len(sessions) / np.maximum(counts, 1))
  compared = 0
  for row, prefix in zip(scores, prefixes):
    prefix = [int(i) for i in prefix]
    if name == "session_knn":
      expected, ambiguous = vsknn_reference(prefix, sessions, times, params, idf)
    else:
      expected, ambiguous = stan_reference(prefix, sessions, times, params, num_items)
    if ambiguous:
      continue
    compared += 1
    expected = expected / max(expected.max(), 1e-300) + popularity
    np.testing.assert_allclose(row[1:], expected[1:], rtol=1e-4, atol=1e-6)
    assert row[0] == NEG_INF
  print(f"{compared} of {len(prefixes)} prefixes compared")
  assert compared >= 0.5 * len(prefixes)


@pytest.mark.parametrize("name", ["session_knn", "stan"])
def test_scoring_in_chunks_of_prefixes_changes_nothing(dataset, name, monkeypatch):
  data_dir, manifest = dataset
  model = floor_registry.build_floor(name, schema.split_files(data_dir, manifest, "train"),
                                     manifest["num_items"], neighbours=5)
  batch = synthetic.first_batch(data_dir, manifest, "test", 10)
  whole = model.score_heads(batch)[0]["fused"].numpy()
  monkeypatch.setattr(neighbourhood, "MAX_VOTE_SLOTS", 3 * 5)  # 3 prefixes a chunk
  chunked = tf.function(lambda b: model.score_heads(b)[0]["fused"])(batch).numpy()
  assert len(whole) > 3 and len(whole) % 3 != 0
  np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-9)
