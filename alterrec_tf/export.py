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
imports pandas where it is installed).

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
from alterrec_tf.models import cold_items
from alterrec_tf.models import names as model_names

EXPORT_INFO_FILE = "alterrec_export.json"
WARMUP_FILE = "tf_serving_warmup_requests"
ASSETS_EXTRA = "assets.extra"
WEIGHTS_FILE = alter_runs.BEST_WEIGHTS_FILE
TEXT_TABLE_ITEMS = 32  # dataset items re-embedded to check the sentence encoder
TEXT_TABLE_TOLERANCE = 1e-3  # median max |difference| allowed on those rows
# the files of an encoder folder (= alterrec_tf.text.encoder's, without importing TF)
ENCODER_FILES = ("text_encoder.json", "vocab.txt", "text_encoder.npz")


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
    reason = text_signature_obstacle(model_names.ALTERREC_TOWERS[config.model], manifest,
                                     text_encoder_dir)
    if reason:
      raise ExportError(f"--text_signatures: {reason}")
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


# --- text signatures ------------------------------------------------------------------
def text_signature_obstacle(towers, manifest: dict, text_encoder_dir: Optional[str]
                            ) -> Optional[str]:
  """Why text signatures cannot be built (checked without TensorFlow), or None."""
  if "text" not in towers:
    return f"the run has no text tower (towers: {', '.join(towers)})"
  if not manifest.get("text_fields") or not manifest.get("text_dim"):
    return ("the dataset records no text_fields (prepared without text, or by an "
            "older data_tools)")
  if text_encoder_dir and os.path.isdir(text_encoder_dir) and os.listdir(text_encoder_dir) \
      and not all(os.path.isfile(os.path.join(text_encoder_dir, name))
                  for name in ENCODER_FILES):
    return (f"--text_encoder_dir={text_encoder_dir} holds other files and no converted "
            f"encoder ({', '.join(ENCODER_FILES)}); give an encoder folder, or an empty "
            "or new one to convert into")
  if not text_encoder_dir and not manifest.get("text_model"):
    return "the dataset records no text_model; pass --text_encoder_dir"
  return None


def load_text_encoder(manifest: dict, text_encoder_dir: Optional[str]):
  """The dataset's sentence encoder (`alterrec_tf.text.encoder.SentenceEncoder`).

  From `text_encoder_dir` when it is an encoder folder; else converted from the
  manifest's text_model, into `text_encoder_dir` when given (kept for the next
  export), else in memory.

  Raises:
    ExportError: one line naming the folder or model.
  """
  # pylint: disable=g-import-not-at-top
  from alterrec_tf.text import convert
  from alterrec_tf.text import encoder as text_encoder
  # pylint: enable=g-import-not-at-top
  model_name = manifest.get("text_model") or ""
  try:
    if text_encoder_dir and text_encoder.is_encoder_folder(text_encoder_dir):
      encoder = text_encoder.load_encoder(text_encoder_dir)
      model_dir = _model_dir(convert, model_name)
      source = encoder.config.source
      if source and model_dir and os.path.realpath(source) != os.path.realpath(model_dir):
        raise ExportError(f"--text_encoder_dir={text_encoder_dir} was converted from "
                          f"{source}; the dataset was embedded with {model_name} "
                          f"({model_dir}); use another folder")
    elif text_encoder_dir:  # absent or empty (text_signature_obstacle)
      staging = f"{os.path.normpath(text_encoder_dir)}.tmp-{os.getpid()}"
      try:  # a failed conversion leaves no half-written encoder folder
        encoder = convert.convert(model_name, staging)
        if os.path.isdir(text_encoder_dir):
          os.rmdir(text_encoder_dir)
        os.rename(staging, text_encoder_dir)
      finally:
        shutil.rmtree(staging, ignore_errors=True)
    else:
      encoder = convert.convert(model_name)
  except ExportError:
    raise
  except (convert.ConversionError, ValueError, OSError) as error:
    what = (f"--text_encoder_dir={text_encoder_dir}" if text_encoder_dir
            else f"the dataset's text_model {model_name!r}")
    raise ExportError(f"cannot build the sentence encoder from {what}: {error}") from error
  dim = manifest.get("text_dim")
  if encoder.dim != dim:
    raise ExportError(f"the sentence encoder ({encoder.config.source or text_encoder_dir}) "
                      f"gives {encoder.dim}-d vectors, the dataset's text table is {dim}-d")
  return encoder


def _model_dir(convert, name: str) -> str:
  """The model folder `name` resolves to, "" where it is not one here."""
  try:
    return convert.resolve_model(name) if name else ""
  except convert.ConversionError:
    return ""


def check_text_table(field_mean, model, manifest: dict, rows) -> Optional[dict]:
  """Re-embeds up to TEXT_TABLE_ITEMS titles and compares them with the dataset's
  text table (the model's); None where the dataset's text is not just the title.

  Returns:
    {"items", "max_abs_diff", "median_abs_diff"} of the per-item max |difference|.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if list(manifest.get("text_fields") or []) != ["title"]:
    return None
  titled = [i for i in range(1, manifest["num_items"]) if str(rows[i][1]).strip()]
  if not titled:
    return None
  step = max(1, len(titled) // TEXT_TABLE_ITEMS)
  items = titled[::step][:TEXT_TABLE_ITEMS]
  vectors = field_mean(tf.constant([[rows[i][1]] for i in items], tf.string)).numpy()
  table = np.asarray(model.text_tower.item_encoder.text_table)[items]
  diff = np.abs(vectors - table).max(axis=1)
  return {"items": len(items), "max_abs_diff": float(diff.max()),
          "median_abs_diff": float(np.median(diff))}


def build_text_layer(model, manifest: dict, rows, text_signatures: Optional[bool],
                     text_encoder_dir: Optional[str]):
  """(`ItemTextVectors` for the text signatures or None, what was done: a dict).

  `text_signatures` None (the default): built where possible, else skipped with
  the reason; True: every obstacle is an ExportError; False: skipped.
  """
  if text_signatures is False:
    return None, {"skipped": "--notext_signatures"}
  reason = text_signature_obstacle(model.tower_names, manifest, text_encoder_dir)
  try:
    if reason:
      raise ExportError(reason)
    # pylint: disable=g-import-not-at-top
    from alterrec_tf.text import encoder as text_encoder
    from alterrec_tf.text import item_space
    # pylint: enable=g-import-not-at-top
    encoder = load_text_encoder(manifest, text_encoder_dir)
    field_mean = text_encoder.FieldMeanEncoder(encoder, name="field_mean")
    table_check = check_text_table(field_mean, model, manifest, rows)
    if table_check and table_check["median_abs_diff"] > TEXT_TABLE_TOLERANCE:
      raise ExportError(
          f"the sentence encoder ({encoder.config.source}) does not reproduce the "
          f"dataset's text table (median max |difference| "
          f"{table_check['median_abs_diff']:.2g} over {table_check['items']} titles); "
          "pass --text_encoder_dir converted from the dataset's text_model")
  except ExportError as error:
    if text_signatures:
      raise ExportError(f"--text_signatures: {error}") from None
    return None, {"skipped": str(error)}
  item_encoder = model.text_tower.item_encoder
  layer = item_space.ItemTextVectors(field_mean, [item_encoder.projection, item_encoder.norm],
                                     name="text_item_vectors")
  weights = sum(int(np.prod(v.shape)) * 4 for v in encoder.named_weights().values())
  info = {
      "fields": list(manifest["text_fields"]), "source": encoder.config.source,
      "text_model": manifest.get("text_model"), "encoder_dir": text_encoder_dir or "",
      "layers": encoder.config.bert.num_layers, "dim": encoder.dim,
      "max_seq_length": encoder.config.max_seq_length,
      "vocabulary_size": encoder.tokenizer.vocabulary_size,
      "encoder_weights_bytes": weights, "table_check": table_check,
  }
  return layer, info


def write_vocab(path: str, rows) -> None:
  """index TAB raw id TAB title, no header (the lookup tables read it)."""
  with open(path, "w", encoding="utf-8") as f:
    for index, (raw_id, title) in enumerate(rows):
      if not raw_id or any(c in raw_id for c in "\t\r\n"):
        raise ExportError(f"vocabulary row {index}: raw id {raw_id!r} cannot be served "
                          "(empty, or a tab or line break)")
      f.write(f"{index}\t{raw_id}\t{alter_new_items.clean_title(title)}\n")


def serving_parts(model, config, num_items: int, new_rows: Optional[np.ndarray] = None,
                  cold_id_imputer=None):
  """(item matrix [V, D], [TowerPart]) of a model, with optional new text rows
  (their ID part: `cold_id_imputer` of their text rows, else zeros)."""
  from alterrec_tf.serving import module as serving  # pylint: disable=g-import-not-at-top
  scales = serving.tower_scales(config, model.tower_names)
  num_new = 0 if new_rows is None else len(new_rows)
  blocks, parts = [], []
  for name in model.tower_names:
    tower = model.tower(name)
    matrix = np.asarray(tower.item_matrix(training=False), dtype=np.float32)
    if name == "id":
      cold = (cold_id_imputer(new_rows) if num_new and cold_id_imputer is not None
              else np.zeros([num_new, matrix.shape[1]], np.float32))
      matrix = np.concatenate([matrix, cold])
    elif num_new:
      matrix = np.concatenate([matrix, new_rows])
    blocks.append(matrix)
    parts.append(serving.TowerPart(name, tower.session_encoder, matrix.shape[1], scales[name],
                                   num_items if name == "id" else num_items + num_new))
  return np.concatenate(blocks, axis=1), parts


def build_module(model, config, manifest, data_dir: str, scratch_dir: str, k: int,
                 exclude_session_items: bool, new_items_path: Optional[str] = None,
                 text_layer=None, cold_id_part: str = "imputed"):
  """(`ServingModule` of a loaded run, vocabulary rows it serves, new text rows or
  None, the `ColdIdImputer` of cold items' ID part or None).

  `text_layer`: the `ItemTextVectors` of the text signatures (`build_text_layer`).
  `cold_id_part`: "imputed" (an ID+text model's new items get the ID rows of
  the trained items nearest in text, `models.cold_items`) or "zero"."""
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
  counts = np.asarray(alter_data.item_counts(
      schema.split_files(data_dir, manifest, "train"), num_items), dtype=np.float32)
  cold_id_imputer = None
  if cold_id_part == "imputed" and {"id", "text"} <= set(model.tower_names):
    cold_id_imputer = cold_items.for_model(model, counts)
  matrix, parts = serving_parts(model, config, num_items, new_rows, cold_id_imputer)
  popularity = np.concatenate([counts, np.zeros([len(rows) - num_items], np.float32)])
  vocab_path = os.path.join(scratch_dir, serving.VOCAB_ASSET)
  write_vocab(vocab_path, rows)
  module = serving.ServingModule(
      matrix, parts, popularity, vocab_path, config.max_len, k, exclude_session_items,
      text_layer, len(manifest.get("text_fields") or []) if text_layer is not None else 0,
      cold_id_imputer)
  return module, rows, new_rows, cold_id_imputer


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
  start = time.perf_counter()
  if loaded_run is None:  # every check before TensorFlow is loaded
    checked = check_request(run_dir, export_dir, data_dir, k, version, new_items, verify_data,
                            text_signatures, text_encoder_dir)
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
    text_layer, text_info = build_text_layer(model, manifest, schema.read_vocab(data_dir),
                                             text_signatures, text_encoder_dir)
    module, rows, new_rows, cold_id_imputer = build_module(
        model, config, manifest, data_dir, scratch, k, exclude_session_items, new_items,
        text_layer, cold_id_part)
    tf.saved_model.save(module, target, signatures=module.signatures())
    num_warmup = 0
    if warmup:
      num_warmup = serving_warmup.write_warmup(
          os.path.join(target, ASSETS_EXTRA, WARMUP_FILE), model_name,
          serving_warmup.warmup_requests(rows, module.popularity.numpy(), config.max_len, k))
    mismatches, checked = None, []
    if verify:
      checked = export_check.sample_sessions(data_dir, manifest)
      loaded = tf.saved_model.load(target)
      mismatches = export_check.verify_export(target, model, checked, k, new_rows,
                                              exclude_session_items, loaded=loaded,
                                              cold_id_imputer=cold_id_imputer)
      if mismatches:
        raise ExportError(f"the exported top-{k} differs from the Keras model's in "
                          f"{mismatches} places; nothing was exported")
      if text_layer is not None:
        fields = export_check.sample_fields([title for _, title in rows[1:]],
                                            module.num_text_fields)
        bad = export_check.verify_text_signatures(
            loaded, model, text_layer, checked, [raw_id for raw_id, _ in rows], fields,
            cold_id_imputer=cold_id_imputer)
        text_info["verified"] = {"candidates": len(fields), "sessions": len(checked)}
        if any(bad):
          raise ExportError(f"the exported text signatures differ from the Keras layers "
                            f"(new_item_vectors: {bad[0]} values, score_text_candidates: "
                            f"{bad[1]} scores); nothing was exported")
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
        "signatures": list(module.signature_names), "warmup_requests": num_warmup,
        "text_signatures": text_layer is not None,
        "cold_id_part": ("imputed" if cold_id_imputer is not None else
                         "zero" if {"id", "text"} <= set(model.tower_names) else None),
        "text": ({**text_info, "signatures": list(serving.TEXT_SIGNATURES)}
                 if text_layer is not None else text_info),
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
