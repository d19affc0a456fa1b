"""Keras callbacks of every training run: dropout reseeding, per-epoch evaluation
with model selection, and resumable backups. AlterRec's phase schedule is in
`training.schedule`."""

import json
import os
import shutil
import time
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

import keras
import tensorflow as tf

from alterrec_tf import runs as alter_runs
from alterrec_tf.models import contract
from alterrec_tf.training import evaluation, progress, tower_selection

if TYPE_CHECKING:
  from alterrec_tf.config import TrainConfig
  from alterrec_tf.data.windows import SplitData

# Keras' per-epoch logs, and one epoch's record of history.json.
Logs = Optional[Dict[str, Any]]
Record = Dict[str, Any]


def reseed_dropout(model: keras.Model, seed: int, epoch: int) -> None:
  """Sets every Keras seed generator (dropout) to a state that depends only on
  (seed, epoch, its index), so that a resumed epoch draws the same masks as in
  an uninterrupted run."""
  states = [v for v in model.variables if v.name == "seed_generator_state"]
  for index, state in enumerate(states):
    state.assign([seed * 7919 + index, epoch * 10_000_000])


class DropoutReseed(keras.callbacks.Callback):
  """Reseeds dropout at the start of every epoch (`reseed_dropout`), for every model."""

  def __init__(self, seed: int) -> None:
    super().__init__()
    self.seed = seed

  def on_epoch_begin(self, epoch: int, logs: Logs = None) -> None:
    reseed_dropout(self.model, self.seed, epoch)


class EpochEvaluation(keras.callbacks.Callback):
  """Evaluates valid (and, with `config.test_every_epoch`, test) after every
  epoch, logs every head and metric, keeps the best epoch by validation
  `selection_metric` of the fused head, saves its weights, and stops early
  after `patience` epochs without gain.

  The history (one dict per epoch) is written to run_dir/history.json.
  """

  def __init__(self, config: "TrainConfig", run_dir: str, valid: Optional["SplitData"],
               test: Optional["SplitData"], train_examples: int,
               history: Optional[Sequence[Record]] = None,
               selection_metric: str = "hits@20") -> None:
    super().__init__()
    self.config = config
    self.run_dir = run_dir
    self.valid, self.test = valid, test
    self.train_examples = train_examples
    self.history = list(history or [])
    self.selection_metric = selection_metric
    self._epoch_start = 0.0  # (set when each epoch begins)
    self._evaluator: Optional[evaluation.Evaluator] = None

  def on_epoch_begin(self, epoch: int, logs: Logs = None) -> None:
    self._epoch_start = time.perf_counter()

  def _evaluate(self, split: Optional["SplitData"]) -> evaluation.Metrics:
    if split is None:
      return {}
    if self._evaluator is None:
      self._evaluator = evaluation.Evaluator(self.model,
                                             self.config.ks, self.config.mrr_k)
    return self._evaluator(split.batches(self.config.eval_batch_size))

  def best(self) -> Optional[Record]:
    key = f"valid/fused/{self.selection_metric}"
    scored = [h for h in self.history if key in h]
    return max(scored, key=lambda h: (h[key], -h["epoch"])) if scored else None

  def on_epoch_end(self, epoch: int, logs: Logs = None) -> None:
    logs = logs if logs is not None else {}
    train_seconds = time.perf_counter() - self._epoch_start
    start = time.perf_counter()
    record = {"epoch": epoch + 1, "train_seconds": train_seconds,
              "train_examples_per_second": self.train_examples / max(train_seconds, 1e-9)}
    for key, value in logs.items():
      record[f"train/{key}"] = float(value)
    splits = [("valid", self.valid)]
    if self.config.test_every_epoch and self.test is not None:
      splits.append(("test", self.test))
    for split_name, split in splits:
      for head, values in self._evaluate(split).items():
        for metric, value in values.items():
          record[f"{split_name}/{head}/{metric}"] = value
          logs[f"{split_name}_{head}_{metric}"] = value
    record["eval_seconds"] = time.perf_counter() - start
    previous_best = self.best()
    self.history.append(record)
    each = self.config.tower_selection == "each" and len(self.model.tower_names) == 2
    if each:  # each network's own best weights (training.tower_selection)
      for name in tower_selection.improved_towers(self.history, self.model.tower_names,
                                                  self.selection_metric):
        tower_selection.save_tower(self.run_dir, name, self.model.tower(name))
    if self.best() is record:
      # through a temporary file (Keras wants the .weights.h5 ending): never half-written
      tmp = os.path.join(self.run_dir, "best.tmp.weights.h5")
      self.model.save_weights(tmp)
      os.replace(tmp, os.path.join(self.run_dir, alter_runs.BEST_WEIGHTS_FILE))
    elif each:
      if (tower_selection.epochs_without_gain(self.history, self.selection_metric)
          >= self.config.early_stopping_patience):
        self.model.stop_training = True
    elif (previous_best
          and epoch + 1 - previous_best["epoch"] >= self.config.early_stopping_patience):
      self.model.stop_training = True
    alter_runs.write_json_atomic(os.path.join(self.run_dir, alter_runs.HISTORY_FILE), self.history)
    if self.config.verbose:
      best = self.best()
      partner_of = (self.model.partner_of
                    if isinstance(self.model, contract.AlternatingModel) else None)
      print(progress.epoch_line(record, self.config.m_max, best["epoch"] if best else None,
                                partner_of), flush=True)


class RunBackup(keras.callbacks.Callback):
  """Saves every variable (both towers, both optimizers, phase and step
  counters, seed states) after each epoch, so that a killed run resumes at the
  next epoch and ends exactly as an uninterrupted run with the same seed.

  Files: run_dir/backup/ckpt-* (tf.train.Checkpoint) and epoch.json.

  Under tf.distribute every worker saves (saving reads replicated variables,
  which may take part in collectives), each into its own run_dir; a worker
  other than the chief restores from the chief's (`restore_dir`).
  """

  def __init__(self, model: keras.Model, run_dir: str, restore_dir: Optional[str] = None) -> None:
    super().__init__()
    self.directory = os.path.join(run_dir, alter_runs.BACKUP_DIR)
    self.restore_directory = os.path.join(restore_dir or run_dir, alter_runs.BACKUP_DIR)
    self.checkpoint = tf.train.Checkpoint(model=model)
    self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=1)

  def restore(self) -> int:
    """Restores the latest backup; returns the number of finished epochs."""
    path = tf.train.latest_checkpoint(self.restore_directory)
    meta = os.path.join(self.restore_directory, "epoch.json")
    if not path or not os.path.exists(meta):
      return 0
    self.checkpoint.restore(path).assert_existing_objects_matched()
    with open(meta, encoding="utf-8") as f:
      return int(json.load(f)["epochs_done"])

  def on_epoch_end(self, epoch: int, logs: Logs = None) -> None:
    self.manager.save(checkpoint_number=epoch + 1)
    alter_runs.write_json_atomic(os.path.join(self.directory, "epoch.json"),
                                 {"epochs_done": epoch + 1})

  def on_train_end(self, logs: Logs = None) -> None:
    shutil.rmtree(self.directory, ignore_errors=True)
