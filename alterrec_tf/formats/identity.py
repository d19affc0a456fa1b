"""The identity of a prepared dataset that two machines agree on.

A dataset folder's `content_hash` (manifest.json) hashes every file's bytes,
the float32 item text table included. The text table comes out of a sentence
encoder whose float rounding depends on the CPU's instruction set (AVX-512 or
not), so two machines that prepare the same raw data get the same sessions,
vocabulary and split but text tables that differ in the last bits, and so two
content hashes. The identity recorded in the manifest (`data_identity`) and in
each run's results.json therefore has two parts:

* `exact_hash`, with `exact_files`: the SHA-256 of every file but the text table
  (the TFRecord shards of each split and the vocabulary), compared exactly;
* `text`: the text table's file name, shape, L2 (Frobenius) norm and a
  `signature` of `SIGNATURE_SIZE` signed sums of all its values (the sign of
  each value in each sum is a fixed hash of its position, so a changed value, a
  swapped row or a changed column moves every sum). Two tables are the same text
  when every sum differs by at most `TEXT_RELATIVE_TOLERANCE` times the table's
  L2 norm.

Why signed sums and not a hash of rounded values: with 1.3 M values (Online
Retail: 3.4k items x 384), some value always lies within float noise of a
rounding boundary, so rounded hashes of two machines' tables disagree even at
2 decimals. Random float noise of relative size e moves each signed sum by
about e x the L2 norm (the signs are uncorrelated with the noise); a change of
one value by d moves every sum by d. The tolerance, 1e-4 of the L2 norm (5.9e-3
on Online Retail, whose rows have unit norm), accepts noise of relative size up
to ~4e-5, 300 times float32's epsilon (measured on Online Retail: noise of
relative size 1e-7 moves the sums by at most 5.9e-6, 1e-5 by 1.4e-3), and refuses
a change of any one value by more than the tolerance (on Online Retail: by 1e-2;
the absolute tolerance grows with the square root of the number of items), or
two rows swapped (BUILD_NOTES.md, "Dataset identity across CPUs and the pinned
install").
"""

import os
from typing import List, Mapping, Optional

import numpy as np

from alterrec_tf.formats import schema

IDENTITY_VERSION = 1
SIGNATURE_SIZE = 16
# A text table is the recorded one when each signed sum differs by at most this
# times the recorded table's L2 norm (module docstring).
TEXT_RELATIVE_TOLERANCE = 1e-4
_BLOCK_VALUES = 1 << 20  # values hashed per block (8 MiB of uint64)


def _mix(index: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser of each uint64 (wrapping arithmetic): a fixed,
  platform-independent pseudo-random 64-bit word per position."""
  with np.errstate(over="ignore"):
    z = index * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0xD1B54A32D192ED03)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def text_signature(table: np.ndarray) -> List[float]:
  """`SIGNATURE_SIZE` signed sums (float64) of the table's values; the sign of
  value i in sum k is bit k of `_mix(i)`, i the value's row-major position."""
  values = np.asarray(table, dtype=np.float64).reshape(-1)
  sums = np.zeros(SIGNATURE_SIZE, dtype=np.float64)
  for start in range(0, values.size, _BLOCK_VALUES):
    block = values[start:start + _BLOCK_VALUES]
    words = _mix(np.arange(start, start + block.size, dtype=np.uint64))
    for k in range(SIGNATURE_SIZE):
      negative = ((words >> np.uint64(k)) & np.uint64(1)).astype(bool)
      sums[k] += block[~negative].sum() - block[negative].sum()
  return [float(s) for s in sums]


def text_identity(table: np.ndarray, file_name: str) -> dict:
  """What `compare` needs of a text table: file, shape, L2 norm, signature."""
  values = np.asarray(table, dtype=np.float64)
  return {"file": file_name, "shape": [int(n) for n in values.shape],
          "l2_norm": float(np.sqrt(np.sum(values * values))),
          "signature": text_signature(values)}


def exact_hash(file_hashes: Mapping[str, str]) -> str:
  """One hash over the files' hashes (the text table left out by the caller):
  `schema.content_hash` of the exact part."""
  return schema.content_hash(file_hashes)


def dataset_identity(data_dir: str, manifest: Mapping) -> dict:
  """The `data_identity` of the dataset in data_dir from its manifest's `files`
  and `file_hashes` (and its text table, read from data_dir)."""
  text_file = (manifest.get("files") or {}).get("text_embeddings")
  exact = {name: sha for name, sha in manifest["file_hashes"].items() if name != text_file}
  text = None
  if text_file:
    text = text_identity(np.load(os.path.join(data_dir, text_file), allow_pickle=False),
                         text_file)
  return {"version": IDENTITY_VERSION, "exact_hash": exact_hash(exact),
          "exact_files": dict(sorted(exact.items())), "text": text}


def current_identity(data_dir: str, manifest: dict) -> dict:
  """The manifest's `data_identity`, computed from data_dir for a dataset
  prepared before it was recorded (and then kept in `manifest`)."""
  if not manifest.get("data_identity"):
    manifest["data_identity"] = dataset_identity(data_dir, manifest)
  return manifest["data_identity"]


def _short(sha: Optional[str]) -> str:
  return f"{sha[:12]}..." if sha else "none"


def compare(recorded: Mapping, current: Mapping) -> List[str]:
  """How the dataset `current` differs from `recorded` (both `data_identity`
  dicts): exactly on the sessions, vocabulary and split, within the tolerance
  on the text table. Each line names the file and the size of the difference;
  empty when they are the same dataset."""
  problems = []
  if recorded.get("exact_hash") != current.get("exact_hash"):
    old, new = recorded.get("exact_files") or {}, current.get("exact_files") or {}
    for name in sorted(set(old) | set(new)):
      if old.get(name) != new.get(name):
        problems.append(f"data file {name} differs (sha256 {_short(old.get(name))}, "
                        f"now {_short(new.get(name))})")
    if not problems:
      problems.append(f"data exact_hash {_short(recorded.get('exact_hash'))} "
                      f"(now {_short(current.get('exact_hash'))})")
  problems += compare_text(recorded.get("text"), current.get("text"))
  return problems


def text_difference(recorded: Mapping, current: Mapping) -> float:
  """The largest difference between the two tables' signed sums."""
  return float(np.max(np.abs(np.subtract(recorded["signature"], current["signature"]))))


def text_tolerance(recorded: Mapping) -> float:
  """The largest signed-sum difference still taken as float noise."""
  return TEXT_RELATIVE_TOLERANCE * float(recorded["l2_norm"])


def compare_text(recorded: Optional[Mapping], current: Optional[Mapping]) -> List[str]:
  """`compare`'s lines about the text table (empty when it is the same text)."""
  if not recorded and not current:
    return []
  if not recorded or not current:
    return [f"data text table: {'none' if not recorded else recorded['file']} "
            f"(now {'none' if not current else current['file']})"]
  if list(recorded["shape"]) != list(current["shape"]):
    return [f"data file {current['file']} has shape {list(current['shape'])} "
            f"(was {list(recorded['shape'])})"]
  difference, tolerance = text_difference(recorded, current), text_tolerance(recorded)
  if not difference <= tolerance:  # also NaN
    return [f"data file {current['file']} differs beyond float rounding: signed-sum "
            f"difference {difference:.3g} > tolerance {tolerance:.3g} "
            f"({TEXT_RELATIVE_TOLERANCE:g} x its L2 norm {recorded['l2_norm']:.6g})"]
  return []
