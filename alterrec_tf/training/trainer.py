"""The trainer: trains and evaluates one model on a prepared dataset.

`train(config)` is the library half of `python -m alterrec_tf.train` (whose
command checks the flags, the dataset and run_dir before TensorFlow is loaded,
then calls it); the grid (`alterrec_tf.experiments`) and the tuner
(`alterrec_tf.tune`) call it too. It writes into run_dir: config.json,
history.json (every epoch, every head and metric, valid and test),
best.weights.h5, TensorBoard logs in tb/, and results.json (test metrics at the
epoch of best validation Hits@20 of the fused score). A killed run resumes from
run_dir/backup on the next start.

Importing this module loads no TensorFlow: Keras and the model code are
imported where used.
"""

import os
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, cast

from alterrec_tf import config as alter_config
from alterrec_tf import runs as alter_runs
from alterrec_tf.training import tower_selection

if TYPE_CHECKING:
  from alterrec_tf.data.windows import SplitData
  from alterrec_tf.models.contract import RankingModel
  from alterrec_tf.training.callbacks import RunBackup

TEST_WINDOW_STRIDE = 1  # test prefixes see exactly their last max_len items

TrainConfig = alter_config.TrainConfig
# One epoch's record of history.json; {head: {metric: value}} of a split.
Record = Dict[str, Any]
Metrics = Dict[str, Dict[str, float]]
Splits = Tuple[Optional["SplitData"], Optional["SplitData"], Optional["SplitData"]]


def train(config: TrainConfig, data_dir: Optional[str] = None, run_dir: Optional[str] = None,
          save_test_ranks: bool = False, verify_data: bool = True,
          rank_test: bool = True) -> Dict[str, Any]:
  """Trains `config.model` and returns the results dict (also written to disk).

  Test metrics are those of the epoch with the best validation Hits@20: read
  from that epoch's record when the test split was ranked every epoch, else
  (or with `save_test_ranks`) from one more pass with that epoch's weights.

  Args:
    config: a `TrainConfig`.
    data_dir, run_dir: override config.data_dir / config.run_dir.
    save_test_ranks: also write the per-prefix test ranks of the selected
      epoch to run_dir/test_ranks.npz (`rank_test_split`).
    verify_data: check every file of the dataset against its manifest hash
      before anything is built (`schema.verify_dataset`; once per process).
    rank_test: False: never rank the test split (tuning trials choose on
      validation only; results.json then has no test figures).

  Returns:
    {"best_epoch", "valid", "test", "history_file", ...}.
  """
  import keras

  from alterrec_tf.formats import schema
  from alterrec_tf.models import registry as models
  from alterrec_tf.training import callbacks as alter_callbacks
  from alterrec_tf.training import distribution, schedule

  config = config.replace(data_dir=data_dir or config.data_dir,
                          run_dir=run_dir or config.run_dir)
  placement = distribution.place(config.distribution, config.cluster_timeout_s)
  manifest = schema.load_manifest(config.data_dir, verify_hashes=verify_data)
  config = alter_config.resolve_seen_items(config, manifest)
  text_embeddings = schema.load_text_embeddings(config.data_dir, manifest)
  alter_config.check_against_dataset(config, manifest, text_embeddings)
  finished = distribution.chief_verdict(placement, lambda: _previous_run(config, manifest),
                                        config.run_dir)
  if finished is not None:
    print(f"{config.run_dir} already holds this finished run: showing its results "
          "(--overwrite trains it again)", flush=True)
    return finished
  chief_dir = config.run_dir  # this process writes run_dir on the chief only:
  config = config.replace(run_dir=distribution.write_dir(placement, chief_dir))
  alter_runs.write_config(config.run_dir, config)

  keras.utils.set_random_seed(config.seed)
  train_split: "SplitData"  # (training needs one, and the floors are counted from it)
  train_split, valid_split, test_split = _load_splits(config, manifest)  # type: ignore[assignment]
  if not rank_test:
    test_split = None

  with placement.strategy.scope():  # variables (optimizers' too) replicated
    model = models.build_model(config, manifest, text_embeddings,
                               train_files=schema.split_files(config.data_dir, manifest, "train"),
                               prefixes_per_batch=_prefixes_per_batch(config, train_split))
  if not model.trainable_variables:  # non-neural floors: no training loop
    return _finish_without_training(config, model, manifest, valid_split, test_split,
                                    save_test_ranks)

  backup, epochs_done, history = _restore(model, config, chief_dir)

  evaluation_callback = alter_callbacks.EpochEvaluation(
      config, config.run_dir, valid_split, test_split, train_split.num_examples, history)
  callbacks = [
      alter_callbacks.DropoutReseed(config.seed),
      evaluation_callback,
      backup,
      keras.callbacks.TensorBoard(os.path.join(config.run_dir, alter_runs.TENSORBOARD_DIR),
                                  write_graph=False),
  ]
  if model.tower_names:  # AlterRec and its ablations: Algorithm 1's phases
    callbacks.insert(1, schedule.PhaseSchedule(config, lambda: evaluation_callback.history))
  steps = train_split.steps(config.batch_size)
  distribution.compile_model(placement, model)
  start = time.perf_counter()
  if epochs_done < config.m_max:
    keras_model = cast(keras.Model, model)  # every model is a Keras model (contract.py)
    keras_model.fit(distribution.distribute_batches(placement, train_split.epochs_of_batches(
                  config.batch_size, config.seed, epochs_done, config.m_max)),
              epochs=config.m_max, initial_epoch=epochs_done, steps_per_epoch=steps,
              callbacks=callbacks, verbose=1 if config.verbose == 2 else 0, shuffle=False)
  best = evaluation_callback.best()
  config, test, alpha_tuning = _test_at_best(config, model, manifest, valid_split, test_split,
                                             best, save_test_ranks)
  results = _results(config, manifest, best, evaluation_callback.history,
                     train_split, time.perf_counter() - start, test, alpha_tuning)
  alter_runs.write_results(config.run_dir, results)  # then hashes.json, last
  return results


def _load_splits(config: TrainConfig, manifest: dict) -> Splits:
  """(train, valid, test) `SplitData` (None where the dataset has no such split).

  The exact protocol: every test prefix is scored with exactly its last max_len
  items (stride 1), as the paper and serving do; --eval_window_stride applies to
  the per-epoch validation only.
  """
  from alterrec_tf.data import windows as alter_data
  return (alter_data.load_split(config.data_dir, manifest, "train", config.max_len,
                                config.train_window_stride),
          alter_data.load_split(config.data_dir, manifest, "valid", config.max_len,
                                config.eval_window_stride),
          alter_data.load_split(config.data_dir, manifest, "test", config.max_len,
                                TEST_WINDOW_STRIDE))


def _prefixes_per_batch(config: TrainConfig,
                        train_split: Optional["SplitData"]) -> Optional[float]:
  """The training split's mean scored prefixes per batch with
  `--loss_weighting=prefix` (every prefix then weighs the same in every step),
  else (or without a training split) None: each batch's mean loss."""
  if config.loss_weighting != "prefix" or train_split is None:
    return None
  return train_split.num_examples / max(train_split.steps(config.batch_size), 1)


def _restore(model: "RankingModel", config: TrainConfig,
             chief_dir: str) -> Tuple["RunBackup", int, List[Record]]:
  """(`RunBackup` callback, epochs done, their history records), read from the
  chief's run folder (the chief removed it with --overwrite: nothing read)."""
  from alterrec_tf.training import callbacks as alter_callbacks
  backup = alter_callbacks.RunBackup(model, config.run_dir, restore_dir=chief_dir)
  epochs_done = backup.restore() if config.resume and not config.overwrite else 0
  history = []
  history_path = os.path.join(chief_dir, alter_runs.HISTORY_FILE)
  if epochs_done and os.path.exists(history_path):
    history = [h for h in alter_runs.read_json(history_path) if h["epoch"] <= epochs_done]
    print(f"resuming {chief_dir} after epoch {epochs_done}", flush=True)
  return backup, epochs_done, history


def _test_at_best(config: TrainConfig, model: "RankingModel", manifest: dict,
                  valid_split: Optional["SplitData"], test_split: Optional["SplitData"],
                  best: Optional[Record], save_test_ranks: bool
                  ) -> Tuple[TrainConfig, Optional[Metrics], Optional[Dict[str, Any]]]:
  """With the selected epoch's weights: alpha chosen on validation (--tune_alpha,
  two towers), then the test split ranked once where the epochs did not.

  Returns:
    (config, with the chosen alpha; test {head: {metric: value}} or None; the
    `training.alpha.tune` record or None).
  """
  from alterrec_tf.models import contract
  from alterrec_tf.training import alpha as alter_alpha
  best_weights = os.path.join(config.run_dir, alter_runs.BEST_WEIGHTS_FILE)
  if best is None or not os.path.exists(best_weights):
    return config, None, None
  alpha_tuning = None
  if (config.tune_alpha and isinstance(model, contract.AlternatingModel)
      and tuple(model.tower_names) == ("id", "text")):
    model.load_weights(best_weights)
    if config.tower_selection == "each":  # each network at its own best epoch
      tower_selection.load_towers(model, config.run_dir)
      tmp = os.path.join(config.run_dir, "best.tmp.weights.h5")
      model.save_weights(tmp)
      os.replace(tmp, best_weights)  # what is tested is what export reads
    # (every trained model has a validation split: config.check_against_dataset)
    alpha_tuning = alter_alpha.tune(model, valid_split, config)  # type: ignore[arg-type]
    config = config.replace(alpha=alpha_tuning["alpha"])
    model.set_alpha(config.alpha)
    print(f"alpha chosen on validation: {config.alpha:g} (trained with "
          f"{alpha_tuning['trained_with']:g})", flush=True)
  test = None
  if test_split is not None and (save_test_ranks or not config.test_every_epoch
                                 or alpha_tuning):
    if alpha_tuning is None:  # (tuning loaded them already)
      model.load_weights(best_weights)
    test = rank_test_split(config, model, manifest, test_split,
                           config.run_dir if save_test_ranks else None)
    # same weights, same figures (unless alpha was tuned after the epochs)
    for metric, value in ({} if alpha_tuning else test["fused"]).items():
      logged = best.get(f"test/fused/{metric}")
      if logged is not None and abs(logged - value) > 1e-4:
        print(f"warning: test fused {metric} of the reloaded best weights is {value:.4f}, "
              f"epoch {best['epoch']} logged {logged:.4f}", flush=True)
  return config, test, alpha_tuning


def _previous_run(config: TrainConfig, manifest: dict) -> Optional[Dict[str, Any]]:
  """The results of the same finished run in config.run_dir, else None.

  With --overwrite, the run's files are removed first (and None returned).

  Raises:
    ConfigError: run_dir holds a run (finished or resumable) trained with other
      settings or on other data, and --overwrite was not given.
  """
  if config.overwrite:
    alter_runs.remove_run(config.run_dir)
    return None
  changed, results = alter_runs.run_conflicts(config, manifest)
  if changed:
    raise alter_config.ConfigError(
        f"{config.run_dir} holds a run trained with other settings: {', '.join(changed)}; "
        "choose another --run_dir, or pass --overwrite to replace it")
  return results


def rank_test_split(config: TrainConfig, model: "RankingModel", manifest: dict,
                    test_split: "SplitData", ranks_dir: Optional[str] = None) -> Metrics:
  """Ranks the test split with the model's current weights.

  With `ranks_dir`, writes ranks_dir/test_ranks.npz: `targets` [N],
  `target_train_counts` [N] (training occurrences of each target item) and,
  under each score head's name ("fused", "id", "text"), the 1-based rank [N]
  of the target (max_k + 1 when outside the top max_k).

  Returns:
    {head: {metric: value}}.
  """
  import numpy as np

  from alterrec_tf.data import windows as alter_data
  from alterrec_tf.formats import schema
  from alterrec_tf.training import evaluation

  evaluator = evaluation.Evaluator(model, config.ks, config.mrr_k)
  metrics, per_prefix = evaluator(test_split.batches(config.eval_batch_size), keep_ranks=True)
  if ranks_dir is not None:
    targets = per_prefix.pop("targets").astype(np.int64)
    train_files = schema.split_files(config.data_dir, manifest, "train")
    counts = alter_data.item_counts(train_files, manifest["num_items"]).numpy()
    arrays = {"targets": targets, "target_train_counts": counts[targets]}
    arrays.update({head: ranks.astype(np.int32) for head, ranks in per_prefix.items()})
    tmp = os.path.join(ranks_dir, "test_ranks.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, os.path.join(ranks_dir, alter_runs.TEST_RANKS_FILE))
  return metrics


def _results(config: TrainConfig, manifest: dict, best: Optional[Record],
             history: List[Record], train_split: Optional["SplitData"], seconds: float,
             test: Optional[Metrics] = None,
             alpha_tuning: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """results.json; `test` ({head: {metric: value}}) replaces the best record's.

  With `alpha_tuning` (`training.alpha.tune`), "alpha" is the chosen alpha and
  the fused validation figures are those of that alpha (the test figures were
  ranked with it)."""
  best = best or (history[-1] if history else {})

  def pick(split: str) -> Metrics:
    out: dict = {}
    for key, value in best.items():
      parts = key.split("/")
      if len(parts) == 3 and parts[0] == split:
        out.setdefault(parts[1], {})[parts[2]] = value
    return out

  valid = pick("valid")
  if alpha_tuning is not None:
    valid["fused"] = dict(alpha_tuning["valid"][f"{alpha_tuning['alpha']:g}"])
  results = {
      "model": config.model, "seed": config.seed, "dataset": manifest.get("dataset_name"),
      "data_content_hash": manifest.get("content_hash"),
      "data_identity": alter_runs.dataset_identity(config.data_dir, manifest),
      "code_version": alter_runs.code_version(),
      "best_epoch": best.get("epoch"), "epochs_run": len(history),
      "selection": "valid fused hits@20", "valid": valid,
      "seen_items": config.seen_items, "loss_weighting": config.loss_weighting,
      "test_protocol": f"every scored prefix with exactly its last {config.max_len} items "
                       f"(window stride {TEST_WINDOW_STRIDE}); validation stride "
                       f"{config.eval_window_stride}",
      "test": test if test is not None else pick("test"),
      "train_examples_per_epoch": train_split.num_examples if train_split else 0,
      "wall_seconds_this_process": seconds,
      "mean_train_examples_per_second": (
          sum(h["train_examples_per_second"] for h in history) / len(history)
          if history else 0.0),
  }
  if alpha_tuning is not None:
    results.update(alpha=alpha_tuning["alpha"], alpha_tuning=alpha_tuning)
  if config.tower_selection == "each" and alpha_tuning is not None:
    results["tower_epochs"] = tower_selection.best_epochs(history, ("id", "text"), "hits@20")
  return results


def _finish_without_training(config: TrainConfig, model: "RankingModel",
                             manifest: dict, valid_split: Optional["SplitData"],
                             test_split: Optional["SplitData"],
                             save_test_ranks: bool = False) -> Dict[str, Any]:
  """Evaluates a model without trainable variables (the floors) once; its
  training time is the counting's (`contract.CountModel.fit_seconds`). With
  `save_test_ranks` the one test pass also writes test_ranks.npz (the grid then
  need not rank the split again: a neighbourhood floor's pass is minutes)."""
  from alterrec_tf.models import contract
  from alterrec_tf.training import evaluation
  start = time.perf_counter()
  fit_seconds = model.fit_seconds if isinstance(model, contract.CountModel) else 0.0
  record = {"epoch": 0, "train_seconds": float(fit_seconds),
            "train_examples_per_second": 0.0}
  for split_name, split in (("valid", valid_split), ("test", test_split)):
    if split is None:
      continue
    if split_name == "test" and save_test_ranks:
      metrics = rank_test_split(config, model, manifest, split, config.run_dir)
    else:
      metrics = evaluation.Evaluator(model, config.ks, config.mrr_k)(
          split.batches(config.eval_batch_size))
    for head, values in metrics.items():
      for metric, value in values.items():
        record[f"{split_name}/{head}/{metric}"] = value
  history = [record]
  alter_runs.write_json_atomic(
      os.path.join(config.run_dir, alter_runs.HISTORY_FILE), history)
  results = _results(config, manifest, record, history, None, time.perf_counter() - start)
  if isinstance(model, contract.CountModel) and model.floor_parameters:
    results["floor_parameters"] = model.floor_parameters  # the module defaults it ran with
  alter_runs.write_results(config.run_dir, results)  # then hashes.json, last
  return results
