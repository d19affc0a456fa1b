"""The per-prefix reference path gives the same loss and gradients as one pass.

`per_prefix.expand_to_prefixes` turns a window batch into one padded row per
scored prefix (the authors' input format); the one-pass path reads every
prefix vector from one causal pass per window. With dropout off, both must
give the same negatives, loss and gradients of the trained tower.
"""

import numpy as np
import pytest
import tensorflow as tf

from alterrec_tf.config import TrainConfig
from alterrec_tf.data import per_prefix
from alterrec_tf.data import windows as alter_data
from alterrec_tf.models.alterrec import AlterRec
from alterrec_tf.models.names import ALTERREC_VARIANTS
from alterrec_tf.models.settings import ModelSettings

NUM_ITEMS = 40
MAX_LEN = 8
SEED = tf.constant([3, 7], tf.int32)


def _window_batch(lengths, seed=0, stride=3):
  rng = np.random.default_rng(seed)
  windows = [alter_data.session_windows(
      tf.constant(rng.integers(1, NUM_ITEMS, n), tf.int64), tf.constant(1, tf.int64),
      MAX_LEN, stride) for n in lengths]
  return {key: tf.concat([w[key] for w in windows], 0) for key in windows[0]}


def _model(encoder, model_name="alterrec"):
  config = TrainConfig(embedding_dim=16, max_len=MAX_LEN, k1=2, k2=12, p=2, dropout=0.0,
                       id_encoder=encoder, text_encoder=encoder, model=model_name,
                       num_layers=2, num_heads=2, seed=1)
  table = np.random.default_rng(5).normal(size=(NUM_ITEMS, 12)).astype(np.float32)
  table[0] = 0.0
  model = AlterRec(ModelSettings.of(config), NUM_ITEMS, table, ALTERREC_VARIANTS[model_name])
  model.build_all()
  return model


def test_expansion_rows_are_the_padded_prefixes_in_train_step_order():
  batch = _window_batch([3, 12, 2, 20])  # sessions shorter and longer than max_len
  expanded = per_prefix.expand_to_prefixes(batch)
  ids, targets, mask = (batch[k].numpy() for k in (
      alter_data.ITEM_IDS, alter_data.TARGET_IDS, alter_data.TARGET_MASK))
  rows = np.argwhere(mask)
  assert expanded[alter_data.ITEM_IDS].shape == (len(rows), MAX_LEN)
  np.testing.assert_array_equal(expanded[alter_data.TARGET_MASK].numpy().sum(1), 1)
  for r, (w, j) in enumerate(rows):
    want = np.zeros(MAX_LEN, np.int32)
    want[:j + 1] = ids[w, :j + 1]
    np.testing.assert_array_equal(expanded[alter_data.ITEM_IDS][r].numpy(), want)
    assert expanded[alter_data.TARGET_MASK][r, j]
    assert expanded[alter_data.TARGET_IDS][r, j] == targets[w, j]
  assert int(per_prefix.num_prefixes(expanded)) == int(mask.sum())
  # inside tf.function and tf.data, with an unknown batch size
  traced = tf.function(per_prefix.expand_to_prefixes, input_signature=[{
      k: tf.TensorSpec([None, MAX_LEN], v.dtype) for k, v in batch.items()}])
  for key, value in traced(batch).items():
    np.testing.assert_array_equal(value.numpy(), expanded[key].numpy())
  mapped = next(iter(tf.data.Dataset.from_tensors(batch).map(per_prefix.expand_to_prefixes)))
  np.testing.assert_array_equal(mapped[alter_data.ITEM_IDS].numpy(),
                                expanded[alter_data.ITEM_IDS].numpy())
  # a batch trimmed to its longest window, padded back to max_len per prefix
  trimmed = {k: v[:, :5] for k, v in _window_batch([3, 2, 4]).items()}
  padded = per_prefix.expand_to_prefixes(trimmed, max_len=MAX_LEN)
  assert padded[alter_data.ITEM_IDS].shape == (6, MAX_LEN)
  narrow = per_prefix.expand_to_prefixes(trimmed)
  np.testing.assert_array_equal(padded[alter_data.ITEM_IDS].numpy()[:, :5],
                                narrow[alter_data.ITEM_IDS].numpy())
  assert not padded[alter_data.ITEM_IDS].numpy()[:, 5:].any()


@pytest.mark.parametrize("encoder", ["transformer", "mean"])
@pytest.mark.parametrize("hard", [False, True])
def test_same_loss_and_gradients_from_windows_and_from_prefixes(encoder, hard):
  model = _model(encoder)
  model.hard_negatives.assign(int(hard))
  batch = _window_batch([3, 12, 2, 20, 6], seed=int(hard))
  expanded = per_prefix.expand_to_prefixes(batch, max_len=MAX_LEN)
  step = per_prefix.tower_loss_and_gradients
  for name in ("id", "text"):
    loss, grads, negatives = step(model, name, batch, SEED)
    ref_loss, ref_grads, ref_negatives = step(model, name, expanded, SEED)
    np.testing.assert_array_equal(negatives.numpy(), ref_negatives.numpy())
    np.testing.assert_allclose(loss.numpy(), ref_loss.numpy(), rtol=1e-5)
    variables = model.tower(name).trainable_variables
    assert len(grads) == len(variables) and all(g is not None for g in grads)
    # atol relative to the tower's largest gradient: some gradients are zero
    # analytically (e.g. attention key biases) and only rounding noise here.
    scale = max(float(np.abs(r.numpy()).max()) for r in ref_grads)
    for variable, g, ref in zip(variables, grads, ref_grads):
      np.testing.assert_allclose(g.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5 * scale,
                                 err_msg=f"{name} tower, {variable.path}")


def test_same_loss_with_augmented_positives():
  model = _model("transformer", model_name="alterrec_aug")
  model.hard_negatives.assign(1)
  batch = _window_batch([9, 14, 4])
  loss, _, _ = per_prefix.tower_loss_and_gradients(model, "text", batch, SEED)
  ref_loss, _, _ = per_prefix.tower_loss_and_gradients(
      model, "text", per_prefix.expand_to_prefixes(batch), SEED)
  np.testing.assert_allclose(loss.numpy(), ref_loss.numpy(), rtol=1e-5)


def test_train_step_runs_on_expanded_batches():
  model = _model("transformer")
  model.hard_negatives.assign(1)
  batch = per_prefix.expand_to_prefixes(_window_batch([5, 11]))
  before = [v.numpy().copy() for v in model.text_tower.trainable_variables]
  model.phase.assign(1)
  out = model.train_step(batch)
  assert np.isfinite(float(out["loss"]))
  after = model.text_tower.trainable_variables
  assert any(not np.allclose(b, a.numpy()) for b, a in zip(before, after))


def test_trimmed_window_batch_matches_prefixes_padded_to_max_len():
  """Batches trimmed to their longest window (data bucketing) vs the reference's
  rows padded to max_len: same loss and gradients."""
  model = _model("transformer")
  model.hard_negatives.assign(1)
  full = _window_batch([3, 5, 2, 4], seed=3)
  longest = int(np.max(np.sum(full[alter_data.ITEM_IDS].numpy() != 0, axis=1)))
  trimmed = {k: v[:, :longest] for k, v in full.items()}
  expanded = per_prefix.expand_to_prefixes(trimmed, max_len=MAX_LEN)
  assert longest < MAX_LEN and expanded[alter_data.ITEM_IDS].shape[1] == MAX_LEN
  for name in ("id", "text"):
    loss, grads, _ = per_prefix.tower_loss_and_gradients(model, name, trimmed, SEED)
    ref_loss, ref_grads, _ = per_prefix.tower_loss_and_gradients(model, name, expanded, SEED)
    np.testing.assert_allclose(loss.numpy(), ref_loss.numpy(), rtol=1e-5)
    scale = max(float(np.abs(r.numpy()).max()) for r in ref_grads)
    for g, ref in zip(grads, ref_grads):
      np.testing.assert_allclose(g.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5 * scale)
