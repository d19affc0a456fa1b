"""Algorithm 1's schedule: which tower trains in each epoch, with which negatives,
and the levers of the mechanism study: a competence gate on the partner, an
annealed uniform share and (reference-code option) each tower's learning-rate
decay. The model is a `models.contract.AlternatingModel`."""

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import keras

from alterrec_tf.models import contract
from alterrec_tf.models.contract import ID_PHASE, TEXT_PHASE

if TYPE_CHECKING:
  from alterrec_tf.config import TrainConfig

GATE_METRIC = "hits@20"


def phase_for_epoch(epoch: int, config: "TrainConfig",
                    tower_names: Sequence[str]) -> Tuple[int, int]:
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


def partner_is_competent(history: List[dict], phase: int, gate: float) -> bool:
  """The competence gate: True when the partner of the tower of `phase` had a
  last validation Hits@20 of at least `gate` times the tower's own.

  Args:
    history: the run's epoch records so far (`EpochEvaluation.history`), with
      "valid/<tower>/hits@20".
    phase: ID_PHASE or TEXT_PHASE, the tower about to train.
    gate: the ratio (0: always competent, the paper).
  """
  if gate <= 0.0:
    return True
  if not history:
    return False
  own, partner = ("id", "text") if phase == ID_PHASE else ("text", "id")
  last = history[-1]
  own_score = last.get(f"valid/{own}/{GATE_METRIC}")
  partner_score = last.get(f"valid/{partner}/{GATE_METRIC}")
  if own_score is None or partner_score is None:
    return False
  return partner_score >= gate * own_score


def random_share_at(hard_epochs_before: int, config: "TrainConfig") -> float:
  """The uniform share of a hard epoch after `hard_epochs_before` hard epochs:
  `random_negative_share`, falling linearly to 0 over `random_share_decay_epochs`."""
  if not config.random_share_decay_epochs:
    return config.random_negative_share
  left = max(0.0, 1.0 - hard_epochs_before / config.random_share_decay_epochs)
  return config.random_negative_share * left


class PhaseSchedule(keras.callbacks.Callback):
  """Sets the model's phase variables (no retracing) and, optionally, decays each
  tower's learning rate by `lr_decay` every `lr_decay_epochs_*` epochs it trained.

  Args:
    config: the run's `TrainConfig`.
    history: returns the epoch records so far (for the competence gate,
      `config.hard_negative_gate`); None: no gate.
  """

  def __init__(self, config: "TrainConfig",
               history: Optional[Callable[[], List[dict]]] = None) -> None:
    super().__init__()
    self.config = config
    self.history = history
    self._gated = 0.0

  def set_model(self, model: keras.Model) -> None:
    if not isinstance(model, contract.AlternatingModel):
      raise TypeError(f"PhaseSchedule drives a models.contract.AlternatingModel (AlterRec), "
                      f"not a {type(model).__name__}")
    super().set_model(model)

  def on_epoch_begin(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
    model = self.model
    phase, hard = phase_for_epoch(epoch, self.config, model.tower_names)
    self._gated = 0.0
    if hard and self.history is not None and not partner_is_competent(
        self.history(), phase, self.config.hard_negative_gate):
      hard, self._gated = 0, 1.0
    model.phase.assign(phase)
    model.hard_negatives.assign(hard)
    if model.random_share is not None:
      hard_before = sum(phase_for_epoch(e, self.config, model.tower_names)[1]
                        for e in range(epoch))
      model.random_share.assign(random_share_at(hard_before, self.config))
    for name, every in (("id", self.config.lr_decay_epochs_id),
                        ("text", self.config.lr_decay_epochs_text)):
      if name not in model.tower_names:
        continue
      phase_of_tower = ID_PHASE if name == "id" else TEXT_PHASE
      trained = sum(phase_for_epoch(e, self.config, model.tower_names)[0] == phase_of_tower
                    for e in range(epoch))
      rate = self.config.learning_rate * self.config.lr_decay ** (trained // max(every, 1))
      model.optimizer_of(name).learning_rate.assign(rate)

  def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
    if logs is not None:
      logs["phase"] = float(self.model.phase.numpy())
      logs["hard_negatives"] = float(self.model.hard_negatives.numpy())
      if self.config.hard_negative_gate > 0.0:
        logs["gated"] = self._gated
      if self.model.random_share is not None:
        logs["random_share"] = float(self.model.random_share.numpy())
      for name in self.model.tower_names:
        logs[f"lr_{name}"] = float(self.model.optimizer_of(name).learning_rate.numpy())
