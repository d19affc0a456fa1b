"""Our splits as RecBole atomic benchmark files: one row per scored prefix.

`export(data_dir, out_dir, max_len)` writes the folder `out_dir`, whose base name
is the dataset name RecBole is given (its `data_path/<dataset>/` layout):

  <name>.train.inter   prefix_id:token  item_id_list:token_seq  item_id:token
  <name>.valid.inter   (same columns)
  <name>.test.inter    (same columns)
  <name>.item          item_id:token [text_codes:token_seq]: every item of our catalogue
  targets.npz          int32 [rows] target of every row of each split (our item indices),
                       and train_item_counts [num_items] (training occurrences of each item)
  export.json          counts, max_len, the item vocabulary, the text codes, the data hash

A row is one scored prefix of our tf.data pipeline (`data.windows` at stride 1):
the target and exactly its last min(t, max_len) items, rows in file order (session
by session, then target position), so RecBole trains, validates and is tested on
the prefixes and targets we score. Items are our dense indices written as decimal
tokens (RecBole remaps tokens to ids of its own; `peers/recbole_run.py` maps them
back). All three splits use stride 1: our trainer's training and validation windows
may start later (`--train_window_stride`, `--eval_window_stride`) and then give a
long session's later targets less context than max_len.

The `.item` file lists every item (also those that only appear in histories cut
by max_len), so RecBole ranks the same catalogue. Where the dataset has a text
table, `text_codes` carries it as discrete attributes (RecBole 1.2.1's FDSA and
S3Rec embed token features only; a float_seq field is embedded as its mean): a
product quantisation of the frozen text vectors, `subspaces` contiguous slices of
the dimensions, each k-means coded into `codes` clusters (numpy, seeded).

The folder is written under a temporary name beside `out_dir` and renamed into
place: a failure or a kill leaves the previous folder (or none), never a partial
one. An export of the same data and settings is reused (`export_id`).
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Dict, List, Optional

import numpy as np

from alterrec_tf.data import windows
from alterrec_tf.formats import schema

EXPORT_VERSION = 2  # 2: targets.npz holds train_item_counts
EXPORT_FILE = "export.json"
TARGETS_FILE = "targets.npz"
SPLITS = schema.SPLITS
INTER_FIELDS = ("prefix_id:token", "item_id_list:token_seq", "item_id:token")
TEXT_CODES_FIELD = "text_codes"
# Sub-vectors and clusters of the text codes (ahead of VQ-Rec's 32 x 256: a few
# hundred attribute tokens, as many as S3Rec's predicted attributes stay cheap).
DEFAULT_SUBSPACES = 8
DEFAULT_CODES = 32
KMEANS_ITERATIONS = 25


@dataclasses.dataclass
class Prefixes:
  """The scored prefixes of one split, in our order.

  Attributes:
    histories: int32 [len_i] per row, 1 <= len_i <= max_len: the items the
      model reads, oldest first.
    targets: int32 [rows], the item to predict.
  """

  histories: List[np.ndarray]
  targets: np.ndarray


def scored_prefixes(files: List[str], max_len: int) -> Prefixes:
  """Every scored prefix of `files` (TFRecord shards) with its last max_len items.

  Args:
    files: the shards of one split, in the manifest's order.
    max_len: items of context kept (the models' --max_len).

  Returns:
    `Prefixes` in file order: session by session, each session's windows in
    order, each window's scored positions left to right.
  """
  histories: List[np.ndarray] = []
  targets: List[np.ndarray] = []
  batches = windows.windows_dataset(files, max_len, stride=1).batch(1024)
  for batch in batches.as_numpy_iterator():
    rows, columns = np.nonzero(batch[windows.TARGET_MASK])  # row-major: our order
    item_ids = batch[windows.ITEM_IDS].astype(np.int32)
    histories.extend(item_ids[row, :column + 1] for row, column in zip(rows, columns))
    targets.append(batch[windows.TARGET_IDS][rows, columns].astype(np.int32))
  return Prefixes(histories, np.concatenate(targets) if targets else np.zeros([0], np.int32))


def evaluation_order(data_dir: str, max_len: int, eval_batch_size: int,
                     split: str = "test") -> np.ndarray:
  """Where our evaluator's prefixes sit among the export's rows of `split`.

  Our runs keep test ranks in the evaluator's order (`SplitData.batches`: windows
  grouped by length, `eval_batch_size` at a time, then each batch's scored
  positions), which the report's long-tail table compares across runs. A prefix is
  matched to an export row by its items and target; rows equal in both are
  interchangeable (same history, same list, same rank).

  Returns:
    int [rows]: the export row of each prefix in the evaluator's order, so
    `ranks[order]` are a peer's ranks in the order of our test_ranks.npz.
  """
  manifest = schema.load_manifest(data_dir)
  files = schema.split_files(data_dir, manifest, split)
  rows = scored_prefixes(files, max_len)
  slots: Dict[tuple, List[int]] = {}
  for row in range(len(rows.targets) - 1, -1, -1):
    key = (int(rows.targets[row]), *rows.histories[row].tolist())
    slots.setdefault(key, []).append(row)
  order: List[int] = []
  for batch in windows.SplitData(files, max_len, 1).batches(eval_batch_size):
    items = batch[windows.ITEM_IDS].numpy()
    targets = batch[windows.TARGET_IDS].numpy()
    for b, column in np.argwhere(batch[windows.TARGET_MASK].numpy()):
      order.append(slots[(int(targets[b, column]), *items[b, :column + 1].tolist())].pop())
  return np.asarray(order, np.int64)


def _nearest(points: np.ndarray, centres: np.ndarray, chunk: int = 65536) -> np.ndarray:
  """Index of each point's nearest centre (squared Euclidean): int [n]."""
  norms = (centres ** 2).sum(axis=1)
  out = np.empty(len(points), np.int64)
  for start in range(0, len(points), chunk):
    part = points[start:start + chunk]
    out[start:start + chunk] = np.argmin(norms[None, :] - 2.0 * part @ centres.T, axis=1)
  return out


def kmeans(points: np.ndarray, k: int, rng: np.random.Generator,
           iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
  """Lloyd's k-means from k distinct random points; an emptied cluster keeps its centre.

  Args:
    points: float [n, dim].
    k: clusters (at most n are used).

  Returns:
    int [n] cluster of each point.
  """
  k = min(k, len(points))
  centres = points[rng.choice(len(points), size=k, replace=False)].copy()
  for _ in range(iterations):
    assignment = _nearest(points, centres)
    sums = np.zeros_like(centres)
    np.add.at(sums, assignment, points)
    counts = np.bincount(assignment, minlength=k)
    filled = counts > 0
    centres[filled] = sums[filled] / counts[filled, None]
  return _nearest(points, centres)


def text_codes(table: np.ndarray, subspaces: int, codes: int, seed: int = 0) -> np.ndarray:
  """Product quantisation of the item text table.

  Args:
    table: float [num_items, text_dim], row 0 = padding.
    subspaces: contiguous slices of the dimensions, each coded on its own.
    codes: clusters per slice.

  Returns:
    int32 [num_items, subspaces]: the cluster of each item's slice (row 0 zeros).
  """
  vectors = np.asarray(table[1:], np.float64)
  rng = np.random.default_rng(seed)
  out = np.zeros([len(table), subspaces], np.int32)
  for index, columns in enumerate(np.array_split(np.arange(table.shape[1]), subspaces)):
    out[1:, index] = kmeans(vectors[:, columns], codes, rng)
  return out


def export_id(manifest: dict, max_len: int, codes: Optional[dict]) -> str:
  """What an export depends on, hashed: data content, max_len, text-code settings."""
  key = {"version": EXPORT_VERSION, "data_content_hash": manifest.get("content_hash"),
         "max_len": max_len, "text_codes": codes}
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


def read_export(out_dir: str) -> Optional[dict]:
  """export.json of a finished export folder, or None (no folder, or not finished)."""
  path = os.path.join(out_dir, EXPORT_FILE)
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except ValueError:
      return None


def read_targets(out_dir: str) -> Dict[str, np.ndarray]:
  """{split: int32 [rows]} targets of an export folder (and "train_item_counts")."""
  with np.load(os.path.join(out_dir, TARGETS_FILE), allow_pickle=False) as data:
    return {split: data[split] for split in data.files}


def _check_dataset(data_dir: str, manifest: dict) -> None:
  for split in SPLITS:
    if not manifest["files"].get(split):
      raise schema.DataError(f"{data_dir} has no {split} split (manifest.json lists no "
                             f"{split} shards): RecBole needs train, valid and test; "
                             "prepare the dataset with all three")


def _write_inter(path: str, split: str, prefixes: Prefixes) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write("\t".join(INTER_FIELDS) + "\n")
    for row, (history, target) in enumerate(zip(prefixes.histories, prefixes.targets)):
      f.write(f"{split}-{row}\t{' '.join(map(str, history.tolist()))}\t{int(target)}\n")


def _write_items(path: str, num_items: int, codes: Optional[np.ndarray]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write("item_id:token" + (f"\t{TEXT_CODES_FIELD}:token_seq" if codes is not None else "")
            + "\n")
    for item in range(1, num_items):
      tokens = ("\t" + " ".join(f"{s}-{c}" for s, c in enumerate(codes[item].tolist()))
                if codes is not None else "")
      f.write(f"{item}{tokens}\n")


def _length_summary(prefixes: Prefixes) -> dict:
  lengths = np.array([len(h) for h in prefixes.histories] or [0])
  return {"mean": float(lengths.mean()), "max": int(lengths.max())}


def export(data_dir: str, out_dir: str, max_len: int, subspaces: int = DEFAULT_SUBSPACES,
           codes: int = DEFAULT_CODES, seed: int = 0) -> dict:
  """Writes (or reuses) the atomic folder `out_dir` of the prepared dataset `data_dir`.

  Args:
    data_dir: a folder of `data_tools.prepare`.
    out_dir: the folder to write; its base name is the RecBole dataset name.
    max_len: items of context per row (the models' --max_len).
    subspaces, codes: the text codes (`text_codes`); subspaces=0: none.
    seed: of the k-means.

  Returns:
    The export's description (export.json).

  Raises:
    DataError: `data_dir` is not a complete prepared dataset.
    ValueError: max_len or the text-code settings are out of range.
  """
  if max_len < 1:
    raise ValueError(f"max_len is {max_len}; it must be at least 1")
  if subspaces < 0 or (subspaces and codes < 2):
    raise ValueError(f"text codes: {subspaces} subspaces of {codes} codes; use subspaces=0 "
                     "(none) or subspaces >= 1 with codes >= 2")
  manifest = schema.load_manifest(data_dir)
  _check_dataset(data_dir, manifest)
  table = schema.load_text_embeddings(data_dir, manifest) if subspaces else None
  if table is not None and subspaces > table.shape[1]:
    raise ValueError(f"{subspaces} text-code subspaces but the text vectors have "
                     f"{table.shape[1]} dimensions")
  code_settings = (None if table is None else
                   {"subspaces": subspaces, "codes": codes, "seed": seed,
                    "iterations": KMEANS_ITERATIONS, "source": schema.TEXT_EMBEDDINGS_FILE})
  identity = export_id(manifest, max_len, code_settings)
  existing = read_export(out_dir)
  if existing is not None and existing.get("export_id") == identity:
    return existing

  name = os.path.basename(os.path.normpath(out_dir))
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{name}.staging-", dir=parent)
  try:
    rows: Dict[str, int] = {}
    lengths: Dict[str, dict] = {}
    targets: Dict[str, np.ndarray] = {}
    for split in SPLITS:
      prefixes = scored_prefixes(schema.split_files(data_dir, manifest, split), max_len)
      _write_inter(os.path.join(staging, f"{name}.{split}.inter"), split, prefixes)
      rows[split], lengths[split] = len(prefixes.targets), _length_summary(prefixes)
      targets[split] = prefixes.targets
    item_codes = (text_codes(table, subspaces, codes, seed) if table is not None else None)
    _write_items(os.path.join(staging, f"{name}.item"), manifest["num_items"], item_codes)
    train_files = schema.split_files(data_dir, manifest, "train")
    counts = windows.item_counts(train_files, manifest["num_items"]).numpy()
    np.savez(os.path.join(staging, TARGETS_FILE), train=targets["train"],
             valid=targets["valid"], test=targets["test"], train_item_counts=counts)
    vocab = schema.read_vocab(data_dir)
    description = {
        "version": EXPORT_VERSION, "export_id": identity, "name": name,
        "dataset": manifest.get("dataset_name", ""), "data_dir": os.path.abspath(data_dir),
        "data_content_hash": manifest.get("content_hash"),
        "eval_protocol": manifest.get("eval_protocol"), "max_len": max_len,
        "num_items": manifest["num_items"], "rows": rows, "history_length": lengths,
        "fields": list(INTER_FIELDS), "text_codes": code_settings,
        "item_tokens": "our item index (row of item_vocab.tsv) as a decimal token; "
                       "0 is padding and never written",
        "item_vocab": [row[0] for row in vocab],
        "rows_are": "every scored prefix with exactly its last min(t, max_len) items "
                    "(tf.data windows at stride 1), in file order",
    }
    with open(os.path.join(staging, EXPORT_FILE), "w", encoding="utf-8") as f:
      json.dump(description, f, indent=1)
    _replace_folder(staging, out_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return description


def _replace_folder(staging: str, out_dir: str) -> None:
  """Renames `staging` to `out_dir`, an older `out_dir` first moved aside and removed."""
  if not os.path.exists(out_dir):
    os.replace(staging, out_dir)
    return
  retired = tempfile.mkdtemp(prefix=".retired-", dir=os.path.dirname(os.path.abspath(out_dir)))
  os.replace(out_dir, os.path.join(retired, "old"))
  os.replace(staging, out_dir)
  shutil.rmtree(retired, ignore_errors=True)
