"""Export a trained run as a TF Serving SavedModel (one fused top-K graph).

  python -m alterrec_tf.export --run_dir=runs/online_retail \\
      --export_dir=models/alterrec [--k=20] [--exclude_session_items] \\
      [--new_items=new_items/] [--version=N]

writes models/alterrec/N/ (N = the next integer version unless --version):

  saved_model.pb, variables/        the graph of `alterrec_tf.serving.ServingModule`
  assets/serving_vocab.tsv          index, raw id, title (no header), incl. new items
  assets.extra/tf_serving_warmup_requests   PredictionLog records TF Serving replays
  assets.extra/alterrec_export.json what was exported (k, alpha, items, sizes, ...)

The version folder is written under a hidden temporary name inside export_dir,
checked (loaded back and compared with the Keras model) and then renamed, so a
model server watching export_dir never sees a partial version, and a failed
export leaves nothing behind (also on a full disk). Before TensorFlow is
loaded, the command checks the run, the dataset (the SHA-256 of every shard and
table, --verify_data), --k against the catalogue and that export_dir can be
written (`check_request`); a refused command prints one line (`alterrec_tf.cli`).
This module does not import data_tools, pandas or torch (TensorFlow itself
imports pandas where it is installed).
"""

import json
import os
import shutil
import tempfile
import time
from typing import List, Optional

import numpy as np

from alterrec_tf import cli
from alterrec_tf import config as alter_config
from alterrec_tf import runs as alter_runs
from alterrec_tf.formats import new_items as alter_new_items
from alterrec_tf.formats import schema
from alterrec_tf.models import names as model_names

EXPORT_INFO_FILE = "alterrec_export.json"
WARMUP_FILE = "tf_serving_warmup_requests"
ASSETS_EXTRA = "assets.extra"
WEIGHTS_FILE = alter_runs.BEST_WEIGHTS_FILE


class ExportError(ValueError):
  """An export that cannot be done as asked."""


# --- loading a run ------------------------------------------------------------------
def load_config(run_dir: str) -> "alter_config.TrainConfig":
  try:
    return alter_runs.load_config(run_dir)
  except alter_config.ConfigError as error:
    raise ExportError(str(error)) from None


def check_run(run_dir: str, data_dir: Optional[str] = None, verify_data: bool = True,
              weights: bool = True):
  """(TrainConfig, manifest, data_dir) of an exportable run, its dataset
  verified (`verify_data`) and (`weights`) its best weights present; nothing is
  built, TensorFlow is not loaded.

  Raises:
    ExportError, DataError: one line naming the run, file or flag.
  """
  config = load_config(run_dir)
  if config.model not in model_names.ALTERREC_TOWERS:
    raise ExportError(f"{run_dir} is a --model={config.model} run, which cannot be "
                      f"exported; exportable: {', '.join(model_names.ALTERREC_TOWERS)}")
  data_dir = data_dir or config.data_dir
  manifest = schema.load_manifest(data_dir, verify_hashes=verify_data)
  if weights:
    check_weights(run_dir)
  return config, manifest, data_dir


def check_weights(run_dir: str) -> None:
  """Refuses a run without best weights (one that never finished an epoch)."""
  weights = os.path.join(run_dir, WEIGHTS_FILE)
  if not os.path.exists(weights):
    reason = ("the run has not finished an epoch" if not alter_runs.load_results(run_dir)
              else "the run finished without best weights")
    raise ExportError(f"{weights} is missing ({reason}); train it to the end with "
                      "python -m alterrec_tf.train and export again")


def check_k(k: int, manifest: dict, data_dir: str, new_items: Optional[str] = None) -> None:
  """Refuses a list length outside [1, items of the catalogue].

  With --new_items the upper end is checked again once the table is read.
  """
  catalogue = manifest["num_items"] - 1
  if k < 1 or (k > catalogue and not new_items):
    raise ExportError(f"--k={k} must be in [1, {catalogue}] (the items of {data_dir})")


def check_request(run_dir: str, export_dir: Optional[str], data_dir: Optional[str] = None,
                  k: int = 20, version: Optional[int] = None, new_items: Optional[str] = None,
                  verify_data: bool = True):
  """Everything `export` checks before TensorFlow is loaded (about a second).

  Returns:
    (TrainConfig, manifest, data_dir) as `check_run`.

  Raises:
    CommandError, ExportError, DataError: one line naming the flag, run or file.
  """
  if not export_dir:
    raise cli.CommandError("--export_dir is required (TF Serving's model base folder)")
  if version is not None and version < 0:
    raise ExportError(f"--version={version}: TF Serving versions are integers >= 1 "
                      "(0 = the next one)")
  if k < 1:  # before reading anything
    raise ExportError(f"--k={k} must be at least 1 (items per recommendation list)")
  config, manifest, data_dir = check_run(run_dir, data_dir, verify_data, weights=False)
  check_k(k, manifest, data_dir, new_items)
  cli.check_writable(export_dir, "--export_dir")
  check_weights(run_dir)
  return config, manifest, data_dir


def load_run(run_dir: str, data_dir: Optional[str] = None, verify_data: bool = True,
             checked=None):
  """(Keras model with the best weights, TrainConfig, manifest, data_dir) of a run.

  Args:
    checked: the result of `check_run` / `check_request` (not checked again).
  """
  from alterrec_tf.models import registry as models  # pylint: disable=g-import-not-at-top
  config, manifest, data_dir = checked or check_run(run_dir, data_dir, verify_data)
  text_embeddings = schema.load_text_embeddings(data_dir, manifest)
  weights = os.path.join(run_dir, WEIGHTS_FILE)
  model = models.build_model(config, manifest, text_embeddings)
  model.load_weights(weights)
  return model, config, manifest, data_dir


# --- building the serving module ------------------------------------------------------
def project_new_items(model, embeddings: np.ndarray) -> np.ndarray:
  """Text item vectors [n, d] of new SBERT rows, as TextItemEncoder in eval mode."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  encoder = model.text_tower.item_encoder
  projected = encoder.norm(encoder.projection(tf.constant(embeddings, tf.float32)))
  return np.asarray(projected, dtype=np.float32)


def read_new_items(path: str, model, manifest: dict, vocab_rows) -> alter_new_items.NewItems:
  if "text" not in model.tower_names:
    raise ExportError(f"--new_items needs a text tower; this run is {model.config.model}")
  table = alter_new_items.read(path, text_dim=manifest.get("text_dim"))
  known = {raw_id: index for index, (raw_id, _) in enumerate(vocab_rows)}
  clashes = [raw_id for raw_id in table.raw_ids if raw_id in known]
  if clashes:
    shown = ", ".join(repr(c) for c in clashes[:5])
    more = f" and {len(clashes) - 5} more" if len(clashes) > 5 else ""
    raise ExportError(f"--new_items={path}: item {shown}{more} already in the trained "
                      f"catalogue (index {known[clashes[0]]}); list only new items")
  trained_model = manifest.get("text_model") or ""
  if table.text_model and trained_model and table.text_model != trained_model:
    raise ExportError(f"--new_items={path} was embedded with {table.text_model!r}, the "
                      f"dataset with {trained_model!r}; embed with the same model")
  return table


def write_vocab(path: str, rows) -> None:
  """index TAB raw id TAB title, no header (the lookup tables read it)."""
  with open(path, "w", encoding="utf-8") as f:
    for index, (raw_id, title) in enumerate(rows):
      if not raw_id or any(c in raw_id for c in "\t\r\n"):
        raise ExportError(f"vocabulary row {index}: raw id {raw_id!r} cannot be served "
                          "(empty, or a tab or line break)")
      f.write(f"{index}\t{raw_id}\t{alter_new_items.clean_title(title)}\n")


def serving_parts(model, config, num_items: int, new_rows: Optional[np.ndarray] = None):
  """(item matrix [V, D], [TowerPart]) of a model, with optional new text rows."""
  from alterrec_tf.serving import module as serving  # pylint: disable=g-import-not-at-top
  scales = serving.tower_scales(config, model.tower_names)
  num_new = 0 if new_rows is None else len(new_rows)
  blocks, parts = [], []
  for name in model.tower_names:
    tower = model.tower(name)
    matrix = np.asarray(tower.item_matrix(training=False), dtype=np.float32)
    if name == "id":
      matrix = np.concatenate([matrix, np.zeros([num_new, matrix.shape[1]], np.float32)])
    elif num_new:
      matrix = np.concatenate([matrix, new_rows])
    blocks.append(matrix)
    parts.append(serving.TowerPart(name, tower.session_encoder, matrix.shape[1], scales[name],
                                   num_items if name == "id" else num_items + num_new))
  return np.concatenate(blocks, axis=1), parts


def build_module(model, config, manifest, data_dir: str, scratch_dir: str, k: int,
                 exclude_session_items: bool, new_items_path: Optional[str] = None):
  """(`ServingModule` of a loaded run, vocabulary rows it serves, new text rows or None)."""
  from alterrec_tf.data import windows as alter_data  # pylint: disable=g-import-not-at-top
  from alterrec_tf.serving import module as serving  # pylint: disable=g-import-not-at-top
  num_items = manifest["num_items"]
  rows = schema.read_vocab(data_dir)
  if len(rows) != num_items:
    raise ExportError(f"{data_dir}/{schema.VOCAB_FILE} has {len(rows)} rows, the "
                      f"manifest says {num_items} items")
  new_rows = None
  if new_items_path:
    table = read_new_items(new_items_path, model, manifest, rows)
    new_rows = project_new_items(model, table.embeddings)
    rows = rows + [[raw_id, title] for raw_id, title in zip(table.raw_ids, table.titles)]
  if not 1 <= k <= len(rows) - 1:
    raise ExportError(f"--k={k} must be in [1, {len(rows) - 1}] (the items of {data_dir}"
                      + (f" and {new_items_path}" if new_items_path else "") + ")")
  matrix, parts = serving_parts(model, config, num_items, new_rows)
  counts = np.asarray(alter_data.item_counts(
      schema.split_files(data_dir, manifest, "train"), num_items), dtype=np.float32)
  popularity = np.concatenate([counts, np.zeros([len(rows) - num_items], np.float32)])
  vocab_path = os.path.join(scratch_dir, serving.VOCAB_ASSET)
  write_vocab(vocab_path, rows)
  module = serving.ServingModule(matrix, parts, popularity, vocab_path, config.max_len, k,
                                 exclude_session_items)
  return module, rows, new_rows


# --- reference and check ------------------------------------------------------------
def folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def checkpoint_variable_bytes(saved_model_dir: str) -> int:
  """Sum of nbytes of every variable stored in a SavedModel's checkpoint."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
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


def existing_versions(export_dir: str) -> List[int]:
  if not os.path.isdir(export_dir):
    return []
  return sorted(int(n) for n in os.listdir(export_dir)
                if n.isdigit() and os.path.isdir(os.path.join(export_dir, n)))


# --- export -----------------------------------------------------------------------------
def export(run_dir: str, export_dir: str, data_dir: Optional[str] = None,
           version: Optional[int] = None, k: int = 20,
           exclude_session_items: Optional[bool] = None,
           new_items: Optional[str] = None, model_name: Optional[str] = None,
           warmup: bool = True, verify: bool = True, loaded_run=None,
           verify_data: bool = True) -> dict:
  """Exports `run_dir` as version `version` (default: next) of `export_dir`.

  Args:
    exclude_session_items: never recommend an item of the request; None: as the
      run was trained and evaluated (its --seen_items).
    loaded_run: an already loaded (model, config, manifest, data_dir) (tests).
    verify_data: check the dataset's files against its manifest hashes first.

  Returns:
    The export info (also written to assets.extra/alterrec_export.json), with
    "path" the final version folder.

  Raises:
    ExportError: the export cannot be done as asked, or writing it failed (a
      full disk): one line; nothing is left in export_dir.
  """
  start = time.perf_counter()
  if loaded_run is None:  # every check before TensorFlow is loaded
    checked = check_request(run_dir, export_dir, data_dir, k, version, new_items, verify_data)
    loaded_run = load_run(run_dir, checked=checked)
  model, config, manifest, data_dir = loaded_run
  check_k(k, manifest, data_dir, new_items)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from alterrec_tf.serving import check as export_check  # pylint: disable=g-import-not-at-top
  from alterrec_tf.serving import module as serving  # pylint: disable=g-import-not-at-top
  from alterrec_tf.serving import warmup as serving_warmup  # pylint: disable=g-import-not-at-top
  excluded_in_training = (
      alter_config.resolve_seen_items(config, manifest).seen_items == "exclude")
  if exclude_session_items is None:
    exclude_session_items = excluded_in_training
  elif excluded_in_training and not exclude_session_items:
    raise ExportError(
        f"{run_dir} was trained and evaluated with --seen_items=exclude: its scores of "
        "the session's own items were never trained; export it with session items "
        "excluded (leave --exclude_session_items unset)")
  versions = existing_versions(export_dir)
  version = int(version) if version else (versions[-1] + 1 if versions else 1)
  if version < 1:
    raise ExportError(f"--version={version}: TF Serving versions are integers >= 1")
  final = os.path.join(export_dir, str(version))
  if os.path.exists(final):
    raise ExportError(f"{final} exists; choose another --version or leave it unset "
                      "for the next one")
  model_name = model_name or os.path.basename(os.path.normpath(export_dir)) or "alterrec"
  os.makedirs(export_dir, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".tmp-export-{version}-", dir=export_dir)
  try:
    scratch = os.path.join(staging, "scratch")
    target = os.path.join(staging, "model")
    os.makedirs(scratch)
    module, rows, new_rows = build_module(model, config, manifest, data_dir, scratch, k,
                                          exclude_session_items, new_items)
    tf.saved_model.save(module, target, signatures=module.signatures())
    num_warmup = 0
    if warmup:
      num_warmup = serving_warmup.write_warmup(
          os.path.join(target, ASSETS_EXTRA, WARMUP_FILE), model_name,
          serving_warmup.warmup_requests(rows, module.popularity.numpy(), config.max_len, k))
    mismatches, checked = None, []
    if verify:
      checked = export_check.sample_sessions(data_dir, manifest)
      mismatches = export_check.verify_export(target, model, checked, k, new_rows, exclude_session_items)
      if mismatches:
        raise ExportError(f"the exported top-{k} differs from the Keras model's in "
                          f"{mismatches} places; nothing was exported")
    variables_bytes = folder_bytes(os.path.join(target, "variables"))
    weights_bytes = checkpoint_variable_bytes(target)
    info = {
        "version": version, "model_name": model_name, "run_dir": os.path.abspath(run_dir),
        "data_dir": os.path.abspath(data_dir), "model": config.model,
        "data_content_hash": manifest.get("content_hash"),
        "towers": list(model.tower_names), "alpha": config.alpha,
        "text_temperature": config.text_temperature, "embedding_dim": config.embedding_dim,
        "max_len": config.max_len, "k": k, "exclude_session_items": exclude_session_items,
        "num_items": len(rows), "num_trained_items": manifest["num_items"],
        "num_new_items": len(rows) - manifest["num_items"], "new_items": new_items or "",
        "signatures": list(serving.SIGNATURES), "warmup_requests": num_warmup,
        "verified_sessions": None if mismatches is None else len(checked),
        "variables_bytes": variables_bytes, "weights_bytes": weights_bytes,
        "saved_model_pb_bytes": os.path.getsize(os.path.join(target, "saved_model.pb")),
        "training_weights_file_bytes": (
            os.path.getsize(os.path.join(run_dir, WEIGHTS_FILE))
            if run_dir and os.path.exists(os.path.join(run_dir, WEIGHTS_FILE)) else None),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    info["total_bytes"] = folder_bytes(target) + len(json.dumps(info))
    os.makedirs(os.path.join(target, ASSETS_EXTRA), exist_ok=True)
    with open(os.path.join(target, ASSETS_EXTRA, EXPORT_INFO_FILE), "w", encoding="utf-8") as f:
      json.dump(info, f, indent=2, sort_keys=True)
    if os.path.exists(final):
      raise ExportError(f"{final} appeared during the export (another exporter?)")
    os.rename(target, final)
  except Exception as error:  # pylint: disable=broad-except
    problem = cli.io_problem(error)
    if problem is None:
      raise
    raise ExportError(f"writing the export failed, nothing was exported: {problem}") from error
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  info["path"] = final
  info["export_seconds"] = time.perf_counter() - start
  return info


def format_info(info: dict) -> str:
  ratio = info["variables_bytes"] / max(info["weights_bytes"], 1)
  lines = [
      f"exported {info['model']} ({'+'.join(info['towers'])}) to {info['path']}",
      f"  items: {info['num_items']} ({info['num_new_items']} cold-start), k={info['k']}, "
      f"exclude_session_items={info['exclude_session_items']}",
      f"  variables/: {info['variables_bytes'] / 1e6:.2f} MB; exported weights "
      f"(sum of nbytes): {info['weights_bytes'] / 1e6:.2f} MB; ratio {ratio:.3f}",
      f"  saved_model.pb: {info['saved_model_pb_bytes'] / 1e6:.2f} MB; whole version "
      f"folder: {info['total_bytes'] / 1e6:.2f} MB",
  ]
  if info.get("training_weights_file_bytes"):
    lines.append(f"  (training {WEIGHTS_FILE}, with optimizer state and the ID table: "
                 f"{info['training_weights_file_bytes'] / 1e6:.2f} MB)")
  if info.get("verified_sessions"):
    lines.append(f"  checked: top-{info['k']} of {info['verified_sessions']} test sessions "
                 "equal the Keras model's")
  lines.append(f"  warmup requests: {info['warmup_requests']}; took "
               f"{info['export_seconds']:.1f}s")
  return "\n".join(lines)


# --- command line ---------------------------------------------------------------------
def define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  # --run_dir and --data_dir are the training flags of alterrec_tf.config.
  flags.DEFINE_string("export_dir", None, "Model base folder; the export is written to "
                      "export_dir/N (TF Serving's version layout).")
  flags.DEFINE_integer("version", 0, "Version number N; 0 = one above the highest existing.")
  flags.DEFINE_integer("k", 20, "Recommendations per session of the fixed-k signatures "
                       "(serving_default, raw_ids).")
  flags.DEFINE_boolean("exclude_session_items", None,
                       "Never recommend an item already in the request's session. Unset: "
                       "as the run was trained and evaluated (its --seen_items; excluded "
                       "by default on de-duplicated data).")
  flags.DEFINE_string("new_items", None, "Cold-start item table to add (folder from "
                      "data_tools.embed_items, or EMB.npy,ITEMS.tsv); scored by text only.")
  flags.DEFINE_string("model_name", None, "Model name in the warmup requests (default: "
                      "export_dir's base name, as TF Serving's --model_name).")
  flags.DEFINE_boolean("warmup", True, "Write assets.extra/tf_serving_warmup_requests.")
  flags.DEFINE_boolean("verify", True, "Load the export back and check its top-k against "
                       "the Keras model on test sessions before publishing it.")


def main(argv):
  del argv
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  values = flags.FLAGS
  verify_data = bool(cli.flag_value("verify_data", True))
  info = export(values.run_dir, values.export_dir, values.data_dir, values.version,
                values.k, values.exclude_session_items, values.new_items,
                values.model_name, values.warmup, values.verify, verify_data=verify_data)
  print(format_info(info))


def run():
  from alterrec_tf import flagfiles  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main, flagfiles.PREPARE_FLAG_NAMES, known=(ExportError, alter_new_items.NewItemsError))


if __name__ == "__main__":
  run()
