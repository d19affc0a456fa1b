"""Algorithm 1's schedule: which tower trains in each epoch, with which negatives,
and (reference-code option) each tower's learning-rate decay."""

import keras

from alterrec_tf.models.alterrec import ID_PHASE, TEXT_PHASE


def phase_for_epoch(epoch: int, config, tower_names):
  """(phase, hard_negatives) of a 0-based epoch under Algorithm 1.

  Epochs [0, m_random): ID with random negatives; [m_random, 2 m_random): text
  with random negatives; then ID and text alternate every m_gap epochs with the
  partner's hard negatives, ID first.
  """
  if len(tower_names) == 1:
    return (ID_PHASE if tower_names[0] == "id" else TEXT_PHASE), 0
  if epoch < config.m_random:
    return ID_PHASE, 0
  if epoch < 2 * config.m_random:
    return TEXT_PHASE, 0
  turn = (epoch - 2 * config.m_random) % (2 * config.m_gap)
  return (ID_PHASE if turn < config.m_gap else TEXT_PHASE), 1


class PhaseSchedule(keras.callbacks.Callback):
  """Sets the model's phase variables (no retracing) and, optionally, decays each
  tower's learning rate by `lr_decay` every `lr_decay_epochs_*` epochs it trained."""

  def __init__(self, config):
    super().__init__()
    self.config = config

  def on_epoch_begin(self, epoch, logs=None):
    model = self.model
    phase, hard = phase_for_epoch(epoch, self.config, model.tower_names)
    model.phase.assign(phase)
    model.hard_negatives.assign(hard)
    for name, every in (("id", self.config.lr_decay_epochs_id),
                        ("text", self.config.lr_decay_epochs_text)):
      if name not in model.tower_names:
        continue
      phase_of_tower = ID_PHASE if name == "id" else TEXT_PHASE
      trained = sum(phase_for_epoch(e, self.config, model.tower_names)[0] == phase_of_tower
                    for e in range(epoch))
      rate = self.config.learning_rate * self.config.lr_decay ** (trained // max(every, 1))
      model.optimizer_of(name).learning_rate.assign(rate)

  def on_epoch_end(self, epoch, logs=None):
    if logs is not None:
      logs["phase"] = float(self.model.phase.numpy())
      logs["hard_negatives"] = float(self.model.hard_negatives.numpy())
      for name in self.model.tower_names:
        logs[f"lr_{name}"] = float(self.model.optimizer_of(name).learning_rate.numpy())


