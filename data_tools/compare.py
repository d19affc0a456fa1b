"""Compares two prepared dataset folders regardless of record and row order.

Used to check that `data_tools.beam_prepare` gives what `data_tools.prepare`
gives (tests/test_beam_prepare.py, benchmarks/beam_prepare.py):

* sessions: per split, the multiset of (session_id, user_id, timestamp,
  eval_start, raw item ids) read back from the TFRecord shards;
* vocabulary: the set of raw item ids (and each item's title);
* item text table: each item's row, found by raw id, within `atol`;
* manifest: every field but the file hashes, the content hash, the data
  identity (its text part differs in float rounding) and the
  --output_dir flag (and, as told, the dataset name).

Also reported, not required: whether the folders are byte-identical (equal
content hashes).
"""

import collections
import dataclasses
from typing import Counter, Dict, List, Optional, Tuple

import numpy as np

from alterrec_tf.formats import schema

SessionKey = Tuple[str, str, int, int, Tuple[str, ...]]
IGNORED_MANIFEST_KEYS = ("file_hashes", "content_hash", "data_identity")
IGNORED_FLAGS = ("output_dir",)


@dataclasses.dataclass
class Comparison:
  """The outcome of `compare`; `equal` when `differences` is empty."""
  differences: List[str]
  sessions_per_split: Dict[str, int]
  num_items: int
  max_embedding_difference: Optional[float]
  byte_identical: bool

  @property
  def equal(self) -> bool:
    return not self.differences

  def describe(self) -> str:
    """One paragraph: the verdict, what was compared, the differences."""
    worst = self.max_embedding_difference
    text = (f"{'EQUAL' if self.equal else 'DIFFERENT'}: sessions per split "
            f"{self.sessions_per_split}, {self.num_items} vocabulary items, max |embedding "
            f"difference| {'n/a' if worst is None else f'{worst:.3g}'}, byte-identical "
            f"files: {self.byte_identical}")
    return "\n  ".join([text] + self.differences)


def read_sessions(folder: str, manifest: dict) -> Dict[str, Counter]:
  """{split: multiset of `SessionKey`} of a prepared folder, raw item ids."""
  import tensorflow as tf
  vocab = [raw for raw, _ in schema.read_vocab(folder)]
  found: Dict[str, Counter] = {}
  for split in schema.SPLITS:
    sessions: Counter = collections.Counter()
    for path in schema.split_files(folder, manifest, split):
      for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature
        sessions[(feature[schema.SESSION_ID].bytes_list.value[0].decode(),
                  feature[schema.USER_ID].bytes_list.value[0].decode(),
                  int(feature[schema.TIMESTAMP].int64_list.value[0]),
                  int(feature[schema.EVAL_START].int64_list.value[0]),
                  tuple(vocab[i] for i in feature[schema.ITEM_IDS].int64_list.value))] += 1
    found[split] = sessions
  return found


def _session_differences(first: Dict[str, Counter], second: Dict[str, Counter]) -> List[str]:
  differences = []
  for split in schema.SPLITS:
    only_first = first[split] - second[split]
    only_second = second[split] - first[split]
    if only_first or only_second:
      example = next(iter(only_first or only_second))
      differences.append(
          f"{split}: {sum(only_first.values())} session(s) only in the first folder, "
          f"{sum(only_second.values())} only in the second (e.g. {example[0]!r})")
  return differences


def _vocab_differences(first: Dict[str, str], second: Dict[str, str]) -> List[str]:
  differences = []
  if set(first) != set(second):
    differences.append(f"vocabulary: {len(set(first) - set(second))} item(s) only in the "
                       f"first folder, {len(set(second) - set(first))} only in the second")
  titles = [item for item in set(first) & set(second) if first[item] != second[item]]
  if titles:
    differences.append(f"vocabulary: {len(titles)} title(s) differ (e.g. {titles[0]!r})")
  return differences


def _embedding_difference(folders: Tuple[str, str], manifests: Tuple[dict, dict],
                          atol: float) -> Tuple[Optional[float], List[str]]:
  tables = [schema.load_text_embeddings(f, m) for f, m in zip(folders, manifests)]
  if tables[0] is None or tables[1] is None:
    same = tables[0] is None and tables[1] is None
    return None, [] if same else ["text table: only one folder has one"]
  rows = [{raw: row for row, (raw, _) in enumerate(schema.read_vocab(f))} for f in folders]
  common = sorted(set(rows[0]) & set(rows[1]))
  if tables[0].shape[1] != tables[1].shape[1]:
    return None, [f"text table: widths {tables[0].shape[1]} and {tables[1].shape[1]}"]
  gap = np.abs(tables[0][[rows[0][i] for i in common]] - tables[1][[rows[1][i] for i in common]])
  worst = float(gap.max()) if gap.size else 0.0
  if worst > atol:
    item = common[int(np.argmax(gap.max(axis=1)))]
    return worst, [f"text table: rows differ by up to {worst:.3g} > {atol:g} (item {item!r})"]
  return worst, []


def _comparable(manifest: dict, ignore_name: bool) -> dict:
  kept = {k: v for k, v in manifest.items() if k not in IGNORED_MANIFEST_KEYS}
  kept["flags"] = {k: v for k, v in manifest["flags"].items() if k not in IGNORED_FLAGS}
  if ignore_name:
    kept.pop("dataset_name", None)
  return kept


def _manifest_differences(first: dict, second: dict, ignore_name: bool) -> List[str]:
  a, b = _comparable(first, ignore_name), _comparable(second, ignore_name)
  return [f"manifest: {key!r} differs ({a.get(key)!r} vs {b.get(key)!r})"[:300]
          for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def compare(first: str, second: str, atol: float = 1e-6,
            ignore_dataset_name: bool = False) -> Comparison:
  """Compares prepared folders `first` and `second` (see the module docstring).

  Args:
    first: a prepared dataset folder.
    second: another one.
    atol: the largest absolute difference allowed in an item's text vector.
    ignore_dataset_name: do not compare the manifests' dataset names.
  """
  manifests = (schema.load_manifest(first, verify_hashes=True),
               schema.load_manifest(second, verify_hashes=True))
  sessions = (read_sessions(first, manifests[0]), read_sessions(second, manifests[1]))
  vocabs = [{raw: title for raw, title in schema.read_vocab(folder)[1:]}
            for folder in (first, second)]
  worst, text_differences = _embedding_difference((first, second), manifests, atol)
  differences = (_session_differences(*sessions) + _vocab_differences(*vocabs)
                 + text_differences
                 + _manifest_differences(*manifests, ignore_name=ignore_dataset_name))
  return Comparison(
      differences=differences,
      sessions_per_split={s: sum(sessions[0][s].values()) for s in schema.SPLITS},
      num_items=len(vocabs[0]), max_embedding_difference=worst,
      byte_identical=manifests[0]["content_hash"] == manifests[1]["content_hash"])

