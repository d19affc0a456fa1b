"""The levers of the mechanism study (issue 32): each flag's default is the
paper, and each changes what it says (full softmax plus a hard term, the
competence gate, the annealed uniform share, the false-negative guard)."""

import numpy as np
import pytest
import tensorflow as tf

from alterrec_tf import config as alter_config
from alterrec_tf.data import windows as alter_data
from alterrec_tf.data.windows import scored_positions
from alterrec_tf.models import negatives
from alterrec_tf.models.alterrec import AlterRec
from alterrec_tf.models.contract import ID_PHASE, TEXT_PHASE
from alterrec_tf.models.settings import ModelSettings
from alterrec_tf.training import schedule
from tests.test_model import NUM_ITEMS, small_config, text_table, window_batch


def _model(**changes):
  model = AlterRec(ModelSettings.of(small_config(dropout=0.0, **changes)), NUM_ITEMS,
                   text_table())
  model.build_all()
  return model


def test_defaults_are_the_paper():
  config = alter_config.TrainConfig()
  assert (config.softmax, config.hard_negative_gate, config.random_share_decay_epochs,
          config.false_negative_cosine) == ("sampled", 0.0, 0, 0.0)
  assert _model().random_share is None  # no new variable unless annealing


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
def test_dynamic_mix_has_the_share_of_uniform_slots(share):
  hard = tf.constant(np.arange(100, 100 + 8 * 20).reshape(8, 20), tf.int32)
  mixed = negatives.mix_negatives_dynamic(hard, tf.constant([1, 2]), tf.constant(share),
                                          num_items=50).numpy()
  from_hard = mixed >= 100  # uniform ids are below num_items
  assert (from_hard.sum(axis=1) == 20 - round(share * 20)).all()
  for row, got in zip(hard.numpy(), mixed):
    assert set(got[got >= 100]) <= set(row)
    assert len(set(got[got >= 100])) == (got >= 100).sum()  # a subset, no repeats
  assert ((mixed[~from_hard] >= 1) & (mixed[~from_hard] < 50)).all()


def test_false_negative_guard_drops_negatives_close_to_the_target_by_text():
  unit = np.eye(6, dtype=np.float32)
  unit[3] = unit[1]  # item 3's text equals item 1's
  unit[4] = np.array([0.6, 0.8, 0, 0, 0, 0], np.float32)  # cosine 0.8 with item 1
  got = negatives.drop_close_negatives(tf.constant([[3, 4, 5], [3, 4, 5]]),
                                       tf.constant([1, 2]), tf.constant(unit), 0.75).numpy()
  np.testing.assert_array_equal(got, [[0, 0, 5], [3, 4, 5]])  # item 2: nothing close
  # padding (id 0) adds nothing to the sampled loss: same loss as without the ids
  logits = tf.constant(np.random.default_rng(0).normal(size=(1, 6)), tf.float32)
  logits = tf.concat([tf.fill([1, 1], -1e9), logits[:, 1:]], axis=1)
  np.testing.assert_allclose(
      negatives.sampled_softmax_loss(logits, tf.constant([1]), tf.constant([[0, 0, 5]])),
      negatives.sampled_softmax_loss(logits, tf.constant([1]), tf.constant([[5]])), rtol=1e-6)


def test_guarded_model_never_draws_a_close_negative():
  model = _model(k1=1, k2=30, false_negative_cosine=0.5, random_negative_share=0.0)
  batch = window_batch([6, 7, 8])
  positions, targets = scored_positions(batch)
  model.hard_negatives.assign(1)
  got, _ = model._partner_signal("id", batch[alter_data.ITEM_IDS], positions, targets,
                                 tf.constant([0, 0]))
  unit = text_table() / np.maximum(np.linalg.norm(text_table(), axis=1, keepdims=True), 1e-12)
  cosines = np.einsum("pd,pkd->pk", unit[targets.numpy()], unit[got.numpy()])
  kept = got.numpy() != 0
  assert kept.any() and (~kept).any()
  assert (cosines[kept] < 0.5).all()


@pytest.mark.parametrize("weight", [0.0, 0.7])
def test_full_softmax_adds_the_hard_term_in_hard_phases_only(weight):
  model = _model(softmax="full", hard_negative_weight=weight)
  batch = window_batch([6, 7])
  positions, targets = scored_positions(batch)
  seed = tf.constant([0, 3])
  for hard in (0, 1):
    model.hard_negatives.assign(hard)
    loss, _, negative_ids = model.loss_and_gradients("id", batch, seed, training=False)
    logits = model.prefix_heads(batch[alter_data.ITEM_IDS], positions)["id"]
    expected = negatives.full_softmax_loss(logits, targets)
    if hard:
      expected += weight * negatives.sampled_softmax_loss(logits, targets, negative_ids)
    np.testing.assert_allclose(loss.numpy(), expected.numpy(), rtol=1e-5)


def test_gate_keeps_random_negatives_until_the_partner_is_competent():
  history = [{"valid/id/hits@20": 0.40, "valid/text/hits@20": 0.30}]
  assert schedule.partner_is_competent(history, ID_PHASE, 0.0)
  assert not schedule.partner_is_competent(history, ID_PHASE, 0.9)  # text 0.30 < 0.36
  assert schedule.partner_is_competent(history, TEXT_PHASE, 0.9)  # id 0.40 >= 0.27
  assert schedule.partner_is_competent(history, ID_PHASE, 0.7)
  assert not schedule.partner_is_competent([], ID_PHASE, 0.5)
  config = small_config(hard_negative_gate=0.9)
  model = _model()
  callback = schedule.PhaseSchedule(config, lambda: history)
  callback.set_model(model)
  logs = {}
  callback.on_epoch_begin(2, logs)  # a hard ID epoch (m_random=1)
  callback.on_epoch_end(2, logs)
  assert int(model.phase.numpy()) == ID_PHASE and int(model.hard_negatives.numpy()) == 0
  assert logs["gated"] == 1.0
  callback.on_epoch_begin(3, logs)  # a hard text epoch: the ID partner is competent
  assert int(model.hard_negatives.numpy()) == 1


def test_uniform_share_anneals_linearly_to_zero():
  config = small_config(random_negative_share=0.5, random_share_decay_epochs=4)
  assert [schedule.random_share_at(n, config) for n in range(6)] == [
      0.5, 0.375, 0.25, 0.125, 0.0, 0.0]
  model = _model(random_negative_share=0.5, random_share_decay_epochs=4)
  callback = schedule.PhaseSchedule(config)
  callback.set_model(model)
  callback.on_epoch_begin(4, {})  # m_random=1: epochs 2, 3 were hard
  assert float(model.random_share.numpy()) == pytest.approx(0.25)


@pytest.mark.parametrize("flag, value", [("false_negative_cosine", 1.5),
                                         ("hard_negative_gate", -1.0),
                                         ("random_share_decay_epochs", -2)])
def test_lever_flags_out_of_range_are_refused(flag, value):
  with pytest.raises(alter_config.ConfigError, match=f"--{flag}"):
    alter_config.check_flags(alter_config.TrainConfig(**{flag: value}))
  with pytest.raises(alter_config.ConfigError, match="score_chunk_size"):
    alter_config.check_flags(alter_config.TrainConfig(softmax="full", score_chunk_size=100))
