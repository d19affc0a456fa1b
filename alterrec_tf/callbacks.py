"""Keras callbacks of a training run: phase schedule, per-epoch evaluation with
model selection, learning-rate decay (reference-code option) and resumable
backups."""

import json
import os
import shutil
import time

import keras
import tensorflow as tf

from alterrec_tf import evaluation
from alterrec_tf.model import ID_PHASE, TEXT_PHASE

HISTORY_FILE = "history.json"
BEST_WEIGHTS_FILE = "best.weights.h5"
BACKUP_DIR = "backup"


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


def reseed_dropout(model, seed: int, epoch: int) -> None:
  """Sets every Keras seed generator (dropout) to a state that depends only on
  (seed, epoch, its index), so that a resumed epoch draws the same masks as in
  an uninterrupted run."""
  states = [v for v in model.variables if v.name == "seed_generator_state"]
  for index, state in enumerate(states):
    state.assign([seed * 7919 + index, epoch * 10_000_000])


class PhaseSchedule(keras.callbacks.Callback):
  """Sets the model's phase variables (no retracing) and, optionally, decays each
  tower's learning rate by `lr_decay` every `lr_decay_epochs_*` epochs it trained."""

  def __init__(self, config):
    super().__init__()
    self.config = config

  def on_epoch_begin(self, epoch, logs=None):
    model = self.model
    reseed_dropout(model, self.config.seed, epoch)
    if not hasattr(model, "phase"):  # baselines: no alternation, constant rate
      return
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
    if logs is not None and hasattr(self.model, "phase"):
      logs["phase"] = float(self.model.phase.numpy())
      logs["hard_negatives"] = float(self.model.hard_negatives.numpy())
      for name in self.model.tower_names:
        logs[f"lr_{name}"] = float(self.model.optimizer_of(name).learning_rate.numpy())


def write_json_atomic(path: str, value) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


class EpochEvaluation(keras.callbacks.Callback):
  """Evaluates valid (and, with `config.test_every_epoch`, test) after every
  epoch, logs every head and metric, keeps the best epoch by validation
  `selection_metric` of the fused head, saves its weights, and stops early
  after `patience` epochs without gain.

  The history (one dict per epoch) is written to run_dir/history.json.
  """

  def __init__(self, config, run_dir, valid, test, train_examples: int,
               history=None, selection_metric="hits@20"):
    super().__init__()
    self.config = config
    self.run_dir = run_dir
    self.valid, self.test = valid, test
    self.train_examples = train_examples
    self.history = list(history or [])
    self.selection_metric = selection_metric
    self._epoch_start = None
    self._evaluator = None

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch_start = time.perf_counter()

  def _evaluate(self, split):
    if split is None:
      return {}
    if self._evaluator is None:
      self._evaluator = evaluation.Evaluator(self.model,
                                             self.config.ks, self.config.mrr_k)
    return self._evaluator(split.batches(self.config.eval_batch_size))

  def best(self):
    key = f"valid/fused/{self.selection_metric}"
    scored = [h for h in self.history if key in h]
    return max(scored, key=lambda h: (h[key], -h["epoch"])) if scored else None

  def on_epoch_end(self, epoch, logs=None):
    logs = logs if logs is not None else {}
    train_seconds = time.perf_counter() - self._epoch_start
    start = time.perf_counter()
    record = {"epoch": epoch + 1, "train_seconds": train_seconds,
              "train_examples_per_second": self.train_examples / max(train_seconds, 1e-9)}
    for key, value in logs.items():
      record[f"train/{key}"] = float(value)
    splits = [("valid", self.valid)]
    if self.config.test_every_epoch:
      splits.append(("test", self.test))
    for split_name, split in splits:
      for head, values in self._evaluate(split).items():
        for metric, value in values.items():
          record[f"{split_name}/{head}/{metric}"] = value
          logs[f"{split_name}_{head}_{metric}"] = value
    record["eval_seconds"] = time.perf_counter() - start
    previous_best = self.best()
    self.history.append(record)
    if self.best() is record:
      self.model.save_weights(os.path.join(self.run_dir, BEST_WEIGHTS_FILE))
    elif previous_best and epoch + 1 - previous_best["epoch"] >= self.config.early_stopping_patience:
      self.model.stop_training = True
    write_json_atomic(os.path.join(self.run_dir, HISTORY_FILE), self.history)
    fused = f"valid/fused/{self.selection_metric}"
    if self.config.verbose and fused in record:
      print(f"epoch {epoch + 1}: valid fused {self.selection_metric} "
            f"{record[fused]:.4f}, train {train_seconds:.1f}s "
            f"({record['train_examples_per_second']:.0f} prefixes/s), "
            f"eval {record['eval_seconds']:.1f}s", flush=True)


class RunBackup(keras.callbacks.Callback):
  """Saves every variable (both towers, both optimizers, phase and step
  counters, seed states) after each epoch, so that a killed run resumes at the
  next epoch and ends exactly as an uninterrupted run with the same seed.

  Files: run_dir/backup/ckpt-* (tf.train.Checkpoint) and epoch.json.
  """

  def __init__(self, model, run_dir):
    super().__init__()
    self.directory = os.path.join(run_dir, BACKUP_DIR)
    self.checkpoint = tf.train.Checkpoint(model=model)
    self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=1)

  def restore(self) -> int:
    """Restores the latest backup; returns the number of finished epochs."""
    path = self.manager.latest_checkpoint
    meta = os.path.join(self.directory, "epoch.json")
    if not path or not os.path.exists(meta):
      return 0
    self.checkpoint.restore(path).assert_existing_objects_matched()
    with open(meta, encoding="utf-8") as f:
      return int(json.load(f)["epochs_done"])

  def on_epoch_end(self, epoch, logs=None):
    self.manager.save(checkpoint_number=epoch + 1)
    write_json_atomic(os.path.join(self.directory, "epoch.json"), {"epochs_done": epoch + 1})

  def on_train_end(self, logs=None):
    shutil.rmtree(self.directory, ignore_errors=True)
