"""The export pipeline: a loaded run in, a published TF Serving version out.

`export_run` takes a run already loaded by the command (`alterrec_tf.export`
loads it with `alterrec_tf.training.loading`; this package never imports
training/), builds the serving module (`serving.build`), saves it under a
hidden temporary name, checks it against the Keras model (`serving.check`) and
renames it to export_dir/N (`serving.publish`). Importing it loads no
TensorFlow.
"""

import json
import os
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from alterrec_tf import cli
from alterrec_tf import runs as alter_runs
from alterrec_tf.formats import schema
from alterrec_tf.serving import build as serving_build
from alterrec_tf.serving import publish
from alterrec_tf.serving.build import ExportError

if TYPE_CHECKING:
  import keras

  from alterrec_tf.config import TrainConfig
  from alterrec_tf.models.alterrec import AlterRec
  from alterrec_tf.models.cold_items import ColdIdImputer
  from alterrec_tf.serving.module import ServingModule
  from alterrec_tf.text.item_space import ItemTextVectors

# (Keras model with the best weights, TrainConfig, manifest, data_dir): a run as
# the command loaded it (`alterrec_tf.training.loading.load_run`; an AlterRec).
LoadedRun = Tuple["keras.Model", "TrainConfig", Dict[str, Any], str]

EXPORT_INFO_FILE = publish.EXPORT_INFO_FILE
WARMUP_FILE = "tf_serving_warmup_requests"
ASSETS_EXTRA = publish.ASSETS_EXTRA
WEIGHTS_FILE = alter_runs.BEST_WEIGHTS_FILE



def check_k(k: int, manifest: dict, data_dir: str, new_items: Optional[str] = None) -> None:
  """Refuses a list length outside [1, items of the catalogue].

  With --new_items the upper end is checked again once the table is read.
  """
  catalogue = manifest["num_items"] - 1
  if k < 1 or (k > catalogue and not new_items):
    raise ExportError(f"--k={k} must be in [1, {catalogue}] (the items of {data_dir})")


def export_run(loaded_run: LoadedRun, run_dir: str, export_dir: str,
               version: Optional[int] = None,
               k: int = 20, exclude_session_items: Optional[bool] = None,
               new_items: Optional[str] = None, model_name: Optional[str] = None,
               warmup: bool = True, verify: bool = True,
               text_signatures: Optional[bool] = None, text_encoder_dir: Optional[str] = None,
               cold_id_part: str = "imputed",
               serving_chunk_size: int = serving_build.DEFAULT_SERVING_CHUNK_SIZE) -> dict:
  """Exports a loaded run as version `version` (default: next) of `export_dir`.

  Args:
    loaded_run: (Keras model with the best weights, TrainConfig, manifest,
      data_dir), as `alterrec_tf.training.loading.load_run` returns it.
    run_dir: the run's folder (recorded in the export info; its best weights'
      size is reported).
    exclude_session_items: never recommend an item of the request; None: as the
      run was trained and evaluated (its --seen_items).
    text_signatures: add new_item_vectors / score_text_candidates (the sentence
      encoder in the graph); None: where the run and dataset allow it.
    text_encoder_dir: the converted sentence encoder (see `load_text_encoder`).
    cold_id_part: the ID columns of items added after training (--new_items and
      the text signatures): "imputed" (the ID rows of the trained items nearest
      in text, `models.cold_items`) or "zero".
    serving_chunk_size: a catalogue of more items is scored in chunks of this
      many items into a running top k (memory bounded by the chunk, not the
      catalogue); 0: always one [B, V] matmul.

  Returns:
    The export info (also written to assets.extra/alterrec_export.json), with
    "path" the final version folder.

  Raises:
    ExportError: the export cannot be done as asked, or writing it failed (a
      full disk): one line; nothing is left of the version in export_dir.
  """
  model, config, manifest, data_dir = loaded_run
  check_k(k, manifest, data_dir, new_items)
  exclude_session_items = session_item_exclusion(run_dir, config, exclude_session_items)
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
          exclude_session_items, new_items, text_layer, cold_id_part, serving_chunk_size)
      num_warmup = save_module(module, target, model_name, rows, config.max_len, k, warmup)
      checked = None
      if verify:
        # loads tensorflow_text
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
  except Exception as error:  # only I/O errors are rewritten
    problem = cli.io_problem(error)
    if problem is None:
      raise
    raise ExportError(f"writing the export failed, nothing was exported: {problem}") from error
  info["path"] = final
  return info


def session_item_exclusion(run_dir: str, config: "TrainConfig",
                           requested: Optional[bool]) -> bool:
  """Whether the export never recommends a request's own items: `requested`,
  or (None) as the run was trained (its --seen_items, resolved when the run
  was loaded: `training.loading.check_run`).

  Raises:
    ExportError: keeping them for a run that never learned to score them.
    ValueError: a config whose --seen_items is not resolved ("auto").
  """
  if config.seen_items not in ("exclude", "keep"):
    raise ValueError(f"--seen_items={config.seen_items}: the loaded run's config must be "
                     "resolved against its dataset (training.loading.check_run)")
  excluded_in_training = config.seen_items == "exclude"
  if requested is None:
    return excluded_in_training
  if excluded_in_training and not requested:
    raise ExportError(
        f"{run_dir} was trained and evaluated with --seen_items=exclude: its scores of "
        "the session's own items were never trained; export it with session items "
        "excluded (leave --exclude_session_items unset)")
  return requested


def save_module(module: "ServingModule", target: str, model_name: str,
                rows: Sequence[Sequence[str]], max_len: int, k: int, warmup: bool) -> int:
  """Saves the serving module as a SavedModel at `target` (and, with `warmup`,
  TF Serving's warm-up requests); returns the number of warm-up requests."""
  import tensorflow as tf  # checks run before TF

  from alterrec_tf.serving import warmup as serving_warmup
  tf.saved_model.save(module, target, signatures=module.signatures())
  if not warmup:
    return 0
  return serving_warmup.write_warmup(
      os.path.join(target, publish.ASSETS_EXTRA, WARMUP_FILE), model_name,
      serving_warmup.warmup_requests(
          rows, module.popularity.numpy(), max_len, k,
          module.num_text_fields if module.has_text_signatures else 0))


def export_info(run_dir: str, data_dir: str, model: "AlterRec", config: "TrainConfig",
                manifest: dict, module: "ServingModule", rows: Sequence[Sequence[str]],
                k: int, exclude_session_items: bool, new_items: Optional[str],
                cold_id_imputer: Optional["ColdIdImputer"],
                text_layer: Optional["ItemTextVectors"], text_info: dict,
                checked: Optional[List[List[int]]]) -> dict:
  """What an export holds (assets.extra/alterrec_export.json, without sizes)."""
  from alterrec_tf.serving import module as serving
  return {
      "run_dir": os.path.abspath(run_dir), "data_dir": os.path.abspath(data_dir),
      "model": config.model, "data_content_hash": manifest.get("content_hash"),
      "towers": list(model.tower_names), "alpha": config.alpha,
      "text_temperature": config.text_temperature, "embedding_dim": config.embedding_dim,
      "max_len": config.max_len, "k": k, "exclude_session_items": exclude_session_items,
      "num_items": len(rows), "num_trained_items": manifest["num_items"],
      "num_new_items": len(rows) - manifest["num_items"], "new_items": new_items or "",
      "serving_chunk_size": module.chunk_size,
      "chunked_scoring": 0 < module.chunk_size < module.num_items,
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
  """What the command prints about an export (its info dict)."""
  ratio = info["variables_bytes"] / max(info["weights_bytes"], 1)
  lines = [
      f"exported {info['model']} ({'+'.join(info['towers'])}) to {info['path']}",
      f"  items: {info['num_items']} ({info['num_new_items']} cold-start), k={info['k']}, "
      f"exclude_session_items={info['exclude_session_items']}"
      + (f", cold items' ID part: {info['cold_id_part']}" if info.get("cold_id_part") else ""),
      "  scoring: " + (f"in chunks of {info['serving_chunk_size']} items (running top k)"
                       if info.get("chunked_scoring") else "one [B, V] matmul"),
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
