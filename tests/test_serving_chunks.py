"""The serving graph's chunked top k (--serving_chunk_size), its one-pass
fast path for small requests and its stacked session encoders: the lists of
brute force over the whole catalogue, ties included, and the Keras layers'
session vectors.

Tie order (stated in `serving.module`): equal scores are listed by lower item
index, as tf.math.top_k over the whole catalogue lists them. The catalogue
here is built so that ties are exact in float32 (small integer item vectors,
sessions of 1, 2 or 4 items read by a mean encoder, tower scales 1 and 1/2:
every score is a dyadic rational), so any order other than by index would
show.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from alterrec_tf.models import layers
from alterrec_tf.serving import encoders as serving_encoders
from alterrec_tf.serving import module as serving

NUM_ITEMS = 23  # V, padding included: no chunk size below divides it but 1
DIMS = (3, 2)  # the two towers' widths
WIDTH = sum(DIMS)
SCALES = (1.0, 0.5)
MAX_LEN = 4
# request rows (0 = padding, >= NUM_ITEMS: unknown and ignored)
SESSIONS = [
    [3],
    [5, 7],
    [1, 2, 3, 4],
    [],  # empty: the most popular items
    [0, 9, 0, 11],  # gappy: the session [9, 11]
    [12, 13, 14, 15, 16, 17, 18, 19],  # longer than MAX_LEN: the last 4 are read
    [99, 4, 250],  # unknown ids ignored: the session [4]
    [5],  # a row of item 5, whose vector items 12 and 19 share
]


def _catalogue(width=WIDTH):
  """(item matrix float32 [V, width], popularity [V]) full of exact ties."""
  rng = np.random.default_rng(0)
  matrix = rng.integers(-1, 3, size=(NUM_ITEMS, width)).astype(np.float32)
  matrix[[12, 19]] = matrix[5]  # the same vector in three chunks
  matrix[0] = 0.0
  popularity = rng.integers(0, 4, size=NUM_ITEMS).astype(np.float32)
  popularity[0] = 0.0
  return matrix, popularity


def _vocab(tmp_path) -> str:
  path = tmp_path / serving.VOCAB_ASSET
  path.write_text("".join(f"{i}\t{'[PAD]' if i == 0 else f'SKU{i}'}\t\n"
                          for i in range(NUM_ITEMS)))
  return str(path)


def _module(tmp_path, chunk_size, exclude_session_items=True, encoders=None,
            fast_path_batch=serving.FAST_PATH_BATCH, max_len=MAX_LEN, k=5,
            stack_encoders=True, dims=DIMS):
  matrix, popularity = _catalogue(sum(dims))
  encoders = encoders or [layers.MeanSessionEncoder(name=f"{name}_sessions")
                          for name in ("id", "text")]
  parts = [serving.TowerPart(name, encoder, dim, scale, NUM_ITEMS)
           for name, encoder, dim, scale in zip(("id", "text"), encoders, dims, SCALES)]
  return serving.ServingModule(matrix, parts, popularity, _vocab(tmp_path), max_len, k,
                               exclude_session_items, chunk_size=chunk_size,
                               fast_path_batch=fast_path_batch,
                               stack_encoders=stack_encoders)


def _request(sessions=SESSIONS):
  width = max(len(s) for s in sessions)
  request = np.zeros([len(sessions), width], np.int64)
  for row, items in enumerate(sessions):
    request[row, :len(items)] = items
  return request


def _brute_force(sessions, k, exclude_session_items):
  """(ids [N, k], scores [N, k]) by numpy over the whole catalogue: mean of the
  last MAX_LEN known items per tower, scaled; popularity for an empty session;
  the request's items at NEG_INF; padding below all; ties by lower index."""
  matrix, popularity = _catalogue()
  k = min(k, NUM_ITEMS - 1)
  ids, values = [], []
  for items in sessions:
    known = [i for i in items if 0 < i < NUM_ITEMS]
    if known:
      mean = matrix[known[-MAX_LEN:]].mean(axis=0)
      query = np.concatenate([mean[:DIMS[0]] * SCALES[0], mean[DIMS[0]:] * SCALES[1]])
      scores = matrix @ query
    else:
      scores = popularity.copy()
    if exclude_session_items:
      scores[known] = serving.NEG_INF
    scores[0] = serving.PADDING_SCORE
    order = np.lexsort((np.arange(NUM_ITEMS), -scores))[:k]
    ids.append(order)
    values.append(scores[order])
  return np.array(ids), np.array(values, np.float32)


def _top_k(module, request, k):
  """The top_k signature's outputs (traced once per module)."""
  if not hasattr(module, "_test_top_k"):
    module._test_top_k = module.signatures()[serving.SIGNATURE_TOP_K]
  out = module._test_top_k(item_ids=tf.constant(request), k=tf.constant(k, tf.int32))
  return {name: value.numpy() for name, value in out.items()}


@pytest.mark.parametrize("chunk_size", [0, 1, 4, 7, NUM_ITEMS - 1, NUM_ITEMS])
@pytest.mark.parametrize("exclude_session_items", [True, False])
def test_chunked_top_k_equals_brute_force_ties_by_lower_index(tmp_path, chunk_size,
                                                              exclude_session_items):
  module = _module(tmp_path, chunk_size, exclude_session_items)
  request = _request()
  for k in (1, 5, NUM_ITEMS - 2, NUM_ITEMS - 1, 50):  # 50: clipped to V - 1
    out = _top_k(module, request, k)
    ids, values = _brute_force(SESSIONS, k, exclude_session_items)
    np.testing.assert_array_equal(out[serving.OUTPUT_INDICES], ids, err_msg=f"k={k}")
    np.testing.assert_array_equal(out[serving.OUTPUT_SCORES], values, err_msg=f"k={k}")
    assert out[serving.OUTPUT_FALLBACK].tolist() == [len(s) == 0 for s in SESSIONS]
    assert out[serving.OUTPUT_IGNORED].tolist() == [
        sum(1 for i in s if i >= NUM_ITEMS) for s in SESSIONS]
    assert not (out[serving.OUTPUT_INDICES] == 0).any()  # padding is never listed
    expected_raw = np.vectorize(lambda i: f"SKU{i}".encode())(ids)
    np.testing.assert_array_equal(out[serving.OUTPUT_ITEM_IDS], expected_raw)


def test_chunked_ties_span_chunks_and_excluded_items_stay_out(tmp_path):
  # items 5, 12 and 19 share a vector (chunks of 7: three different chunks)
  out = _top_k(_module(tmp_path, 7), _request([[12, 3], [1]]), NUM_ITEMS - 1)
  ids, scores = out[serving.OUTPUT_INDICES], out[serving.OUTPUT_SCORES]
  first = ids[1].tolist()
  assert first.index(5) < first.index(12) < first.index(19)
  assert scores[1][first.index(5)] == scores[1][first.index(19)]
  # the session's own items are listed last, at NEG_INF (k = V - 1 lists them)
  assert ids[0][-2:].tolist() == [3, 12] and (scores[0][-2:] == serving.NEG_INF).all()
  assert (scores[0][:-2] > serving.NEG_INF).all()


def test_empty_session_ranks_by_popularity_in_chunks(tmp_path):
  _, popularity = _catalogue()
  out = _top_k(_module(tmp_path, 4), _request([[], [0, 0]]), 10)
  expected = np.lexsort((np.arange(NUM_ITEMS), -popularity))
  expected = [i for i in expected if i != 0][:10]
  assert out[serving.OUTPUT_INDICES].tolist() == [expected, expected]
  assert out[serving.OUTPUT_FALLBACK].tolist() == [True, True]


def test_k_zero_gives_empty_lists(tmp_path):
  out = _top_k(_module(tmp_path, 4), _request([[3], []]), 0)
  assert out[serving.OUTPUT_INDICES].shape == (2, 0)


def test_chunked_export_loads_and_serves_the_same_lists(tmp_path):
  module = _module(tmp_path, 7)
  path = str(tmp_path / "export")
  tf.saved_model.save(module, path, signatures=module.signatures())
  loaded = tf.saved_model.load(path)
  request = _request()
  out = loaded.signatures[serving.SIGNATURE_DEFAULT](item_ids=tf.constant(request))
  ids, values = _brute_force(SESSIONS, 5, True)
  np.testing.assert_array_equal(out[serving.OUTPUT_INDICES].numpy(), ids)
  np.testing.assert_array_equal(out[serving.OUTPUT_SCORES].numpy(), values)
  assert out[serving.OUTPUT_INDICES].shape[1] == 5  # the fixed k is static
  raw = np.vectorize(lambda i: f"SKU{i}".encode() if i else b"")(request)
  out = loaded.signatures[serving.SIGNATURE_RAW](raw_item_ids=tf.constant(raw))
  np.testing.assert_array_equal(out[serving.OUTPUT_INDICES].numpy()[:, :5], ids)


def _transformers(dims=(4, 4), num_layers=2, num_heads=2, seed=3):
  """Untrained Transformer session encoders (dropout 0.1, off at inference) with
  random LayerNorm weights too, so that every weight matters."""
  keras.utils.set_random_seed(seed)
  encoders = [layers.TransformerSessionEncoder(20, dim, num_layers, num_heads, 0.1,
                                               name=f"{name}_sessions")
              for name, dim in zip(("id", "text"), dims)]
  rng = np.random.default_rng(seed)
  for encoder in encoders:
    for weight in encoder.weights:
      if "gamma" in weight.path or "beta" in weight.path:
        weight.assign(rng.normal(1.0 if "gamma" in weight.path else 0.0, 0.3,
                                 weight.shape).astype(np.float32))
  return encoders


@pytest.mark.parametrize("towers", [1, 2])
def test_stacked_transformer_equals_the_keras_encoders(towers):
  encoders = _transformers()[:towers]
  stacked = serving_encoders.StackedTransformer.from_encoders(encoders)
  rng = np.random.default_rng(0)
  lengths = np.array([1, 13, 5, 7, 0, 13, 2])  # 0: an empty row (masked everywhere)
  mask = np.arange(13)[None, :] < lengths[:, None]
  vectors = rng.normal(size=(towers, len(lengths), 13, 4)).astype(np.float32)
  vectors *= mask[None, :, :, None]
  last = np.maximum(lengths - 1, 0)
  out = stacked.last_vectors(tf.constant(vectors), tf.constant(mask),
                             tf.constant(last, tf.int32)).numpy()
  assert out.shape == (towers, len(lengths), 4)
  for tower, encoder in enumerate(encoders):
    prefixes = encoder(tf.constant(vectors[tower]), tf.constant(mask), training=False).numpy()
    expected = prefixes[np.arange(len(lengths)), last]
    real = lengths > 0
    np.testing.assert_allclose(out[tower][real], expected[real], rtol=1e-5, atol=1e-5)


def test_only_transformers_of_one_shape_are_stacked():
  mean = layers.MeanSessionEncoder(name="id_sessions")
  assert serving_encoders.StackedTransformer.from_encoders([mean, mean]) is None
  assert serving_encoders.StackedTransformer.from_encoders(_transformers((4, 6))) is None
  assert serving_encoders.StackedTransformer.from_encoders(_transformers()) is not None


def test_stacked_and_keras_encoders_serve_the_same_lists(tmp_path):
  encoders = _transformers()
  rng = np.random.default_rng(4)
  sessions = [list(rng.integers(1, NUM_ITEMS, size=n)) for n in rng.integers(0, 21, size=20)]
  request = _request(sessions)
  outputs = []
  for stack_encoders in (True, False):
    module = _module(tmp_path, 0, encoders=encoders, max_len=20, stack_encoders=stack_encoders,
                     dims=(4, 4))
    assert bool(module.stacked_encoders) == stack_encoders
    assert len(module.session_encoders) == (0 if stack_encoders else 2)
    # 20 sessions: the length buckets; one at a time: the one-pass path
    outputs.append([_top_k(module, request, NUM_ITEMS - 1)] + [
        _top_k(module, request[row:row + 1], NUM_ITEMS - 1) for row in range(3)])
  for stacked, keras_layers in zip(*outputs):
    np.testing.assert_allclose(stacked[serving.OUTPUT_SCORES],
                               keras_layers[serving.OUTPUT_SCORES], rtol=1e-5, atol=1e-5)


def test_one_pass_fast_path_equals_the_length_buckets(tmp_path):
  # Transformer encoders (untrained): max_len 20 gives buckets <= 8, 9..16, 17..20
  encoders = _transformers(DIMS, num_layers=1, num_heads=1)
  rng = np.random.default_rng(1)
  sessions = [list(rng.integers(1, NUM_ITEMS, size=n)) for n in rng.integers(0, 21, size=12)]
  request = _request(sessions)
  outputs = {}
  for fast_path_batch in (0, 100):  # 0: always bucketed; 100: always one pass
    module = _module(tmp_path, 0, encoders=encoders, fast_path_batch=fast_path_batch,
                     max_len=20)
    outputs[fast_path_batch] = _top_k(module, request, NUM_ITEMS - 1)
    single = [_top_k(module, request[row:row + 1], NUM_ITEMS - 1)
              for row in range(len(sessions))]
    for row, out in enumerate(single):  # one session alone = its row of the batch
      np.testing.assert_allclose(out[serving.OUTPUT_SCORES][0],
                                 outputs[fast_path_batch][serving.OUTPUT_SCORES][row],
                                 rtol=1e-5, atol=1e-5)
  bucketed, one_pass = outputs[0], outputs[100]
  np.testing.assert_allclose(one_pass[serving.OUTPUT_SCORES],
                             bucketed[serving.OUTPUT_SCORES], rtol=1e-5, atol=1e-5)
  same = one_pass[serving.OUTPUT_INDICES] == bucketed[serving.OUTPUT_INDICES]
  assert same.mean() > 0.99  # only near-ties may swap


def test_negative_chunk_size_is_refused(tmp_path):
  with pytest.raises(ValueError, match="chunk_size"):
    _module(tmp_path, -1)
