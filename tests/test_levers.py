"""The levers of the mechanism study (issue 32): each flag's default is the
paper, and each changes what it says (full softmax plus a hard term, the
competence gate, the annealed uniform share, the false-negative guard)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from alterrec_tf import config as alter_config
from alterrec_tf.data import cooccurrence
from alterrec_tf.data import windows as alter_data
from alterrec_tf.data.windows import scored_positions
from alterrec_tf.formats import schema
from alterrec_tf.models import negatives, registry
from alterrec_tf.models import partner as alter_partner
from alterrec_tf.models.alterrec import AlterRec
from alterrec_tf.models.baselines import floors
from alterrec_tf.models.contract import ID_PHASE, TEXT_PHASE
from alterrec_tf.models.settings import ModelSettings
from alterrec_tf.training import schedule
from tests import synthetic
from tests.test_model import NUM_ITEMS, small_config, text_table, window_batch


def _model(**changes):
  model = AlterRec(ModelSettings.of(small_config(dropout=0.0, **changes)), NUM_ITEMS,
                   text_table())
  model.build_all()
  return model


def test_defaults_are_the_paper():
  config = alter_config.TrainConfig()
  assert (config.softmax, config.hard_negative_gate, config.random_share_decay_epochs,
          config.false_negative_cosine, config.false_negative_cooccurrence) == (
              "sampled", 0.0, 0, 0.0, 0)
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
  got, _ = alter_partner.partner_signal(model, "id", batch[alter_data.ITEM_IDS], positions, targets,
                                  tf.constant([0, 0]))
  unit = text_table() / np.maximum(np.linalg.norm(text_table(), axis=1, keepdims=True), 1e-12)
  cosines = np.einsum("pd,pkd->pk", unit[targets.numpy()], unit[got.numpy()])
  kept = got.numpy() != 0
  assert kept.any() and (~kept).any()
  assert (cosines[kept] < 0.5).all()


def _brute_force_partners(sessions, num_items, top_n):
  """Each item's top_n partners by shared sessions (ties: lower index), by loops."""
  shared = np.zeros([num_items, num_items], np.int64)
  for session in sessions:
    items = sorted(set(int(i) for i in session) - {0})
    for a in items:
      for b in items:
        if a != b:
          shared[a, b] += 1
  table = np.full([num_items, top_n], num_items)
  for item in range(num_items):
    partners = [b for b in np.argsort(-shared[item], kind="stable") if shared[item, b] > 0]
    table[item, :len(partners[:top_n])] = partners[:top_n]
  return np.sort(table, axis=1)


def test_cooccurrence_lists_count_shared_sessions_once_each():
  sessions = [np.array([1, 2, 3, 2]), np.array([1, 2]), np.array([3, 4, 0, 0]),
              np.array([5]), np.array([1, 4, 2])]
  keys, counts = cooccurrence.pair_counts(sessions, 6)
  pairs = {(int(k) // 6, int(k) % 6): int(c) for k, c in zip(keys, counts)}
  # (1, 2) share three sessions; a repeated item or padding adds nothing
  assert pairs == {(1, 2): 3, (1, 3): 1, (2, 3): 1, (3, 4): 1, (1, 4): 1, (2, 4): 1}
  table = cooccurrence.top_cooccurring(sessions, 6, 2)
  np.testing.assert_array_equal(table, [[6, 6], [2, 3], [1, 3], [1, 2], [1, 2], [6, 6]])
  assert table.dtype == np.int32


def test_cooccurrence_lists_match_brute_force_also_across_chunks(monkeypatch):
  rng = np.random.default_rng(3)
  sessions = [rng.integers(0, 15, size=rng.integers(1, 9)) for _ in range(200)]
  expected = _brute_force_partners(sessions, 15, 4)
  np.testing.assert_array_equal(cooccurrence.top_cooccurring(sessions, 15, 4), expected)
  monkeypatch.setattr(cooccurrence, "PAIRS_PER_CHUNK", 7)  # reduce and merge often
  np.testing.assert_array_equal(cooccurrence.top_cooccurring(sessions, 15, 4), expected)


def test_cooccurrence_guard_drops_the_targets_listed_partners():
  lists = np.array([[7, 7], [2, 3], [1, 7], [1, 7], [7, 7], [7, 7], [7, 7]], np.int32)
  got = negatives.drop_listed_negatives(tf.constant([[2, 3, 4, 6], [1, 2, 3, 6]]),
                                        tf.constant([1, 4]), tf.constant(lists)).numpy()
  np.testing.assert_array_equal(got, [[0, 0, 4, 6], [1, 2, 3, 6]])  # item 4: no list


def test_cooccurrence_guarded_model_never_draws_a_listed_partner():
  rng = np.random.default_rng(0)
  sessions = [rng.integers(1, NUM_ITEMS, size=6) for _ in range(60)]
  lists = cooccurrence.top_cooccurring(sessions, NUM_ITEMS, 5)
  batch = window_batch([6, 7, 8])
  positions, targets = scored_positions(batch)

  def hard_negatives(guard):
    keras.utils.set_random_seed(0)  # the same weights with and without the guard
    model = AlterRec(ModelSettings.of(small_config(
        dropout=0.0, k1=1, k2=30, false_negative_cooccurrence=guard,
        random_negative_share=0.0)), NUM_ITEMS, text_table(),
        partner_lists=lists if guard else None)
    model.build_all()
    model.hard_negatives.assign(1)
    return alter_partner.partner_signal(model, "id", batch[alter_data.ITEM_IDS], positions,
                                  targets, tf.constant([0, 0]))[0].numpy()

  guarded, plain = hard_negatives(5), hard_negatives(0)
  listed = np.array([[item in lists[target] for item in row]
                     for row, target in zip(plain, targets.numpy())])
  assert listed.any() and (plain != 0).all()
  np.testing.assert_array_equal(guarded, np.where(listed, 0, plain))
  with pytest.raises(ValueError, match="partner lists"):
    AlterRec(ModelSettings.of(small_config(false_negative_cooccurrence=5)), NUM_ITEMS,
             text_table())


def test_registry_counts_the_training_sessions_for_the_cooccurrence_guard(tmp_path):
  manifest = synthetic.write_dataset(str(tmp_path), num_items=30, num_sessions=30,
                                     max_session_length=10)
  train_files = schema.split_files(str(tmp_path), manifest, "train")
  config = small_config(max_len=8, embedding_dim=8, num_layers=1, seen_items="exclude",
                        false_negative_cooccurrence=4)
  text = schema.load_text_embeddings(str(tmp_path), manifest)
  model = registry.build_model(config, manifest, text, train_files=train_files)
  expected = cooccurrence.top_cooccurring(floors.read_sessions(train_files),
                                          manifest["num_items"], 4)
  np.testing.assert_array_equal(model.partner_lists.numpy(), expected)
  assert (expected < manifest["num_items"]).any()
  with pytest.raises(ValueError, match="train_files"):
    registry.build_model(config, manifest, text)


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
                                         ("false_negative_cooccurrence", -1),
                                         ("hard_negative_gate", -1.0),
                                         ("random_share_decay_epochs", -2)])
def test_lever_flags_out_of_range_are_refused(flag, value):
  with pytest.raises(alter_config.ConfigError, match=f"--{flag}"):
    alter_config.check_flags(alter_config.TrainConfig(**{flag: value}))
  with pytest.raises(alter_config.ConfigError, match="score_chunk_size"):
    alter_config.check_flags(alter_config.TrainConfig(softmax="full", score_chunk_size=100))
