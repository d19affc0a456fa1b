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
written). An archived run is checked before it is restored into a grid
(`check_archived_run`): its files against hashes.json where it has one, and
every test metric of its results.json recomputed from its test_ranks.npz.
"""

import dataclasses
import json
import os
import shutil
import subprocess
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

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
# archive of finished runs keeps (`archive_run`; no weights, backup or logs).
ARCHIVED_FILES = (CONFIG_FILE, HISTORY_FILE, RESULTS_FILE, TEST_RANKS_FILE, SWEEP_FILE,
                  HASHES_FILE)
# A metric of results.json and the one recomputed from the ranks may differ by
# float32 rounding (at most 1.2e-7 over the 45 archived Online Retail runs); the
# report shows two decimals of a percentage (1e-4).
FIGURE_TOLERANCE = 1e-5
# TFRS's hits may put a target tied to float precision one place off (BUILD_NOTES.md,
# "Evaluation"): tfrs_hits@K is held to hits@K of the ranks within 0.1 point.
TFRS_TOLERANCE = 1e-3
DAMAGED_RUN_HINT = ("train that run again (delete its folder, or train with --overwrite), or "
                    "put the file back from a copy (e.g. the grid's --archive_dir)")
DAMAGED_ARCHIVE_HINT = ("the archived run was edited or damaged: put it back from version "
                        "control (git checkout -- <folder>) or delete that folder to train the "
                        "run again; nothing was restored")


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
    detail = _first_line(str(error))[:120]
    raise RunFileError(f"{path} is damaged (not valid JSON: {detail}); {hint}") from None


def _first_line(text: str) -> str:
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


def check_hashes(run_dir: str, hint: str = DAMAGED_ARCHIVE_HINT) -> bool:
  """Checks the files of a run (or an archived run) against its hashes.json.

  A listed file that an archive does not keep (the weights) may be absent;
  every other listed file must be there and match, and no archived file may
  be there unlisted.

  Returns:
    Whether the run has a hashes.json (runs archived before it existed do not).

  Raises:
    RunFileError: naming the file that differs, is missing or is unlisted.
  """
  path = os.path.join(run_dir, HASHES_FILE)
  if not os.path.exists(path):
    return False
  listed = read_json(path, hint)
  hashes = listed.get("sha256") if isinstance(listed, dict) else None
  if not isinstance(hashes, dict):
    raise RunFileError(f"{path} is damaged (no \"sha256\" table); {hint}")
  for name, expected in sorted(hashes.items()):
    file_path = os.path.join(run_dir, name)
    if not os.path.isfile(file_path):
      if name in ARCHIVED_FILES:
        raise RunFileError(f"{file_path} is missing (listed in {path}); {hint}")
      continue
    if schema.file_sha256(file_path) != expected:
      raise RunFileError(f"{file_path} does not match its SHA-256 in {path}; {hint}")
  for name in HASHED_FILES:
    if name not in hashes and os.path.isfile(os.path.join(run_dir, name)):
      raise RunFileError(f"{os.path.join(run_dir, name)} is not listed in {path} (added "
                         f"after the run finished); {hint}")
  return True


def _metric_cutoff(name: str) -> Optional[Tuple[str, int]]:
  """("hits" | "ndcg" | "mrr" | "tfrs_hits", K) of a metric name, else None."""
  kind, _, k = name.partition("@")
  if kind in ("hits", "ndcg", "mrr", "tfrs_hits") and k.isdigit() and int(k) > 0:
    return kind, int(k)
  return None


def check_figures(run_dir: str, hint: str = DAMAGED_ARCHIVE_HINT) -> int:
  """Recomputes every test metric of results.json from test_ranks.npz.

  Ranks are 1-based and capped at max(ks, mrr_k) + 1 (config.json), so every
  Hits@K, NDCG@K and MRR@K up to that cap is recomputed exactly
  (`training.evaluation.metrics_from_ranks`); tfrs_hits@K is held to the
  recomputed hits@K within `TFRS_TOLERANCE`.

  Returns:
    How many figures were checked.

  Raises:
    RunFileError: naming the file and the metric that disagree (or cannot be
      recomputed).
  """
  results_path = os.path.join(run_dir, RESULTS_FILE)
  ranks_path = os.path.join(run_dir, TEST_RANKS_FILE)
  results = read_json(results_path, hint)
  test = results.get("test") if isinstance(results, dict) else None
  if test is None or test == {}:
    return 0
  if not isinstance(test, dict):
    raise RunFileError(f"{results_path}: \"test\" is not a table of heads; {hint}")
  if not os.path.exists(ranks_path):
    raise RunFileError(f"{results_path} has test figures but {ranks_path} is missing, so "
                       f"they cannot be checked; {hint}")
  config = read_json(os.path.join(run_dir, CONFIG_FILE), hint)
  cap = max(list(config.get("ks", (10, 20))) + [config.get("mrr_k", 20)])
  try:
    with np.load(ranks_path, allow_pickle=False) as arrays:
      ranks: Dict[str, np.ndarray] = {name: arrays[name] for name in arrays.files}
  except (OSError, ValueError, EOFError) as error:
    raise RunFileError(f"{ranks_path} cannot be read ({_first_line(str(error))[:120]}); "
                       f"{hint}") from None
  checked = 0
  for head, metrics in sorted(test.items()):
    where = f"{results_path}: test {head}"
    head_ranks = ranks.get(head)
    if head_ranks is None or head_ranks.ndim != 1 or (
        head_ranks.size and (head_ranks.min() < 1 or head_ranks.max() > cap + 1)):
      raise RunFileError(f"{where}: {ranks_path} holds no valid ranks of that head; {hint}")
    if "targets" in ranks and ranks["targets"].shape != head_ranks.shape:
      raise RunFileError(f"{ranks_path}: {head} ranks and targets differ in length; {hint}")
    for name, value in sorted(metrics.items()):
      parsed = _metric_cutoff(name)
      if parsed is None or parsed[1] > cap or not isinstance(value, (int, float)):
        raise RunFileError(f"{where} {name} cannot be recomputed from {ranks_path} "
                           f"(ranks go to {cap}); {hint}")
      kind, k = parsed
      recomputed = _metric_of_ranks(head_ranks, "hits" if kind == "tfrs_hits" else kind, k)
      tolerance = TFRS_TOLERANCE if kind == "tfrs_hits" else FIGURE_TOLERANCE
      if not abs(float(value) - recomputed) <= tolerance:
        raise RunFileError(f"{where} {name} is {value:.6g} but {ranks_path} gives "
                           f"{recomputed:.6g}; {hint}")
      checked += 1
  return checked


def _metric_of_ranks(ranks: npt.ArrayLike, kind: str, k: int) -> float:
  """Hits@k, NDCG@k or MRR@k of 1-based ranks (numpy, as
  `training.evaluation.metrics_from_ranks`, without loading TensorFlow)."""
  ranks = np.asarray(ranks, dtype=np.float64)
  if not ranks.size:
    return 0.0
  hit = ranks <= k
  if kind == "hits":
    return float(hit.mean())
  if kind == "ndcg":
    return float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
  return float(np.where(hit, 1.0 / ranks, 0.0).mean())


def check_archived_run(run_dir: str) -> str:
  """Everything `restore` checks of an archived run before copying it: its
  JSON files parse, its test figures are recomputed from its ranks
  (`check_figures`), and its files match its hashes.json (where it has one).

  Returns:
    What was checked, for the log.

  Raises:
    RunFileError: naming the file (and metric) and what to do.
  """
  for name in (CONFIG_FILE, RESULTS_FILE, HISTORY_FILE, SWEEP_FILE):
    path = os.path.join(run_dir, name)
    if os.path.exists(path):
      read_json(path, DAMAGED_ARCHIVE_HINT)
    elif name in (CONFIG_FILE, RESULTS_FILE):
      raise RunFileError(f"{path} is missing; {DAMAGED_ARCHIVE_HINT}")
  figures = check_figures(run_dir)  # first: an edited figure is named as such
  hashed = check_hashes(run_dir)
  return f"{figures} figures recomputed" + (", files match hashes.json" if hashed else "")


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
  if os.path.exists(target_results):
    try:
      same = read_json(target_results) == read_json(results_path)
    except RunFileError:  # a damaged copy there: replaced below
      same = False
    if same:
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


def write_migration(folder: str, data_dir: str) -> dict:
  """Records in folder/`MIGRATION_FILE` the identity of the dataset in data_dir
  under its content_hash (kept entries stay); run it where the old runs' data
  was prepared byte for byte (same content_hash). Returns the file's content."""
  with open(os.path.join(data_dir, "manifest.json"), encoding="utf-8") as f:
    manifest = json.load(f)
  path = os.path.join(folder, MIGRATION_FILE)
  content = read_json(path) if os.path.exists(path) else {}
  content["about"] = (
      "runs trained before results.json recorded data_identity (issue 33) name their "
      "data by content_hash (every file's bytes, the float text table included); this "
      "maps such a hash to the identity that machines agree on "
      "(alterrec_tf/formats/identity.py, alterrec_tf.runs.data_conflicts)")
  content.setdefault("identities", {})[manifest["content_hash"]] = (
      data_identity.dataset_identity(data_dir, manifest))
  write_json_atomic(path, content)
  return content


def copy_migration(archive_dir: str, runs_dir: str) -> bool:
  """Merges archive_dir's `MIGRATION_FILE` into runs_dir's (restored runs are
  checked against it there). Returns whether archive_dir has one."""
  source = os.path.join(archive_dir, MIGRATION_FILE)
  if not os.path.exists(source):
    return False
  target = os.path.join(runs_dir, MIGRATION_FILE)
  content = read_json(target) if os.path.exists(target) else {}
  archived = read_json(source)
  content["about"] = archived.get("about", content.get("about"))
  identities = content.setdefault("identities", {})
  for old_hash, identity in archived.get("identities", {}).items():
    identities.setdefault(old_hash, identity)
  os.makedirs(runs_dir, exist_ok=True)
  write_json_atomic(target, content)
  return True


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
