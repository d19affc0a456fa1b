"""A RecBole run's top-k lists -> a run folder our report reads.

`peers/recbole_run.py` leaves, for every validation and test row of the export
(in the export's order), the top-k items of the trained model over the whole
catalogue with the row's history scored out. Here each target's place in its
row's list becomes a 1-based rank (k + 1 when absent), and the metrics are
computed from those ranks by our evaluation code (`training.evaluation.
ranking_metrics`, the keras-rs metrics of every results.json), so RecBole's rows
and ours are measured by the same definition. A target can only be found
within the top k: ranks are capped at max(ks, mrr_k) + 1 like ours, so k must
reach that.

The run folder (`runs.run_dir_of(runs_dir, "recbole_<model>", seed)`):

  config.json     the RecBole config, the job, the export it ran on, its
                  settings_id (`jobs.settings_id`); ks and mrr_k
  history.json    per epoch: seconds, loss, RecBole's own validation figures
                  (`valid/recbole/...`, seen items scored out like ours)
  results.json    valid and test Hits/NDCG@K, MRR (ours, head "fused"), best epoch,
                  compute (wall seconds), source "RecBole 1.2.1", the data's
                  data_identity (`formats.identity`)
  test_ranks.npz  "fused" ranks, "targets" and "target_train_counts" of every test
                  row, in our evaluator's order (the archive check recomputes the
                  figures from them; the long-tail table compares them with ours)
  hashes.json     (`runs.write_results`)

A finished run folder stands for a job when its settings_id is the job's and
its data_identity matches the data (`finished_run_conflicts`): on another CPU,
whose sentence encoder rounds the text table differently, the export is made
again (its export_id hashes the data's bytes) but the finished runs still count.
"""

import json
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np

from alterrec_tf import runs as alter_runs
from alterrec_tf.models import names as model_names
from alterrec_tf.recbole import atomic, jobs
from alterrec_tf.training import evaluation

RESULT_DIR = "result"  # peers/recbole_run.py's RESULT_DIR


class ListsError(ValueError):
  """A RecBole result that does not fit the export it claims to rank."""


def run_name(model: str) -> str:
  """The run folder's model name of a RecBole model: recbole_<model>."""
  return model_names.PEER_PREFIX + model


def ranks_in_lists(lists: np.ndarray, targets: np.ndarray, cap: int) -> np.ndarray:
  """1-based place of each target in its row's list, `cap` + 1 where absent.

  Args:
    lists: int [N, k] item indices, best first.
    targets: int [N].
    cap: the largest rank kept (max(ks, mrr_k)); places beyond it count as absent.

  Returns:
    int32 [N] ranks in 1..cap + 1.
  """
  found = lists == targets[:, None]
  place = np.where(found.any(axis=1), found.argmax(axis=1) + 1, cap + 1)
  return np.minimum(place, cap + 1).astype(np.int32)


def check_lists(split: str, lists: np.ndarray, targets: np.ndarray, num_items: int,
                cap: int) -> None:
  """Refuses lists of another length, too short, or naming items outside 1..V-1.

  Raises:
    ListsError: naming the split and the problem.
  """
  if lists.ndim != 2 or lists.shape[0] != targets.shape[0]:
    raise ListsError(f"{split}: {lists.shape[0] if lists.ndim else 0} lists for "
                     f"{targets.shape[0]} rows of the export")
  if lists.shape[1] < cap:
    raise ListsError(f"{split}: lists of {lists.shape[1]} items cannot give ranks up to {cap}")
  if lists.size and (lists.min() < 1 or lists.max() >= num_items):
    raise ListsError(f"{split}: item indices outside 1..{num_items - 1} (padding or unknown)")
  if any(len(set(row)) != len(row) for row in lists[: min(len(lists), 1000)].tolist()):
    raise ListsError(f"{split}: a list names an item twice")


def split_metrics(lists: np.ndarray, targets: np.ndarray, ks: Iterable[int],
                  mrr_k: int) -> Tuple[Dict[str, float], np.ndarray]:
  """(our metrics of the lists {metric: fraction}, ranks int32 [N])."""
  ks = tuple(ks)
  ranks = ranks_in_lists(lists, targets, max(max(ks), mrr_k))
  return evaluation.ranking_metrics(ranks, ks, mrr_k), ranks


def write_run(result_dir: str, export: Dict[str, Any], targets: Dict[str, np.ndarray],
              job: Dict[str, Any], run_dir: str, ks: Tuple[int, ...] = (10, 20),
              mrr_k: int = 20,
              process_seconds: Optional[float] = None,
              test_order: Optional[np.ndarray] = None,
              data_identity: Optional[Dict[str, Any]] = None) -> dict:
  """Turns `result_dir` (recbole_run.py's output) into the run folder `run_dir`.

  Args:
    result_dir: topk_valid.npy, topk_test.npy, history.json, run.json.
    export: the export's description (`atomic.export`).
    targets: {split: int [rows]} of the export (`atomic.read_targets`).
    job: the job the run was started with (`jobs`).
    run_dir: the run folder to write (created).
    ks, mrr_k: the cut-offs (ours).
    process_seconds: wall seconds of the RecBole process as the caller saw it
      (interpreter and library start-up included), when known.
    test_order: int [rows], the export rows in our evaluator's order
      (`atomic.evaluation_order`): test_ranks.npz is written in that order, as our
      runs' are, so the report compares them prefix by prefix; None: export order.
    data_identity: the `data_identity` of the prepared dataset the export was
      made from (`runs.dataset_identity`), recorded in results.json.

  Returns:
    results.json's content.

  Raises:
    ListsError: the lists do not fit the export.
  """
  with open(os.path.join(result_dir, "run.json"), encoding="utf-8") as f:
    info = json.load(f)
  with open(os.path.join(result_dir, "history.json"), encoding="utf-8") as f:
    history = json.load(f)
  cap = max(max(ks), mrr_k)
  figures: Dict[str, Dict[str, float]] = {}
  test_ranks = np.zeros([0], np.int32)
  for split in ("valid", "test"):
    lists = np.load(os.path.join(result_dir, f"topk_{split}.npy"), allow_pickle=False)
    check_lists(split, lists, targets[split], export["num_items"], cap)
    figures[split], ranks = split_metrics(lists, targets[split], ks, mrr_k)
    if split == "test":
      test_ranks = ranks
  name = run_name(job["model"])
  seconds = dict(info["seconds"])
  if process_seconds is not None:
    seconds["process"] = process_seconds
  train_rows = export["rows"]["train"]
  trained = [r["train_seconds"] for r in history if "train_seconds" in r]
  results = {
      "model": name, "source": info.get("source", f"RecBole {jobs.RECBOLE_VERSION}"),
      "recbole_model": info["model"], "seed": job["config"].get("seed", 0),
      "dataset": export.get("dataset", ""), "data_content_hash": export.get("data_content_hash"),
      "data_identity": data_identity,
      "export_id": export["export_id"], "best_epoch": info["best_epoch"],
      "epochs_run": info["epochs_run"], "selection": "valid hits@20 (RecBole's trainer and "
      "early stopping; seen items scored out)", "seen_items": "exclude",
      "test_protocol": f"every scored prefix with exactly its last {export['max_len']} items "
                       "(the export's rows); top-k by RecBole, ranked by our metrics",
      "test": {"fused": figures["test"]}, "valid": {"fused": figures["valid"]},
      "train_examples_per_epoch": train_rows,
      "mean_train_examples_per_second": (train_rows * len(trained) / sum(trained)
                                         if trained and sum(trained) else 0.0),
      "wall_seconds_this_process": seconds["wall"], "compute_seconds": seconds,
      "device": info.get("device"), "threads": info.get("threads"),
      "num_parameters": info.get("num_parameters"), "code_version": alter_runs.code_version(),
  }
  config = {"model": name, "source": results["source"], "seed": results["seed"],
            "ks": list(ks), "mrr_k": mrr_k, "data_dir": export.get("data_dir"),
            "max_len": export["max_len"], "export_id": export["export_id"],
            "job_id": jobs.job_id(job), "settings_id": jobs.settings_id(job, export),
            "job": job, "recbole_config": info.get("config", {})}
  os.makedirs(run_dir, exist_ok=True)
  alter_runs.write_json_atomic(os.path.join(run_dir, alter_runs.CONFIG_FILE), config)
  alter_runs.write_json_atomic(os.path.join(run_dir, alter_runs.HISTORY_FILE), history)
  ranks_path = os.path.join(run_dir, alter_runs.TEST_RANKS_FILE)
  tmp = ranks_path + ".tmp.npz"
  order = np.arange(len(test_ranks)) if test_order is None else test_order
  test_targets = targets["test"].astype(np.int64)[order]
  arrays: Dict[str, Any] = {"fused": test_ranks[order], "targets": test_targets}
  if "train_item_counts" in targets:
    arrays["target_train_counts"] = targets["train_item_counts"][test_targets]
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, ranks_path)
  alter_runs.write_results(run_dir, results)
  return results


def finished_run_conflicts(run_dir: str, job: Dict[str, Any], export: Dict[str, Any],
                           data_dir: str, manifest: dict) -> Optional[List[str]]:
  """How the finished run in run_dir differs from `job` on the data in data_dir.

  The settings must be the job's exactly (`jobs.settings_id`); the data must be
  the same up to float rounding of the text table (`runs.data_conflicts`:
  exact on sessions, vocabulary and split). A run folder written before
  config.json held settings_id and results.json data_identity counts when its
  job's model, config and top_k are this job's and its export_id is the one
  these export settings give on the data content_hash it recorded (and that
  hash is the current data's, or a `runs.MIGRATION_FILE` beside the runs maps
  it to an identity that matches).

  Args:
    run_dir: a run folder of `write_run` (or none).
    job: the job the command would run now.
    export: the export it would run on (`atomic.export`).
    data_dir, manifest: the prepared dataset and its manifest.

  Returns:
    None where run_dir holds no finished run; otherwise the differences, one
    line each (empty: the finished run is this job's).
  """
  if not os.path.isfile(os.path.join(run_dir, alter_runs.RESULTS_FILE)):
    return None
  recorded = alter_runs.read_json(os.path.join(run_dir, alter_runs.CONFIG_FILE))
  results = alter_runs.read_json(os.path.join(run_dir, alter_runs.RESULTS_FILE))
  problems = []
  if "settings_id" in recorded:
    if recorded["settings_id"] != jobs.settings_id(job, export):
      problems.append("its settings differ (compare config.json's job)")
  else:
    old_job = recorded.get("job") or {}
    changed = [name for name in ("model", "config", "top_k") if old_job.get(name) != job[name]]
    legacy_export = atomic.export_id({"content_hash": results.get("data_content_hash")},
                                     export["max_len"], export.get("text_codes"))
    if changed:
      problems.append(f"its job's {', '.join(changed)} differ (compare config.json's job)")
    elif old_job.get("export_id") != legacy_export:
      problems.append("its export had other settings (max_len, text codes or export version)")
  problems += alter_runs.data_conflicts(run_dir, results, data_dir, manifest)
  return problems
