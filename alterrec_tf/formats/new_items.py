"""The on-disk table of cold-start items that `alterrec_tf.export --new_items` adds.

A new-item table is one folder (written by `python -m data_tools.embed_items`,
or by anyone with numpy):

  new_items.tsv                  header "raw_item_id<TAB>title", one item a row
  new_item_text_embeddings.npy   float32 [n, text_dim], row i = item of row i,
                                 from the same sentence model as the dataset
  new_items.json                 optional: {"text_model": ..., "text_dim": ...}

`--new_items` also accepts the two files directly as "EMB.npy,ITEMS.tsv".
This module needs numpy only (no TensorFlow, pandas or torch).
"""

import json
import os
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

ITEMS_FILE = "new_items.tsv"
EMBEDDINGS_FILE = "new_item_text_embeddings.npy"
INFO_FILE = "new_items.json"
HEADER = "raw_item_id\ttitle"


class NewItemsError(ValueError):
  """A new-item table that cannot be added to the catalogue."""


class NewItems(NamedTuple):
  raw_ids: List[str]
  titles: List[str]
  embeddings: np.ndarray  # float32 [n, text_dim]
  text_model: str  # "" where unknown
  source: str


def clean_title(title: str) -> str:
  """A title as one TSV cell: tabs and line breaks become spaces."""
  return " ".join(str(title).replace("\t", " ").splitlines()).strip()


def check_raw_id(raw_id: str, where: str) -> None:
  if not raw_id or raw_id != raw_id.strip() or any(c in raw_id for c in "\t\r\n"):
    raise NewItemsError(f"{where}: raw item id {raw_id!r} is empty or has a tab, a line "
                        "break or surrounding spaces")


def write(folder: str, raw_ids: Sequence[str], titles: Sequence[str],
          embeddings: npt.ArrayLike, text_model: str = "") -> str:
  """Writes a new-item table into `folder` (created); returns the folder."""
  embeddings = np.asarray(embeddings, dtype=np.float32)
  if embeddings.ndim != 2 or embeddings.shape[0] != len(raw_ids) or len(titles) != len(raw_ids):
    raise NewItemsError(f"{len(raw_ids)} ids, {len(titles)} titles and embeddings of shape "
                        f"{embeddings.shape} do not match")
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, ITEMS_FILE), "w", encoding="utf-8") as f:
    f.write(HEADER + "\n")
    for raw_id, title in zip(raw_ids, titles):
      check_raw_id(raw_id, ITEMS_FILE)
      f.write(f"{raw_id}\t{clean_title(title)}\n")
  np.save(os.path.join(folder, EMBEDDINGS_FILE), embeddings)
  with open(os.path.join(folder, INFO_FILE), "w", encoding="utf-8") as f:
    json.dump({"text_model": text_model, "text_dim": int(embeddings.shape[1]),
               "num_items": len(raw_ids)}, f, indent=2)
  return folder


def _paths(path: str) -> Tuple[str, str, Optional[str]]:
  if os.path.isdir(path):
    return (os.path.join(path, EMBEDDINGS_FILE), os.path.join(path, ITEMS_FILE),
            os.path.join(path, INFO_FILE))
  parts = [p for p in path.split(",") if p]
  npy = [p for p in parts if p.endswith(".npy")]
  tsv = [p for p in parts if not p.endswith(".npy")]
  if len(parts) != 2 or len(npy) != 1:
    raise NewItemsError(f"--new_items={path}: give a folder with {ITEMS_FILE} and "
                        f"{EMBEDDINGS_FILE}, or EMB.npy,ITEMS.tsv")
  return npy[0], tsv[0], None


def read(path: str, text_dim: Optional[int] = None) -> NewItems:
  """Reads and checks a new-item table (folder or "EMB.npy,ITEMS.tsv")."""
  npy_path, tsv_path, info_path = _paths(path)
  for file_path in (npy_path, tsv_path):
    if not os.path.isfile(file_path):
      raise NewItemsError(f"new-item table {path}: {file_path} is missing")
  raw_ids, titles = [], []
  with open(tsv_path, encoding="utf-8") as f:
    header = f.readline().rstrip("\r\n").split("\t")
    if header[:1] != ["raw_item_id"]:
      raise NewItemsError(f"{tsv_path}: the header must start with raw_item_id "
                          f"(expected {HEADER!r})")
    for row, line in enumerate(f, start=2):
      line = line.rstrip("\r\n")
      if not line:
        continue
      raw_id, _, title = line.partition("\t")
      check_raw_id(raw_id, f"{tsv_path} row {row}")
      raw_ids.append(raw_id)
      titles.append(clean_title(title))
  seen = set()
  for raw_id in raw_ids:
    if raw_id in seen:
      raise NewItemsError(f"{tsv_path}: item {raw_id!r} is listed twice")
    seen.add(raw_id)
  embeddings = np.load(npy_path)
  if embeddings.ndim != 2 or embeddings.shape[0] != len(raw_ids):
    raise NewItemsError(f"{npy_path} has shape {embeddings.shape}; {tsv_path} lists "
                        f"{len(raw_ids)} items")
  if text_dim is not None and embeddings.shape[1] != text_dim:
    raise NewItemsError(f"{npy_path} has text_dim {embeddings.shape[1]}; the model's "
                        f"text table has {text_dim} (use the dataset's sentence model)")
  if not np.all(np.isfinite(embeddings)):
    raise NewItemsError(f"{npy_path} holds NaN or infinite values")
  text_model = ""
  if info_path and os.path.isfile(info_path):
    with open(info_path, encoding="utf-8") as f:
      text_model = json.load(f).get("text_model", "") or ""
  return NewItems(raw_ids, titles, embeddings.astype(np.float32, copy=False), text_model, path)
