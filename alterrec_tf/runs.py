"""The run folder: its file names, atomic JSON writes, and loading, comparing and
removing a run. Every module that reads or writes a run folder goes through here.

A run folder holds:
  config.json         the TrainConfig of the run (`CONFIG_FILE`)
  history.json        one record per epoch (`HISTORY_FILE`)
  best.weights.h5     weights of the selected epoch (`BEST_WEIGHTS_FILE`)
  results.json        the run's results, written last (`RESULTS_FILE`)
  test_ranks.npz      per-prefix test ranks, when asked (`TEST_RANKS_FILE`)
  alpha_sweep.json    the alpha sweep, when run (`SWEEP_FILE`)
  backup/             resumable state of an unfinished run (`BACKUP_DIR`)
  tb/                 TensorBoard logs (`TENSORBOARD_DIR`)
"""

import dataclasses
import json
import os
import shutil
import subprocess
from typing import List, Optional, Tuple

from alterrec_tf import config as alter_config

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
BEST_WEIGHTS_FILE = "best.weights.h5"
RESULTS_FILE = "results.json"
TEST_RANKS_FILE = "test_ranks.npz"
SWEEP_FILE = "alpha_sweep.json"
BACKUP_DIR = "backup"
TENSORBOARD_DIR = "tb"
RUN_FILES = (CONFIG_FILE, HISTORY_FILE, BEST_WEIGHTS_FILE, RESULTS_FILE, TEST_RANKS_FILE,
             SWEEP_FILE, BACKUP_DIR, TENSORBOARD_DIR)
# What the report and a resumed grid read of a finished run: the files an
# archive of finished runs keeps (`archive_run`; no weights, backup or logs).
ARCHIVED_FILES = (CONFIG_FILE, HISTORY_FILE, RESULTS_FILE, TEST_RANKS_FILE, SWEEP_FILE)

# Settings that change neither the weights nor the metrics of a run.
RUN_NEUTRAL_SETTINGS = frozenset({"data_dir", "run_dir", "verbose", "resume", "overwrite",
                                  "eval_batch_size", "test_every_epoch"})


def code_version(package_dir: Optional[str] = None) -> dict:
  """The code a run is trained with, for results.json: the git commit of the
  checkout this package is imported from, and whether the package's files
  differ from it ("modified"). Both None where the package does not sit at the
  top of a git checkout (an installed wheel; a venv inside some other repo).

  Run settings are checked flag by flag (`run_conflicts`); this is what tells
  runs of one grid trained at different commits apart (the report lists them).

  Args:
    package_dir: the package folder; default: this package's.
  """
  package_dir = package_dir or os.path.dirname(os.path.abspath(__file__))

  def git(*args):
    return subprocess.run(["git", "-C", package_dir, *args], capture_output=True, text=True,
                          timeout=30, check=True).stdout.strip()

  try:
    top = git("rev-parse", "--show-toplevel")
    if os.path.realpath(top) != os.path.realpath(os.path.dirname(package_dir)):
      return {"git_commit": None, "modified": None}
    return {"git_commit": git("rev-parse", "HEAD"),
            "modified": bool(git("status", "--porcelain", "--", "."))}
  except (OSError, subprocess.SubprocessError):
    return {"git_commit": None, "modified": None}


def write_json_atomic(path: str, value) -> None:
  """Writes `value` as JSON to `path` through a temporary file (never half-written)."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def run_dir_of(runs_dir: str, model: str, seed: int) -> str:
  """The folder of one run of a grid: runs_dir/<model>/seed<seed>."""
  return os.path.join(runs_dir, model, f"seed{seed}")


def write_config(run_dir: str, config: "alter_config.TrainConfig") -> None:
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
    f.write(config.to_json())


def load_config(run_dir: str) -> "alter_config.TrainConfig":
  """The `TrainConfig` a run was trained with; settings this version no longer
  knows are ignored.

  Raises:
    ConfigError: run_dir holds no config.json.
  """
  path = os.path.join(run_dir, CONFIG_FILE)
  if not os.path.exists(path):
    raise alter_config.ConfigError(f"{run_dir} is not a training run ({path} missing)")
  values = read_json(path)
  known = {field.name for field in dataclasses.fields(alter_config.TrainConfig)}
  values = {key: value for key, value in values.items() if key in known}
  if "ks" in values:
    values["ks"] = tuple(values["ks"])
  return alter_config.TrainConfig(**values)


def load_results(run_dir: str) -> Optional[dict]:
  """results.json of a finished run, else None."""
  path = os.path.join(run_dir, RESULTS_FILE)
  return read_json(path) if os.path.exists(path) else None


def archive_run(run_dir: str, archive_run_dir: str) -> bool:
  """Copies a finished run's `ARCHIVED_FILES` to archive_run_dir, replacing
  what was there whole (through a temporary folder, so an interrupted copy
  leaves the old files or the new ones, never a mix).

  Works both ways: archiving a run and restoring an archived run into a grid.

  Returns:
    Whether anything was copied: False when run_dir holds no results.json (an
    unfinished run is never archived) or archive_run_dir already holds the same
    results.json.
  """
  results_path = os.path.join(run_dir, RESULTS_FILE)
  if not os.path.exists(results_path):
    return False
  target_results = os.path.join(archive_run_dir, RESULTS_FILE)
  if os.path.exists(target_results) and read_json(target_results) == read_json(results_path):
    return False
  staging = archive_run_dir.rstrip(os.sep) + ".tmp"  # beside it: same file system
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  for name in ARCHIVED_FILES:
    if os.path.exists(os.path.join(run_dir, name)):
      shutil.copy2(os.path.join(run_dir, name), os.path.join(staging, name))
  replaced = archive_run_dir.rstrip(os.sep) + ".old"
  shutil.rmtree(replaced, ignore_errors=True)
  if os.path.isdir(archive_run_dir):
    os.replace(archive_run_dir, replaced)
  os.makedirs(os.path.dirname(os.path.abspath(archive_run_dir)), exist_ok=True)
  os.replace(staging, archive_run_dir)
  shutil.rmtree(replaced, ignore_errors=True)
  return True


def remove_run(run_dir: str) -> None:
  """Deletes what a run leaves in run_dir (nothing else there is touched)."""
  for name in RUN_FILES:
    path = os.path.join(run_dir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)


def run_conflicts(config, manifest) -> Tuple[List[str], Optional[dict]]:
  """How the run already in config.run_dir differs from `config`.

  Returns:
    (differences, results): a list of "--flag=old (now new)" strings (plus a
    data content_hash line when the data changed), empty when the run matches
    or run_dir holds none; and the run's results dict when it finished, else None.
  """
  config_path = os.path.join(config.run_dir, CONFIG_FILE)
  if not os.path.exists(config_path):
    return [], None
  config = alter_config.resolve_seen_items(config, manifest)  # runs store it resolved
  previous = read_json(config_path)
  current = json.loads(config.to_json())
  # a flag added after the run was trained: the run had its default
  defaults = json.loads(alter_config.TrainConfig().to_json())
  changed = [f"--{name}={previous.get(name, defaults.get(name))} (now {value})"
             for name, value in sorted(current.items())
             if name not in RUN_NEUTRAL_SETTINGS
             and previous.get(name, defaults.get(name)) != value]
  results = load_results(config.run_dir)
  if results is not None and results.get("data_content_hash") != manifest.get("content_hash"):
    changed.append(f"data content_hash {results.get('data_content_hash')} "
                   f"(now {manifest.get('content_hash')})")
  return changed, results


# Files that show a run finished at least one epoch (RunBackup writes
# backup/epoch.json after each epoch); a run folder without any of them holds
# nothing to resume.
_STARTED_RUN_FILES = (HISTORY_FILE, RESULTS_FILE,
                      BEST_WEIGHTS_FILE, TEST_RANKS_FILE,
                      SWEEP_FILE, os.path.join(BACKUP_DIR, "epoch.json"))


def clear_unstarted_run(run_dir: str) -> bool:
  """Removes what a run that never finished an epoch left (its config.json,
  tb/, backup/), so that a corrected command is not refused as "a run trained
  with other settings". Returns whether anything was removed."""
  if not os.path.exists(os.path.join(run_dir, CONFIG_FILE)):
    return False
  if any(os.path.exists(os.path.join(run_dir, name)) for name in _STARTED_RUN_FILES):
    return False
  remove_run(run_dir)
  return True
