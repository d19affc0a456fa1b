"""What a SavedModel export is built from: new items, the text layer, the serving module.

`alterrec_tf.export` orchestrates (checks, staging folder, verification, the
version's info); this module builds the pieces it saves:

  read_new_items / project_new_items   a --new_items table -> text tower rows
  build_text_layer                     the sentence encoder + text projection of
                                       the text signatures (`ItemTextVectors`)
  serving_parts / build_module         the fused item matrix (cold items' ID part
                                       imputed, `models.cold_items`) and the
                                       `serving.module.ServingModule`

Importing it loads no TensorFlow (the export's checks run before TF is loaded):
TensorFlow, the text encoder and the serving module are imported where used.
"""

import os
import shutil
from types import ModuleType
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from alterrec_tf.formats import new_items as alter_new_items
from alterrec_tf.formats import schema

if TYPE_CHECKING:
  from alterrec_tf.config import TrainConfig
  from alterrec_tf.models.alterrec import AlterRec
  from alterrec_tf.models.cold_items import ColdIdImputer
  from alterrec_tf.serving.module import ServingModule, TowerPart
  from alterrec_tf.text.encoder import FieldMeanEncoder, SentenceEncoder
  from alterrec_tf.text.item_space import ItemTextVectors

TEXT_TABLE_ITEMS = 32  # dataset items re-embedded to check the sentence encoder
TEXT_TABLE_TOLERANCE = 1e-3  # median max |difference| allowed on those rows
# the files of an encoder folder (= alterrec_tf.text.encoder's, without importing TF)
ENCODER_FILES = ("text_encoder.json", "vocab.txt", "text_encoder.npz")
# Catalogues of more items are served chunk by chunk (--serving_chunk_size): a
# [B, V] score matrix would cost 256 MB per 256 sessions at 262k items; below
# it the one [B, V] matmul is kept (3.4k and 40k items: one matmul).
DEFAULT_SERVING_CHUNK_SIZE = 65536


class ExportError(ValueError):
  """An export that cannot be done as asked."""


# --- new items --------------------------------------------------------------------------
def project_new_items(model: "AlterRec", embeddings: np.ndarray) -> np.ndarray:
  """Text item vectors [n, d] of new SBERT rows, as TextItemEncoder in eval mode."""
  import tensorflow as tf
  encoder = model.text_tower.item_encoder  # type: ignore[union-attr]  # (has a text tower)
  projected = encoder.norm(encoder.projection(tf.constant(embeddings, tf.float32)))
  return np.asarray(projected, dtype=np.float32)


def read_new_items(path: str, model: "AlterRec", manifest: dict,
                   vocab_rows: Sequence[Sequence[str]]) -> alter_new_items.NewItems:
  if "text" not in model.tower_names:
    raise ExportError(f"--new_items needs a text tower; this run is {model.settings.model}")
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
def text_signature_obstacle(towers: Sequence[str], manifest: dict,
                            text_encoder_dir: Optional[str]) -> Optional[str]:
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


def load_text_encoder(manifest: dict, text_encoder_dir: Optional[str]) -> "SentenceEncoder":
  """The dataset's sentence encoder (`alterrec_tf.text.encoder.SentenceEncoder`).

  From `text_encoder_dir` when it is an encoder folder; else converted from the
  manifest's text_model, into `text_encoder_dir` when given (kept for the next
  export), else in memory.

  Raises:
    ExportError: one line naming the folder or model.
  """
  from alterrec_tf.text import convert
  from alterrec_tf.text import encoder as text_encoder
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


def _model_dir(convert: ModuleType, name: str) -> str:
  """The model folder `name` resolves to, "" where it is not one here."""
  try:
    return convert.resolve_model(name) if name else ""
  except convert.ConversionError:
    return ""


def check_text_table(field_mean: "FieldMeanEncoder", model: "AlterRec", manifest: dict,
                     rows: Sequence[Sequence[str]]) -> Optional[dict]:
  """Re-embeds up to TEXT_TABLE_ITEMS titles and compares them with the dataset's
  text table (the model's); None where the dataset's text is not just the title.

  Returns:
    {"items", "max_abs_diff", "median_abs_diff"} of the per-item max |difference|.
  """
  import tensorflow as tf
  if list(manifest.get("text_fields") or []) != ["title"]:
    return None
  titled = [i for i in range(1, manifest["num_items"]) if str(rows[i][1]).strip()]
  if not titled:
    return None
  step = max(1, len(titled) // TEXT_TABLE_ITEMS)
  items = titled[::step][:TEXT_TABLE_ITEMS]
  vectors = field_mean(tf.constant([[rows[i][1]] for i in items], tf.string)).numpy()
  # (the model has a text tower: `build_text_layer` checked it first)
  table = np.asarray(model.text_tower.item_encoder.text_table)[items]  # type: ignore[union-attr]
  diff = np.abs(vectors - table).max(axis=1)
  return {"items": len(items), "max_abs_diff": float(diff.max()),
          "median_abs_diff": float(np.median(diff))}


def build_text_layer(model: "AlterRec", manifest: dict, rows: Sequence[Sequence[str]],
                     text_signatures: Optional[bool], text_encoder_dir: Optional[str]
                     ) -> Tuple[Optional["ItemTextVectors"], Dict[str, Any]]:
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
    from alterrec_tf.text import encoder as text_encoder
    from alterrec_tf.text import item_space
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
  item_encoder = model.text_tower.item_encoder  # type: ignore[union-attr]  # (text signatures)
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


def write_vocab(path: str, rows: Sequence[Sequence[str]]) -> None:
  """index TAB raw id TAB title, no header (the lookup tables read it)."""
  with open(path, "w", encoding="utf-8") as f:
    for index, (raw_id, title) in enumerate(rows):
      if not raw_id or any(c in raw_id for c in "\t\r\n"):
        raise ExportError(f"vocabulary row {index}: raw id {raw_id!r} cannot be served "
                          "(empty, or a tab or line break)")
      f.write(f"{index}\t{raw_id}\t{alter_new_items.clean_title(title)}\n")


def serving_parts(model: "AlterRec", config: "TrainConfig", num_items: int,
                  new_rows: Optional[np.ndarray] = None,
                  cold_id_imputer: Optional["ColdIdImputer"] = None
                  ) -> Tuple[np.ndarray, List["TowerPart"]]:
  """(item matrix [V, D], [TowerPart]) of a model, with optional new text rows
  (their ID part: `cold_id_imputer` of their text rows, else zeros)."""
  from alterrec_tf.serving import module as serving
  scales = serving.tower_scales(config, model.tower_names)
  num_new = 0 if new_rows is None else len(new_rows)
  blocks, parts = [], []
  for name in model.tower_names:
    tower = model.tower(name)
    matrix = np.asarray(tower.item_matrix(training=False), dtype=np.float32)
    if name == "id":
      cold = (cold_id_imputer(new_rows)  # type: ignore[arg-type]  # (num_new: rows given)
              if num_new and cold_id_imputer is not None
              else np.zeros([num_new, matrix.shape[1]], np.float32))
      matrix = np.concatenate([matrix, cold])
    elif num_new:
      matrix = np.concatenate([matrix, new_rows])
    blocks.append(matrix)
    parts.append(serving.TowerPart(name, tower.session_encoder, matrix.shape[1], scales[name],
                                   num_items if name == "id" else num_items + num_new))
  return np.concatenate(blocks, axis=1), parts


def build_module(model: "AlterRec", config: "TrainConfig", manifest: dict, data_dir: str,
                 scratch_dir: str, k: int, exclude_session_items: bool,
                 new_items_path: Optional[str] = None,
                 text_layer: Optional["ItemTextVectors"] = None, cold_id_part: str = "imputed",
                 chunk_size: int = 0
                 ) -> Tuple["ServingModule", List[List[str]], Optional[np.ndarray],
                            Optional["ColdIdImputer"]]:
  """(`ServingModule` of a loaded run, vocabulary rows it serves, new text rows or
  None, the `ColdIdImputer` of cold items' ID part or None).

  `text_layer`: the `ItemTextVectors` of the text signatures (`build_text_layer`).
  `cold_id_part`: "imputed" (an ID+text model's new items get the ID rows of
  the trained items nearest in text, `models.cold_items`) or "zero".
  `chunk_size`: score catalogues of more items in chunks of this many (0: one
  matmul; `serving.module.ServingModule`)."""
  from alterrec_tf.data import windows as alter_data
  from alterrec_tf.serving import module as serving
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
    from alterrec_tf.models import cold_items
    cold_id_imputer = cold_items.for_model(model, counts)
  matrix, parts = serving_parts(model, config, num_items, new_rows, cold_id_imputer)
  popularity = np.concatenate([counts, np.zeros([len(rows) - num_items], np.float32)])
  vocab_path = os.path.join(scratch_dir, serving.VOCAB_ASSET)
  write_vocab(vocab_path, rows)
  module = serving.ServingModule(
      matrix, parts, popularity, vocab_path, config.max_len, k, exclude_session_items,
      text_layer, len(manifest.get("text_fields") or []) if text_layer is not None else 0,
      cold_id_imputer, chunk_size=chunk_size)
  return module, rows, new_rows, cold_id_imputer
