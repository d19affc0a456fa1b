"""Versioned export folders for TF Serving: choose, stage, measure, publish.

A model server watches `export_dir/<N>/`. An export is written under a hidden
staging folder inside export_dir and renamed to its version folder only once
it is complete and checked, so the server never sees a partial version and a
failed export leaves nothing behind (`staging`).
"""

import contextlib
import json
import os
import shutil
import tempfile
from typing import Iterator, List, Optional, Tuple

import numpy as np

from alterrec_tf.serving.build import ExportError

EXPORT_INFO_FILE = "alterrec_export.json"
ASSETS_EXTRA = "assets.extra"


def existing_versions(export_dir: str) -> List[int]:
  """The integer version folders of `export_dir`, ascending."""
  if not os.path.isdir(export_dir):
    return []
  return sorted(int(n) for n in os.listdir(export_dir)
                if n.isdigit() and os.path.isdir(os.path.join(export_dir, n)))


def choose_version(export_dir: str, version: Optional[int]) -> Tuple[int, str]:
  """(version, its final folder): `version`, or the next after the existing ones.

  Raises:
    ExportError: a version below 1, or one that exists.
  """
  versions = existing_versions(export_dir)
  version = int(version) if version else (versions[-1] + 1 if versions else 1)
  if version < 1:
    raise ExportError(f"--version={version}: TF Serving versions are integers >= 1")
  final = os.path.join(export_dir, str(version))
  if os.path.exists(final):
    raise ExportError(f"{final} exists; choose another --version or leave it unset "
                      "for the next one")
  return version, final


@contextlib.contextmanager
def staging(export_dir: str, version: int) -> Iterator[str]:
  """A hidden folder inside `export_dir` for one export, removed on exit (the
  published version has been renamed out of it by then)."""
  os.makedirs(export_dir, exist_ok=True)
  folder = tempfile.mkdtemp(prefix=f".tmp-export-{version}-", dir=export_dir)
  try:
    yield folder
  finally:
    shutil.rmtree(folder, ignore_errors=True)


def publish(target: str, final: str, info: dict) -> None:
  """Writes `info` to target's assets.extra and renames target to `final`."""
  os.makedirs(os.path.join(target, ASSETS_EXTRA), exist_ok=True)
  with open(os.path.join(target, ASSETS_EXTRA, EXPORT_INFO_FILE), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2, sort_keys=True)
  if os.path.exists(final):
    raise ExportError(f"{final} appeared during the export (another exporter?)")
  os.rename(target, final)


# --- sizes ---------------------------------------------------------------------------
def folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def checkpoint_variable_bytes(saved_model_dir: str) -> int:
  """Sum of nbytes of every variable stored in a SavedModel's checkpoint."""
  import tensorflow as tf  # callers check before TF
  prefix = os.path.join(saved_model_dir, "variables", "variables")
  reader = tf.train.load_checkpoint(prefix)
  total = 0
  for name in reader.get_variable_to_shape_map():
    if name == "_CHECKPOINTABLE_OBJECT_GRAPH":
      continue
    value = reader.get_tensor(name)
    total += (sum(len(v) for v in np.ravel(value)) if value.dtype == object
              else np.asarray(value).nbytes)
  return total


def size_info(target: str, weights_file: Optional[str]) -> dict:
  """Byte sizes of a staged SavedModel (and of the training weights it came from)."""
  return {
      "variables_bytes": folder_bytes(os.path.join(target, "variables")),
      "weights_bytes": checkpoint_variable_bytes(target),
      "saved_model_pb_bytes": os.path.getsize(os.path.join(target, "saved_model.pb")),
      "training_weights_file_bytes": (os.path.getsize(weights_file) if weights_file
                                      and os.path.exists(weights_file) else None),
  }
