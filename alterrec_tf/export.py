"""Export a trained run as a TF Serving SavedModel (one fused top-K graph).

  python -m alterrec_tf.export --run_dir=runs/online_retail \\
      --export_dir=models/alterrec [--k=20] [--exclude_session_items] \\
      [--new_items=new_items/] [--version=N] \\
      [--[no]text_signatures] [--text_encoder_dir=text_encoder/]

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
imports pandas where it is installed). The pieces it saves (new items, the text
layer, the serving module) are built by `alterrec_tf.serving.build`.

Text signatures (`--text_signatures`; by default on when the run has a text
tower and the dataset's sentence model can be rebuilt): the export also holds
the sentence encoder (`alterrec_tf.text`, all-MiniLM-L6-v2: +90 MB of weights)
and serves `new_item_vectors` and `score_text_candidates` (raw text fields of
new items in, see `alterrec_tf.serving.module`). The encoder is read from
`--text_encoder_dir` (a folder of `alterrec_tf.text.convert`; written there
from the dataset's text_model when absent or empty), else converted in memory
from the installed sentence-transformers model files (no torch). Before it is
used, it must re-embed the dataset's own item titles to its text table
(datasets whose text field is `title`; median difference <= 1e-3). Loading
such an export needs `import tensorflow_text` (serving/check.py and
recommend.py do it).
"""

import json
import os
import time
from typing import Optional

from alterrec_tf import cli
from alterrec_tf import config as alter_config
from alterrec_tf import runs as alter_runs
from alterrec_tf.formats import new_items as alter_new_items
from alterrec_tf.formats import schema
from alterrec_tf.models import names as model_names
from alterrec_tf.serving import build as serving_build
from alterrec_tf.serving import publish
from alterrec_tf.serving.build import ExportError

EXPORT_INFO_FILE = publish.EXPORT_INFO_FILE
WARMUP_FILE = "tf_serving_warmup_requests"
ASSETS_EXTRA = publish.ASSETS_EXTRA
WEIGHTS_FILE = alter_runs.BEST_WEIGHTS_FILE




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
                  verify_data: bool = True, text_signatures: Optional[bool] = None,
                  text_encoder_dir: Optional[str] = None):
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
  if text_signatures:
    reason = serving_build.text_signature_obstacle(model_names.ALTERREC_TOWERS[config.model], manifest,
                                     text_encoder_dir)
    if reason:
      raise ExportError(f"--text_signatures: {reason}")
  cli.check_writable(export_dir, "--export_dir")
  check_weights(run_dir)
  return config, manifest, data_dir


def load_run(run_dir: str, data_dir: Optional[str] = None, verify_data: bool = True,
             checked=None):
  """(Keras model with the best weights, TrainConfig, manifest, data_dir) of a run.

  The config's alpha is the one the run chose on validation where it tuned it
  (results.json "alpha", `train --tune_alpha`).

  Args:
    checked: the result of `check_run` / `check_request` (not checked again).
  """
  from alterrec_tf.models import registry as models  # pylint: disable=g-import-not-at-top
  config, manifest, data_dir = checked or check_run(run_dir, data_dir, verify_data)
  results = alter_runs.load_results(run_dir) or {}
  if "alpha" in results:  # chosen on validation after training (--tune_alpha)
    config = config.replace(alpha=float(results["alpha"]))
  text_embeddings = schema.load_text_embeddings(data_dir, manifest)
  weights = os.path.join(run_dir, WEIGHTS_FILE)
  model = models.build_model(config, manifest, text_embeddings)
  model.load_weights(weights)
  return model, config, manifest, data_dir


# --- export -----------------------------------------------------------------------------
def export(run_dir: str, export_dir: str, data_dir: Optional[str] = None,
           version: Optional[int] = None, k: int = 20,
           exclude_session_items: Optional[bool] = None,
           new_items: Optional[str] = None, model_name: Optional[str] = None,
           warmup: bool = True, verify: bool = True, loaded_run=None,
           verify_data: bool = True, text_signatures: Optional[bool] = None,
           text_encoder_dir: Optional[str] = None, cold_id_part: str = "imputed") -> dict:
  """Exports `run_dir` as version `version` (default: next) of `export_dir`.

  Args:
    exclude_session_items: never recommend an item of the request; None: as the
      run was trained and evaluated (its --seen_items).
    loaded_run: an already loaded (model, config, manifest, data_dir) (tests).
    verify_data: check the dataset's files against its manifest hashes first.
    text_signatures: add new_item_vectors / score_text_candidates (the sentence
      encoder in the graph); None: where the run and dataset allow it.
    text_encoder_dir: the converted sentence encoder (see `load_text_encoder`).
    cold_id_part: the ID columns of items added after training (--new_items and
      the text signatures): "imputed" (the ID rows of the trained items nearest
      in text, `models.cold_items`) or "zero".

  Returns:
    The export info (also written to assets.extra/alterrec_export.json), with
    "path" the final version folder.

  Raises:
    ExportError: the export cannot be done as asked, or writing it failed (a
      full disk): one line; nothing is left in export_dir.
  """
  created = bool(export_dir) and not os.path.exists(export_dir)
  try:
    return _export(run_dir, export_dir, data_dir, version, k, exclude_session_items,
                   new_items, model_name, warmup, verify, loaded_run, verify_data,
                   text_signatures, text_encoder_dir, cold_id_part)
  except BaseException:
    if created and os.path.isdir(export_dir) and not os.listdir(export_dir):
      os.rmdir(export_dir)  # a refusal leaves no empty --export_dir behind
    raise


def _export(run_dir, export_dir, data_dir, version, k, exclude_session_items, new_items,
            model_name, warmup, verify, loaded_run, verify_data, text_signatures,
            text_encoder_dir, cold_id_part) -> dict:
  """`export` (which removes the export_dir it created when this fails)."""
  start = time.perf_counter()
  if loaded_run is None:  # every check before TensorFlow is loaded
    checked = check_request(run_dir, export_dir, data_dir, k, version, new_items, verify_data,
                            text_signatures, text_encoder_dir)
    loaded_run = load_run(run_dir, checked=checked)
  model, config, manifest, data_dir = loaded_run
  check_k(k, manifest, data_dir, new_items)
  exclude_session_items = session_item_exclusion(run_dir, config, manifest,
                                                 exclude_session_items)
  version, final = publish.choose_version(export_dir, version)
  model_name = model_name or os.path.basename(os.path.normpath(export_dir)) or "alterrec"
  try:
    with publish.staging(export_dir, version) as staging:
      target, scratch = os.path.join(staging, "model"), os.path.join(staging, "scratch")
      os.makedirs(scratch)
      text_layer, text_info = serving_build.build_text_layer(
          model, manifest, schema.read_vocab(data_dir), text_signatures, text_encoder_dir)
      module, rows, new_rows, cold_id_imputer = serving_build.build_module(
          model, config, manifest, data_dir, scratch, k,
          exclude_session_items, new_items, text_layer, cold_id_part)
      num_warmup = save_module(module, target, model_name, rows, config.max_len, k, warmup)
      checked = None
      if verify:
        # pylint: disable-next=g-import-not-at-top  (loads tensorflow_text)
        from alterrec_tf.serving import check as export_check
        checked = export_check.verify_staged_export(
            target, model, data_dir, manifest, k, module, rows, new_rows,
            exclude_session_items, cold_id_imputer, text_layer, text_info)
      info = export_info(run_dir, data_dir, model, config, manifest, module, rows, k,
                         exclude_session_items, new_items, cold_id_imputer, text_layer,
                         text_info, checked)
      weights = os.path.join(run_dir, WEIGHTS_FILE) if run_dir else None
      info.update(version=version, model_name=model_name, warmup_requests=num_warmup,
                  **publish.size_info(target, weights))
      info["total_bytes"] = publish.folder_bytes(target) + len(json.dumps(info))
      publish.publish(target, final, info)
  except Exception as error:  # pylint: disable=broad-except  (only I/O errors are rewritten)
    problem = cli.io_problem(error)
    if problem is None:
      raise
    raise ExportError(f"writing the export failed, nothing was exported: {problem}") from error
  info["path"] = final
  info["export_seconds"] = time.perf_counter() - start
  return info


def session_item_exclusion(run_dir: str, config, manifest: dict,
                           requested: Optional[bool]) -> bool:
  """Whether the export never recommends a request's own items: `requested`,
  or (None) as the run was trained (its resolved --seen_items).

  Raises:
    ExportError: keeping them for a run that never learned to score them.
  """
  excluded_in_training = (
      alter_config.resolve_seen_items(config, manifest).seen_items == "exclude")
  if requested is None:
    return excluded_in_training
  if excluded_in_training and not requested:
    raise ExportError(
        f"{run_dir} was trained and evaluated with --seen_items=exclude: its scores of "
        "the session's own items were never trained; export it with session items "
        "excluded (leave --exclude_session_items unset)")
  return requested


def save_module(module, target: str, model_name: str, rows, max_len: int, k: int,
                warmup: bool) -> int:
  """Saves the serving module as a SavedModel at `target` (and, with `warmup`,
  TF Serving's warm-up requests); returns the number of warm-up requests."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (checks run before TF)

  from alterrec_tf.serving import warmup as serving_warmup  # pylint: disable=g-import-not-at-top
  tf.saved_model.save(module, target, signatures=module.signatures())
  if not warmup:
    return 0
  return serving_warmup.write_warmup(
      os.path.join(target, publish.ASSETS_EXTRA, WARMUP_FILE), model_name,
      serving_warmup.warmup_requests(rows, module.popularity.numpy(), max_len, k))


def export_info(run_dir: str, data_dir: str, model, config, manifest: dict, module, rows,
                k: int, exclude_session_items: bool, new_items: Optional[str],
                cold_id_imputer, text_layer, text_info: dict, checked) -> dict:
  """What an export holds (assets.extra/alterrec_export.json, without sizes)."""
  from alterrec_tf.serving import module as serving  # pylint: disable=g-import-not-at-top
  return {
      "run_dir": os.path.abspath(run_dir), "data_dir": os.path.abspath(data_dir),
      "model": config.model, "data_content_hash": manifest.get("content_hash"),
      "towers": list(model.tower_names), "alpha": config.alpha,
      "text_temperature": config.text_temperature, "embedding_dim": config.embedding_dim,
      "max_len": config.max_len, "k": k, "exclude_session_items": exclude_session_items,
      "num_items": len(rows), "num_trained_items": manifest["num_items"],
      "num_new_items": len(rows) - manifest["num_items"], "new_items": new_items or "",
      "signatures": list(module.signature_names),
      "text_signatures": text_layer is not None,
      "cold_id_part": ("imputed" if cold_id_imputer is not None else
                       "zero" if {"id", "text"} <= set(model.tower_names) else None),
      "text": ({**text_info, "signatures": list(serving.TEXT_SIGNATURES)}
               if text_layer is not None else text_info),
      "verified_sessions": None if checked is None else len(checked),
      "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }


def format_info(info: dict) -> str:
  ratio = info["variables_bytes"] / max(info["weights_bytes"], 1)
  lines = [
      f"exported {info['model']} ({'+'.join(info['towers'])}) to {info['path']}",
      f"  items: {info['num_items']} ({info['num_new_items']} cold-start), k={info['k']}, "
      f"exclude_session_items={info['exclude_session_items']}"
      + (f", cold items' ID part: {info['cold_id_part']}" if info.get("cold_id_part") else ""),
      f"  variables/: {info['variables_bytes'] / 1e6:.2f} MB; exported weights "
      f"(sum of nbytes): {info['weights_bytes'] / 1e6:.2f} MB; ratio {ratio:.3f}",
      f"  saved_model.pb: {info['saved_model_pb_bytes'] / 1e6:.2f} MB; whole version "
      f"folder: {info['total_bytes'] / 1e6:.2f} MB",
  ]
  if info.get("training_weights_file_bytes"):
    lines.append(f"  (training {WEIGHTS_FILE}, with optimizer state and the ID table: "
                 f"{info['training_weights_file_bytes'] / 1e6:.2f} MB)")
  text = info.get("text") or {}
  if info.get("text_signatures"):
    lines.append(
        f"  text signatures {', '.join(text['signatures'])}: fields "
        f"{','.join(text['fields'])}; the sentence encoder ({text['layers']} layers, "
        f"d={text['dim']}, {text['vocabulary_size']} tokens) adds "
        f"{text['encoder_weights_bytes'] / 1e6:.1f} MB of weights to variables/ (its graph "
        "and vocabulary are in saved_model.pb); load with `import tensorflow_text`")
    if text.get("table_check"):
      lines.append(f"  sentence encoder re-embeds {text['table_check']['items']} dataset "
                   f"titles to within {text['table_check']['max_abs_diff']:.1g} of its "
                   "text table")
  elif text.get("skipped"):
    lines.append(f"  no text signatures: {text['skipped']}")
  if info.get("verified_sessions"):
    lines.append(f"  checked: top-{info['k']} of {info['verified_sessions']} test sessions "
                 "equal the Keras model's")
  if text.get("verified"):
    lines.append(f"  checked: the text signatures on {text['verified']['candidates']} "
                 "candidate texts equal the Keras layers")
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
                      "data_tools.embed_items, or EMB.npy,ITEMS.tsv); see --cold_id_part.")
  flags.DEFINE_enum("cold_id_part", "imputed", ["imputed", "zero"],
                    "ID columns of items added after training (--new_items, the text "
                    "signatures): 'imputed' (the similarity-weighted ID rows of the 20 "
                    "trained items nearest in text: their fused score on the trained "
                    "items' scale), or 'zero' (text term only).")
  flags.DEFINE_string("model_name", None, "Model name in the warmup requests (default: "
                      "export_dir's base name, as TF Serving's --model_name).")
  flags.DEFINE_boolean("warmup", True, "Write assets.extra/tf_serving_warmup_requests.")
  flags.DEFINE_boolean("verify", True, "Load the export back and check its top-k against "
                       "the Keras model on test sessions before publishing it.")
  flags.DEFINE_boolean("text_signatures", None,
                       "Add the signatures new_item_vectors and score_text_candidates "
                       "(new items as raw text; the sentence encoder in the graph, ~90 MB). "
                       "Unset: when the run has a text tower and the dataset's sentence "
                       "model can be rebuilt.")
  flags.DEFINE_string("text_encoder_dir", None,
                      "Sentence encoder folder of alterrec_tf.text.convert for the text "
                      "signatures (converted into it from the dataset's text_model when "
                      "absent or empty); unset: convert in memory.")


def main(argv):
  del argv
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  values = flags.FLAGS
  verify_data = bool(cli.flag_value("verify_data", True))
  info = export(values.run_dir, values.export_dir, values.data_dir, values.version,
                values.k, values.exclude_session_items, values.new_items,
                values.model_name, values.warmup, values.verify, verify_data=verify_data,
                text_signatures=values.text_signatures,
                text_encoder_dir=values.text_encoder_dir,
                cold_id_part=values.cold_id_part)
  print(format_info(info))


def run():
  from alterrec_tf import flagfiles  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main, flagfiles.PREPARE_FLAG_NAMES, known=(ExportError, alter_new_items.NewItemsError))


if __name__ == "__main__":
  run()
