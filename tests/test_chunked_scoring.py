"""Scoring the catalogue in item chunks (--score_chunk_size): the same top-k
lists, ranks and hard negatives as the whole-catalogue path, and the same loss."""

import numpy as np
import pytest
import tensorflow as tf

from alterrec_tf.data import windows as alter_data
from alterrec_tf.data.windows import scored_positions
from alterrec_tf.formats import schema
from alterrec_tf.models import negatives, registry, scoring
from alterrec_tf.models import partner as alter_partner
from alterrec_tf.models.contract import ID_PHASE, TEXT_PHASE
from alterrec_tf.training import evaluation
from tests import synthetic
from tests.test_model import small_config

NUM_ITEMS = 57  # not a multiple of the chunk sizes below: a short last chunk


@pytest.mark.parametrize("chunk_size", [1, 7, 16, NUM_ITEMS])
def test_top_k_over_chunks_equals_top_k_ties_included(chunk_size):
  rng = np.random.default_rng(chunk_size)
  # small integers: many exact ties, which top_k breaks by lower index
  scores = tf.constant(rng.integers(-3, 4, size=(9, NUM_ITEMS)).astype(np.float32))
  lists = scoring.top_k_over_chunks(
      lambda offset, size: {"head": scores[:, offset:offset + size]}, NUM_ITEMS, 20,
      chunk_size)
  expected = tf.math.top_k(scores, k=20)
  np.testing.assert_array_equal(lists["head"][1].numpy(), expected.indices.numpy())
  np.testing.assert_array_equal(lists["head"][0].numpy(), expected.values.numpy())


def _dataset(tmp_path):
  data_dir = str(tmp_path / "data")
  manifest = synthetic.write_dataset(data_dir, num_items=NUM_ITEMS, num_sessions=60,
                                     max_session_length=20)
  return data_dir, manifest, schema.load_text_embeddings(data_dir, manifest)


def _model(name, manifest, text, chunk_size, seen_items="exclude", prefixes_per_batch=None,
           **changes):
  config = small_config(model=name, score_chunk_size=chunk_size, seen_items=seen_items,
                        **changes)
  return registry.build_model(config, manifest, text, prefixes_per_batch=prefixes_per_batch)


@pytest.mark.parametrize("name, seen_items", [
    ("alterrec", "exclude"), ("alterrec", "keep"), ("sasrec", "exclude"),
    ("nfrec_concat", "exclude"), ("fdsa", "keep")])
def test_chunked_evaluation_gives_the_same_ranks(tmp_path, name, seen_items):
  data_dir, manifest, text = _dataset(tmp_path)
  split = alter_data.load_split(data_dir, manifest, "test", small_config().max_len, 1)
  whole = _model(name, manifest, text, 0, seen_items)
  ranks = {}
  for chunk_size in (0, 5, 16):
    model = _model(name, manifest, text, chunk_size, seen_items)
    model.set_weights(whole.get_weights())
    evaluator = evaluation.Evaluator(model, (10, 20), 20, tfrs_metrics=False)
    assert evaluator.chunk_size == chunk_size
    metrics, ranks[chunk_size] = evaluator(split.batches(16), keep_ranks=True)
  assert set(ranks[0]) == set(ranks[5]) and len(ranks[0]["targets"]) > 50
  for head in ranks[0]:
    np.testing.assert_array_equal(ranks[5][head], ranks[0][head], err_msg=head)
    np.testing.assert_array_equal(ranks[16][head], ranks[0][head], err_msg=head)
  assert 0.0 < metrics["fused"]["hits@20"] <= 1.0


def _training_batch(data_dir, manifest):
  return synthetic.first_batch(data_dir, manifest, "train", small_config().max_len, 8)


@pytest.mark.parametrize("seen_items", ["exclude", "keep"])
def test_chunked_hard_negatives_are_the_same_partner_ranks(tmp_path, seen_items):
  data_dir, manifest, text = _dataset(tmp_path)
  batch = _training_batch(data_dir, manifest)
  positions, _ = scored_positions(batch)
  item_ids = batch[alter_data.ITEM_IDS]
  whole = _model("alterrec", manifest, text, 0, seen_items)
  chunked = _model("alterrec", manifest, text, 5, seen_items)
  chunked.set_weights(whole.get_weights())
  for name in ("id", "text"):
    expected = alter_partner.frozen_top_k(whole, name, item_ids, positions, 12, sorted_list=True)
    values, ids = alter_partner.frozen_top_k(chunked, name, item_ids, positions, 12,
                                       sorted_list=True)
    np.testing.assert_array_equal(ids.numpy(), expected[1].numpy())
    # A [P, C] matmul may round the last bits differently from a [P, V] one. A
    # score's rounding error scales with its dot product's terms, not with the
    # score: one near zero (the terms cancel) may differ by ~1e-6 of the largest.
    scale = float(np.abs(expected[0].numpy()).max())
    np.testing.assert_allclose(values.numpy(), expected[0].numpy(), rtol=1e-6, atol=1e-6 * scale)
    if seen_items == "exclude":  # a prefix's own items are never among them
      seen = chunked.seen_items_of(item_ids, positions).numpy()
      for row, prefix in zip(ids.numpy(), seen):
        assert not set(row) & (set(prefix) - {0})


@pytest.mark.parametrize("phase, hard", [(ID_PHASE, 0), (TEXT_PHASE, 1)])
def test_chunked_training_loss_reads_only_sampled_items_and_equals_the_whole(tmp_path, phase,
                                                                                hard):
  data_dir, manifest, text = _dataset(tmp_path)
  batch = _training_batch(data_dir, manifest)
  whole = _model("alterrec_aug", manifest, text, 0, prefixes_per_batch=40.0, dropout=0.0)
  chunked = _model("alterrec_aug", manifest, text, 5, prefixes_per_batch=40.0, dropout=0.0)
  chunked.set_weights(whole.get_weights())
  seed = tf.constant([0, 3], tf.int32)
  name = "id" if phase == ID_PHASE else "text"
  results = []
  for model in (whole, chunked):
    model.hard_negatives.assign(hard)
    results.append(model.loss_and_gradients(name, batch, seed, training=False))
  (loss, gradients, negatives), (chunk_loss, chunk_gradients, chunk_negatives) = results
  if hard:  # the same set of partner ranks (their order is free)
    np.testing.assert_array_equal(np.sort(chunk_negatives.numpy(), 1),
                                  np.sort(negatives.numpy(), 1))
  else:
    np.testing.assert_array_equal(chunk_negatives.numpy(), negatives.numpy())
  np.testing.assert_allclose(chunk_loss.numpy(), loss.numpy(), rtol=1e-5)
  for chunk_gradient, gradient in zip(chunk_gradients, gradients):
    np.testing.assert_allclose(tf.convert_to_tensor(chunk_gradient).numpy(),
                               tf.convert_to_tensor(gradient).numpy(), rtol=1e-4, atol=1e-6)


def test_chunked_training_runs_in_the_traced_train_step(tmp_path):
  """Hard phases of both towers through Keras' traced train function, with the
  catalogue larger than a chunk (the list length must survive the loop)."""
  data_dir, manifest, text = _dataset(tmp_path)
  batch = _training_batch(data_dir, manifest)
  model = _model("alterrec", manifest, text, 5)
  model.compile(jit_compile=False)
  model.hard_negatives.assign(1)
  for phase in (ID_PHASE, TEXT_PHASE):
    model.phase.assign(phase)
    history = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


def test_argpartition_selects_the_same_set_as_top_k():
  scores = tf.constant(np.random.default_rng(5).normal(size=(30, 500)).astype(np.float32))
  expected = tf.math.top_k(scores, k=120)
  values, ids = tf.function(lambda s: negatives.top_k_set(s, 120, "argpartition"))(scores)
  assert ids.shape == (30, 120)
  np.testing.assert_array_equal(np.sort(ids.numpy(), 1), np.sort(expected.indices.numpy(), 1))
  np.testing.assert_array_equal(np.sort(values.numpy(), 1), np.sort(expected.values.numpy(), 1))


def test_hard_negatives_by_argpartition_equal_those_by_top_k(tmp_path):
  data_dir, manifest, text = _dataset(tmp_path)
  batch = _training_batch(data_dir, manifest)
  seed = tf.constant([0, 3], tf.int32)
  models = [_model("alterrec", manifest, text, 0, hard_negative_selection=selection)
            for selection in ("top_k", "argpartition")]
  models[1].set_weights(models[0].get_weights())
  found = []
  for model in models:
    model.hard_negatives.assign(1)
    found.append(model.loss_and_gradients("id", batch, seed, training=False))
  np.testing.assert_array_equal(np.sort(found[1][2].numpy(), 1), np.sort(found[0][2].numpy(), 1))
  np.testing.assert_allclose(found[1][0].numpy(), found[0][0].numpy(), rtol=1e-6)
