"""The run folder: its file names, atomic JSON writes, and loading, comparing and
removing a run. Every module that reads or writes a run folder goes through here.

A run folder holds:
  config.json         the TrainConfig of the run (`CONFIG_FILE`)
  history.json        one record per epoch (`HISTORY_FILE`)
  best.weights.h5     weights of the selected epoch (`BEST_WEIGHTS_FILE`)
  results.json        the run's results, written last (`RESULTS_FILE`)
  test_ranks.npz      per-prefix test ranks, when asked (`TEST_RANKS_FILE`)
  alpha_sweep.json    the alpha sweep, when run (`SWEEP_FILE`)
  hashes.json         SHA-256 of the files above, written last (`HASHES_FILE`)
  backup/             resumable state of an unfinished run (`BACKUP_DIR`)
  tb/                 TensorBoard logs (`TENSORBOARD_DIR`)

Every file is written through a temporary file and a rename (never half
written). Archived runs (checked, then restored into a grid) are `run_archive`'s.
"""

import dataclasses
import json
import os
import shutil
import subprocess
from typing import Any, Dict, List, Optional, Tuple

from alterrec_tf import config as alter_config
from alterrec_tf.formats import identity as data_identity
from alterrec_tf.formats import schema
from alterrec_tf.models import floor_defaults

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
BEST_WEIGHTS_FILE = "best.weights.h5"
RESULTS_FILE = "results.json"
TEST_RANKS_FILE = "test_ranks.npz"
SWEEP_FILE = "alpha_sweep.json"
HASHES_FILE = "hashes.json"
BACKUP_DIR = "backup"
TENSORBOARD_DIR = "tb"
RUN_FILES = (CONFIG_FILE, HISTORY_FILE, BEST_WEIGHTS_FILE, RESULTS_FILE, TEST_RANKS_FILE,
             SWEEP_FILE, HASHES_FILE, BACKUP_DIR, TENSORBOARD_DIR)
# The files hashes.json covers (where the run has them).
HASHED_FILES = (CONFIG_FILE, HISTORY_FILE, BEST_WEIGHTS_FILE, RESULTS_FILE, TEST_RANKS_FILE,
                SWEEP_FILE)
# What the report and a resumed grid read of a finished run: the files an
# archive of finished runs keeps (`run_archive.archive_run`; no weights, backup or logs).
ARCHIVED_FILES = (CONFIG_FILE, HISTORY_FILE, RESULTS_FILE, TEST_RANKS_FILE, SWEEP_FILE,
                  HASHES_FILE)
DAMAGED_RUN_HINT = ("train that run again (delete its folder, or train with --overwrite), or "
                    "put the file back from a copy (e.g. the grid's --archive_dir)")


class RunFileError(alter_config.ConfigError):
  """A file of a run folder or an archived run is damaged, edited or missing."""

# Settings that change neither the weights nor the metrics of a run.
RUN_NEUTRAL_SETTINGS = frozenset({"data_dir", "run_dir", "verbose", "resume", "overwrite",
                                  "eval_batch_size", "test_every_epoch",
                                  "cluster_timeout_s"})


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

  def git(*args: str) -> str:
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


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename: a full disk
  or a kill leaves the old file (or none), never a cut one."""
  tmp = path + ".tmp"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json_atomic(path: str, value: Any) -> None:
  """Writes `value` as JSON to `path` through a temporary file (never half-written)."""
  write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True))


def read_json(path: str, hint: str = DAMAGED_RUN_HINT) -> Any:
  """The JSON value of a run file.

  Raises:
    RunFileError: the file is not valid JSON (cut by a full disk, edited), naming
      it and `hint` (what to do).
  """
  with open(path, "rb") as f:
    data = f.read()
  try:
    return json.loads(data.decode("utf-8"))
  except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
    detail = first_line(str(error))[:120]
    raise RunFileError(f"{path} is damaged (not valid JSON: {detail}); {hint}") from None


def first_line(text: str) -> str:
  return next((line.strip() for line in text.splitlines() if line.strip()), "")


def run_dir_of(runs_dir: str, model: str, seed: int) -> str:
  """The folder of one run of a grid: runs_dir/<model>/seed<seed>."""
  return os.path.join(runs_dir, model, f"seed{seed}")


def write_config(run_dir: str, config: "alter_config.TrainConfig") -> None:
  os.makedirs(run_dir, exist_ok=True)
  write_text_atomic(os.path.join(run_dir, CONFIG_FILE), config.to_json())


def write_results(run_dir: str, results: dict) -> None:
  """Writes results.json, then the run's hashes.json (`write_hashes`)."""
  write_json_atomic(os.path.join(run_dir, RESULTS_FILE), results)
  write_hashes(run_dir)


def write_hashes(run_dir: str) -> None:
  """Writes hashes.json: the SHA-256 of each of the run's `HASHED_FILES`. Written
  last, when the run is finished, and again by whatever changes a finished run
  (test ranks ranked later, an alpha sweep)."""
  hashes = {name: schema.file_sha256(os.path.join(run_dir, name)) for name in HASHED_FILES
            if os.path.isfile(os.path.join(run_dir, name))}
  write_json_atomic(os.path.join(run_dir, HASHES_FILE), {"sha256": hashes})


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


def remove_run(run_dir: str) -> None:
  """Deletes what a run leaves in run_dir (nothing else there is touched)."""
  for name in RUN_FILES:
    path = os.path.join(run_dir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)


def run_conflicts(config: alter_config.TrainConfig,
                  manifest: dict) -> Tuple[List[str], Optional[dict]]:
  """How the run already in config.run_dir differs from `config`.

  Returns:
    (differences, results): a list of "--flag=old (now new)" strings (plus a
    line per floor parameter whose default changed since a floor run,
    `floor_defaults.conflicts`, and per data file that changed,
    `data_conflicts`), empty when the run matches
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
  if results is not None:
    # a floor's parameters are module defaults, not flags: compare what it ran with
    changed += floor_defaults.conflicts(config.model, results.get("floor_parameters"))
    changed += data_conflicts(config.run_dir, results, config.data_dir, manifest)
  return changed, results


# Beside archived runs (and copied into a grid's runs_dir when they are
# restored): {"identities": {old content_hash: data_identity}} for runs trained
# before results.json recorded `data_identity` (issue 33); `data_conflicts`.
MIGRATION_FILE = "data_identities.json"


def legacy_identities(run_dir: str) -> Dict[str, dict]:
  """The `MIGRATION_FILE` entries found in run_dir and its two parent folders
  (a grid's run_dir is runs_dir/<model>/seed<k>)."""
  found: Dict[str, dict] = {}
  folder = os.path.abspath(run_dir)
  for _ in range(3):
    path = os.path.join(folder, MIGRATION_FILE)
    if os.path.exists(path):
      for old_hash, identity in read_json(path).get("identities", {}).items():
        found.setdefault(old_hash, identity)
    folder = os.path.dirname(folder)
  return found


def data_conflicts(run_dir: str, results: dict, data_dir: str, manifest: dict) -> List[str]:
  """How the dataset in data_dir differs from the one the finished run was
  trained on: exactly on sessions, vocabulary and split, within float rounding
  on the text table (`formats.identity.compare`); empty when it is the same.

  A run trained before results.json recorded `data_identity` has only the
  old `data_content_hash` (every file's bytes): it matches when the hash is
  the current data's, or when a `MIGRATION_FILE` beside it maps the hash to an
  identity that matches.
  """
  recorded = results.get("data_identity")
  if not recorded:
    old_hash = results.get("data_content_hash")
    if old_hash == manifest.get("content_hash"):
      return []
    recorded = legacy_identities(run_dir).get(str(old_hash))
    if not recorded:
      return [f"data content_hash {old_hash} (now {manifest.get('content_hash')}; the run "
              f"records no data_identity and no {MIGRATION_FILE} beside it maps that hash)"]
  return data_identity.compare(recorded, data_identity.current_identity(data_dir, manifest))


def dataset_identity(data_dir: str, manifest: dict) -> dict:
  """What a run records of its data (results.json `data_identity`)."""
  return data_identity.current_identity(data_dir, manifest)


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
