"""Archived runs (a grid's `--archive_dir`, the committed benchmark runs).

An archived run is checked before it is restored into a grid
(`check_archived_run`): its files against hashes.json where it has one, and
every test metric of its results.json recomputed from its test_ranks.npz
(`check_figures`). `archive_run` copies a finished run's `runs.ARCHIVED_FILES`
both ways (archiving, restoring), never leaving a mix of old and new files.
Archives older than results.json's `data_identity` keep a `runs.MIGRATION_FILE`
beside them (`write_migration`, `copy_migration`).
"""

import json
import os
import shutil
from typing import Dict, Optional, Tuple

import numpy as np
import numpy.typing as npt

from alterrec_tf import runs
from alterrec_tf.formats import identity as data_identity
from alterrec_tf.formats import schema

# A metric of results.json and the one recomputed from the ranks may differ by
# float32 rounding (at most 1.2e-7 over the 45 archived Online Retail runs); the
# report shows two decimals of a percentage (1e-4).
FIGURE_TOLERANCE = 1e-5
# TFRS's hits may put a target tied to float precision one place off (BUILD_NOTES.md,
# "Evaluation"): tfrs_hits@K is held to hits@K of the ranks within 0.1 point.
TFRS_TOLERANCE = 1e-3
DAMAGED_ARCHIVE_HINT = ("the archived run was edited or damaged: put it back from version "
                        "control (git checkout -- <folder>) or delete that folder to train the "
                        "run again; nothing was restored")


def check_hashes(run_dir: str, hint: str = DAMAGED_ARCHIVE_HINT) -> bool:
  """Checks the files of a run (or an archived run) against its hashes.json.

  A listed file that an archive does not keep (the weights) may be absent;
  every other listed file must be there and match, and no archived file may
  be there unlisted.

  Returns:
    Whether the run has a hashes.json (runs archived before it existed do not).

  Raises:
    runs.RunFileError: naming the file that differs, is missing or is unlisted.
  """
  path = os.path.join(run_dir, runs.HASHES_FILE)
  if not os.path.exists(path):
    return False
  listed = runs.read_json(path, hint)
  hashes = listed.get("sha256") if isinstance(listed, dict) else None
  if not isinstance(hashes, dict):
    raise runs.RunFileError(f"{path} is damaged (no \"sha256\" table); {hint}")
  for name, expected in sorted(hashes.items()):
    file_path = os.path.join(run_dir, name)
    if not os.path.isfile(file_path):
      if name in runs.ARCHIVED_FILES:
        raise runs.RunFileError(f"{file_path} is missing (listed in {path}); {hint}")
      continue
    if schema.file_sha256(file_path) != expected:
      raise runs.RunFileError(f"{file_path} does not match its SHA-256 in {path}; {hint}")
  for name in runs.HASHED_FILES:
    if name not in hashes and os.path.isfile(os.path.join(run_dir, name)):
      raise runs.RunFileError(f"{os.path.join(run_dir, name)} is not listed in {path} (added "
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
    runs.RunFileError: naming the file and the metric that disagree (or cannot be
      recomputed).
  """
  results_path = os.path.join(run_dir, runs.RESULTS_FILE)
  ranks_path = os.path.join(run_dir, runs.TEST_RANKS_FILE)
  results = runs.read_json(results_path, hint)
  test = results.get("test") if isinstance(results, dict) else None
  if test is None or test == {}:
    return 0
  if not isinstance(test, dict):
    raise runs.RunFileError(f"{results_path}: \"test\" is not a table of heads; {hint}")
  if not os.path.exists(ranks_path):
    raise runs.RunFileError(f"{results_path} has test figures but {ranks_path} is missing, so "
                       f"they cannot be checked; {hint}")
  config = runs.read_json(os.path.join(run_dir, runs.CONFIG_FILE), hint)
  cap = max(list(config.get("ks", (10, 20))) + [config.get("mrr_k", 20)])
  try:
    with np.load(ranks_path, allow_pickle=False) as arrays:
      ranks: Dict[str, np.ndarray] = {name: arrays[name] for name in arrays.files}
  except (OSError, ValueError, EOFError) as error:
    raise runs.RunFileError(f"{ranks_path} cannot be read ({runs.first_line(str(error))[:120]}); "
                       f"{hint}") from None
  checked = 0
  for head, metrics in sorted(test.items()):
    where = f"{results_path}: test {head}"
    head_ranks = ranks.get(head)
    if head_ranks is None or head_ranks.ndim != 1 or (
        head_ranks.size and (head_ranks.min() < 1 or head_ranks.max() > cap + 1)):
      raise runs.RunFileError(f"{where}: {ranks_path} holds no valid ranks of that head; {hint}")
    if "targets" in ranks and ranks["targets"].shape != head_ranks.shape:
      raise runs.RunFileError(f"{ranks_path}: {head} ranks and targets differ in length; {hint}")
    for name, value in sorted(metrics.items()):
      parsed = _metric_cutoff(name)
      if parsed is None or parsed[1] > cap or not isinstance(value, (int, float)):
        raise runs.RunFileError(f"{where} {name} cannot be recomputed from {ranks_path} "
                           f"(ranks go to {cap}); {hint}")
      kind, k = parsed
      recomputed = _metric_of_ranks(head_ranks, "hits" if kind == "tfrs_hits" else kind, k)
      tolerance = TFRS_TOLERANCE if kind == "tfrs_hits" else FIGURE_TOLERANCE
      if not abs(float(value) - recomputed) <= tolerance:
        raise runs.RunFileError(f"{where} {name} is {value:.6g} but {ranks_path} gives "
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
    runs.RunFileError: naming the file (and metric) and what to do.
  """
  for name in (runs.CONFIG_FILE, runs.RESULTS_FILE, runs.HISTORY_FILE, runs.SWEEP_FILE):
    path = os.path.join(run_dir, name)
    if os.path.exists(path):
      runs.read_json(path, DAMAGED_ARCHIVE_HINT)
    elif name in (runs.CONFIG_FILE, runs.RESULTS_FILE):
      raise runs.RunFileError(f"{path} is missing; {DAMAGED_ARCHIVE_HINT}")
  figures = check_figures(run_dir)  # first: an edited figure is named as such
  hashed = check_hashes(run_dir)
  return f"{figures} figures recomputed" + (", files match hashes.json" if hashed else "")


def archive_run(run_dir: str, archive_run_dir: str) -> bool:
  """Copies a finished run's `runs.ARCHIVED_FILES` to archive_run_dir, replacing
  what was there whole (through a temporary folder, so an interrupted copy
  leaves the old files or the new ones, never a mix).

  Works both ways: archiving a run and restoring an archived run into a grid.

  Returns:
    Whether anything was copied: False when run_dir holds no results.json (an
    unfinished run is never archived) or archive_run_dir already holds the same
    results.json.
  """
  results_path = os.path.join(run_dir, runs.RESULTS_FILE)
  if not os.path.exists(results_path):
    return False
  target_results = os.path.join(archive_run_dir, runs.RESULTS_FILE)
  if os.path.exists(target_results):
    try:
      same = runs.read_json(target_results) == runs.read_json(results_path)
    except runs.RunFileError:  # a damaged copy there: replaced below
      same = False
    if same:
      return False
  staging = archive_run_dir.rstrip(os.sep) + ".tmp"  # beside it: same file system
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  for name in runs.ARCHIVED_FILES:
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


def write_migration(folder: str, data_dir: str) -> dict:
  """Records in folder/`runs.MIGRATION_FILE` the identity of the dataset in data_dir
  under its content_hash (kept entries stay); run it where the old runs' data
  was prepared byte for byte (same content_hash). Returns the file's content."""
  with open(os.path.join(data_dir, "manifest.json"), encoding="utf-8") as f:
    manifest = json.load(f)
  path = os.path.join(folder, runs.MIGRATION_FILE)
  content = runs.read_json(path) if os.path.exists(path) else {}
  content["about"] = (
      "runs trained before results.json recorded data_identity (issue 33) name their "
      "data by content_hash (every file's bytes, the float text table included); this "
      "maps such a hash to the identity that machines agree on "
      "(alterrec_tf/formats/identity.py, alterrec_tf.runs.data_conflicts)")
  content.setdefault("identities", {})[manifest["content_hash"]] = (
      data_identity.dataset_identity(data_dir, manifest))
  runs.write_json_atomic(path, content)
  return content


def copy_migration(archive_dir: str, runs_dir: str) -> bool:
  """Merges archive_dir's `runs.MIGRATION_FILE` into runs_dir's (restored runs are
  checked against it there). Returns whether archive_dir has one."""
  source = os.path.join(archive_dir, runs.MIGRATION_FILE)
  if not os.path.exists(source):
    return False
  target = os.path.join(runs_dir, runs.MIGRATION_FILE)
  content = runs.read_json(target) if os.path.exists(target) else {}
  archived = runs.read_json(source)
  content["about"] = archived.get("about", content.get("about"))
  identities = content.setdefault("identities", {})
  for old_hash, identity in archived.get("identities", {}).items():
    identities.setdefault(old_hash, identity)
  os.makedirs(runs_dir, exist_ok=True)
  runs.write_json_atomic(target, content)
  return True
