"""AlterRec model: prefix equivalence, phase gating, negatives, schedule."""

import numpy as np
import pytest
import tensorflow as tf

from alterrec_tf.config import TrainConfig
from alterrec_tf.data import windows as alter_data
from alterrec_tf.models import layers as alter_layers
from alterrec_tf.models import negatives
from alterrec_tf.models import partner as alter_partner
from alterrec_tf.models.alterrec import AlterRec
from alterrec_tf.models.contract import ID_PHASE, TEXT_PHASE
from alterrec_tf.models.names import ALTERREC_VARIANTS
from alterrec_tf.models.settings import ModelSettings
from alterrec_tf.training import schedule

NUM_ITEMS = 40
MAX_LEN = 8


def small_config(**changes):
  base = TrainConfig(embedding_dim=16, max_len=MAX_LEN, k1=2, k2=12, p=1, m_random=1,
                     m_gap=1, m_max=4, dropout=0.1, batch_size=8, verbose=0,
                     id_encoder="transformer", text_encoder="transformer")
  return base.replace(**changes)


def text_table(num_items=NUM_ITEMS, dim=12, seed=0):
  table = np.random.default_rng(seed).normal(size=(num_items, dim)).astype(np.float32)
  table[0] = 0.0
  return table


def window_batch(rows, seed=0):
  """A batch of windows from random sessions of the given lengths."""
  rng = np.random.default_rng(seed)
  windows = [alter_data.session_windows(
      tf.constant(rng.integers(1, NUM_ITEMS, n), tf.int64), tf.constant(1, tf.int64),
      MAX_LEN, 1) for n in rows]
  return {key: tf.concat([w[key] for w in windows], 0) for key in windows[0]}


@pytest.mark.parametrize("kind", ["mean", "transformer"])
def test_prefix_vector_from_full_pass_equals_encoder_on_prefix_alone(kind):
  encoder = alter_layers.make_session_encoder(kind, MAX_LEN, 16, 2, 2, 0.0, name="enc")
  table = tf.random.stateless_normal([NUM_ITEMS, 16], seed=[1, 2])
  session = tf.constant([[5, 9, 3, 17, 22, 8, 0, 0]])
  mask = alter_layers.padding_mask(session)
  full = encoder(tf.gather(table, session), mask, training=False)
  for t in range(6):
    prefix = tf.concat([session[:, :t + 1], tf.zeros([1, MAX_LEN - t - 1], tf.int32)], 1)
    alone = encoder(tf.gather(table, prefix), alter_layers.padding_mask(prefix), training=False)
    np.testing.assert_allclose(full[0, t].numpy(), alone[0, t].numpy(), atol=1e-5)
  if kind == "mean":
    np.testing.assert_allclose(full[0, 2].numpy(), tf.reduce_mean(
        tf.gather(table, [5, 9, 3]), 0).numpy(), atol=1e-6)


def test_windows_give_every_target_once_with_its_last_max_len_items():
  items = tf.range(1, 30, dtype=tf.int64)  # 29 items, longer than max_len + 1
  for stride in (1, 3, MAX_LEN):
    w = alter_data.session_windows(items, tf.constant(1, tf.int64), MAX_LEN, stride)
    targets = tf.boolean_mask(w[alter_data.TARGET_IDS], w[alter_data.TARGET_MASK]).numpy()
    assert sorted(targets.tolist()) == list(range(2, 30))
  w = alter_data.session_windows(items, tf.constant(1, tf.int64), MAX_LEN, 1)
  for inputs, targets, mask in zip(w[alter_data.ITEM_IDS].numpy(),
                                   w[alter_data.TARGET_IDS].numpy(),
                                   w[alter_data.TARGET_MASK].numpy()):
    for j in np.flatnonzero(mask):
      target = targets[j]
      context = inputs[:j + 1]
      expected = np.arange(max(1, target - MAX_LEN), target)
      np.testing.assert_array_equal(context, expected)
  # leave-one-out: only the last item is scored, with the last max_len items.
  w = alter_data.session_windows(items, tf.constant(28, tf.int64), MAX_LEN, 1)
  scored = tf.boolean_mask(w[alter_data.TARGET_IDS], w[alter_data.TARGET_MASK]).numpy()
  assert scored.tolist() == [29]


def _built_model(**changes):
  settings = ModelSettings.of(small_config(**changes))
  model = AlterRec(settings, NUM_ITEMS, text_table(), ALTERREC_VARIANTS[settings.model])
  model.build_all()
  return model


@pytest.mark.parametrize("phase,hard", [(ID_PHASE, 0), (TEXT_PHASE, 0), (ID_PHASE, 1),
                                        (TEXT_PHASE, 1)])
def test_frozen_tower_is_bit_identical_after_a_phase(phase, hard):
  model = _built_model()
  model.compile(jit_compile=False)
  model.phase.assign(phase)
  model.hard_negatives.assign(hard)
  active, frozen = ("id", "text") if phase == ID_PHASE else ("text", "id")
  frozen_before = [v.numpy().copy() for v in model.tower(frozen).variables]
  active_before = [v.numpy().copy() for v in model.tower(active).trainable_variables]
  batches = tf.data.Dataset.from_tensors(window_batch([5, 9, 12, 3])).repeat(3)
  model.fit(batches, epochs=1, verbose=0)
  for before, after in zip(frozen_before, model.tower(frozen).variables):
    np.testing.assert_array_equal(before, after.numpy())
  changed = [not np.array_equal(b, a.numpy())
             for b, a in zip(active_before, model.tower(active).trainable_variables)]
  assert all(changed)
  assert int(model.optimizer_of(frozen).iterations.numpy()) == 0
  assert int(model.optimizer_of(active).iterations.numpy()) == 3


def test_hard_negatives_are_partner_ranks_k1_to_k2():
  scores = np.random.default_rng(3).normal(size=(5, NUM_ITEMS)).astype(np.float32)
  scores[:, 0] = -1e9
  order = np.argsort(-scores, axis=1, kind="stable")
  for k1, p in ((4, 2), (0, 3), (2, 5)):
    top_scores, top_ids = tf.math.top_k(tf.constant(scores), k=15, sorted=False)
    hard, augmented = negatives.partner_ranking(top_scores, top_ids, k1=k1, p=p)
    # The negatives are the set of ranks k1..k2-1 (their order is free: the loss
    # sums over them); the augmented positives are the top p, best first.
    np.testing.assert_array_equal(np.sort(hard.numpy(), axis=1),
                                  np.sort(order[:, k1:15], axis=1))
    np.testing.assert_array_equal(augmented.numpy(), order[:, :p])
    assert not np.any(hard.numpy() == 0)


def test_loss_never_uses_the_target_as_a_negative():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, NUM_ITEMS)).astype(np.float32)
  targets = np.array([4, 7, 9])
  negative_ids = np.array([[4, 1, 2], [5, 6, 8], [9, 9, 3]])
  loss = negatives.sampled_softmax_loss(tf.constant(logits), tf.constant(targets),
                                        tf.constant(negative_ids)).numpy()
  expected = []
  for row, target, negs in zip(logits, targets, negative_ids):
    kept = [n for n in negs if n != target]
    z = np.concatenate([[row[target]], row[kept]])
    expected.append(-(row[target] - np.log(np.exp(z).sum())))
  np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)


def test_augmented_loss_adds_beta_weighted_positives_against_the_same_negatives():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, NUM_ITEMS)).astype(np.float32)
  targets, negs, aug = np.array([3, 5]), np.array([[10, 11], [12, 13]]), np.array([[3, 6], [7, 8]])
  loss = negatives.sampled_softmax_loss(tf.constant(logits), tf.constant(targets),
                                        tf.constant(negs), tf.constant(aug), beta=0.5).numpy()

  def ce(row, positive, negatives_row):
    z = np.concatenate([[row[positive]], row[negatives_row]])
    return np.log(np.exp(z).sum()) - row[positive]

  expected = [ce(logits[0], 3, negs[0]) + 0.5 * ce(logits[0], 6, negs[0]),  # 3 = target
              ce(logits[1], 5, negs[1]) + 0.5 * (ce(logits[1], 7, negs[1])
                                                 + ce(logits[1], 8, negs[1]))]
  np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)


def test_hard_negative_step_draws_negatives_from_the_partner():
  model = _built_model(k1=2, k2=6)
  batch = window_batch([6, 7])
  positions, targets = alter_data_positions(batch)
  partner = model.tower("text")
  matrix = partner.item_matrix()
  vectors = tf.gather_nd(partner.prefix_vectors(batch[alter_data.ITEM_IDS], matrix), positions)
  expected = np.argsort(-partner.scores(vectors, matrix).numpy(), axis=1, kind="stable")[:, 2:6]
  model.hard_negatives.assign(1)
  got, _ = alter_partner.partner_signal(model, "id", batch[alter_data.ITEM_IDS], positions, targets,
                                  tf.constant([0, 0]))
  np.testing.assert_array_equal(np.sort(got.numpy(), axis=1), np.sort(expected, axis=1))


@pytest.mark.parametrize("source", ["partner", "id"])
def test_augmented_positives_come_from_their_source_and_negatives_from_the_partner(source):
  model = _built_model(k1=2, k2=6, p=2, model="alterrec_aug", augmentation_source=source)
  batch = window_batch([6, 7])
  positions, targets = alter_data_positions(batch)
  ranks = {}
  for name in ("id", "text"):
    tower = model.tower(name)
    matrix = tower.item_matrix()
    vectors = tf.gather_nd(tower.prefix_vectors(batch[alter_data.ITEM_IDS], matrix),
                           positions)
    ranks[name] = np.argsort(-tower.scores(vectors, matrix).numpy(), axis=1, kind="stable")
  model.hard_negatives.assign(1)
  # the ID tower trains: negatives are always the text tower's ranks 2..5, the
  # augmented positives the text tower's top 2 (paper) or the ID tower's own (reference)
  negative_ids, augmented_ids = alter_partner.partner_signal(
      model, "id", batch[alter_data.ITEM_IDS], positions, targets, tf.constant([0, 0]))
  np.testing.assert_array_equal(np.sort(negative_ids.numpy(), axis=1),
                                np.sort(ranks["text"][:, 2:6], axis=1))
  expected_source = "text" if source == "partner" else "id"
  np.testing.assert_array_equal(augmented_ids.numpy(), ranks[expected_source][:, :2])


def alter_data_positions(batch):
  from alterrec_tf.data.windows import scored_positions
  return scored_positions(batch)


def test_schedule_follows_algorithm_1():
  config = small_config(m_random=2, m_gap=2, m_max=12)
  phases = [schedule.phase_for_epoch(e, config, ("id", "text")) for e in range(12)]
  i, t = ID_PHASE, TEXT_PHASE
  assert phases == [(i, 0), (i, 0), (t, 0), (t, 0), (i, 1), (i, 1), (t, 1), (t, 1),
                    (i, 1), (i, 1), (t, 1), (t, 1)]
  assert schedule.phase_for_epoch(5, config, ("text",)) == (t, 0)


def test_fused_score_is_alpha_weighted_sum_of_towers():
  model = _built_model(alpha=0.3, text_temperature=0.5)
  batch = window_batch([4, 6])
  heads, _ = model.score_heads(batch)
  np.testing.assert_allclose(heads["fused"].numpy(),
                             0.3 * heads["id"].numpy() + 0.7 * heads["text"].numpy(), rtol=1e-5)
  assert np.all(heads["fused"].numpy()[:, 0] < -1e8)  # padding is never ranked
