"""Writes a prepared dataset folder in the format of `alterrec_tf.schema`.

* Vocabulary: raw item ids sorted as strings (code-point order), indices
  1..n-1; index 0 is the padding row `0 [PAD] ""`. Titles have tabs and line
  breaks replaced by spaces.
* Sessions: each split is sorted by timestamp (stable, so sessions with equal
  timestamps keep the reader's deterministic order) and cut into
  min(num_shards, sessions) contiguous shards of near-equal size (the first
  shards get one session more); an empty split has no shard. Reading a split's
  shards in name order gives its sessions in written order. Records are
  uncompressed `tf.train.Example`s serialised with sorted map keys, so the
  bytes do not depend on the process (protobuf map order otherwise can).
* Atomic output: everything is written to `<output_dir>.tmp-<pid>` next to the
  output folder, which replaces the output folder only when all is written; on
  failure the temporary folder is removed and an existing output is untouched.
  An existing non-empty output folder without a manifest is never replaced.
  Temporary folders left by a killed prepare (its pid no longer runs) are
  removed, and reported, by the next prepare of the same output folder; a full
  disk is one error naming the folder and the free space.

The Beam pipeline (`data_tools.beam`) writes through the same functions:
`vocab_from_items`, `write_vocab`, `shard_sizes` and `write_shard` per shard,
`write_text_table`, `file_hashes`, `write_manifest`, inside `atomic_output_dir`.
"""

import contextlib
import errno
import glob
import json
import os
import shutil
import sys
import tempfile
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from alterrec_tf.formats import schema
from data_tools import sessions as S


def build_vocab(sessions: pd.DataFrame) -> List[str]:
  """Raw item ids of the vocabulary; position i is dense index i (0 = padding)."""
  return vocab_from_items({item for items in sessions[S.ITEMS] for item in items})


def vocab_from_items(items: Iterable[str]) -> List[str]:
  """The vocabulary of a set of raw item ids (see `build_vocab`).

  Raises:
    S.DataToolsError: an id cannot be stored in the vocabulary file.
  """
  items = sorted(set(items))
  bad = [item for item in items if not item.strip() or any(
      c in item for c in "\t\r\n") or item == schema.PADDING_TOKEN]
  if bad:
    raise S.DataToolsError(f"item id {bad[0]!r} cannot be stored in "
                           f"{schema.VOCAB_FILE} (empty, a tab or line break, "
                           "or the padding token)")
  return [schema.PADDING_TOKEN] + items


def _cell(text: str) -> str:
  return " ".join(str(text).replace("\t", " ").splitlines()).strip()


def write_vocab(folder: str, vocab: Sequence[str], titles: Sequence[str]) -> str:
  """Writes `schema.VOCAB_FILE`; `titles[i]` belongs to `vocab[i]`."""
  lines = ["index\traw_item_id\ttitle"]
  lines += [f"{index}\t{raw}\t{_cell(title) if index else ''}"
            for index, (raw, title) in enumerate(zip(vocab, titles))]
  with open(os.path.join(folder, schema.VOCAB_FILE), "w", encoding="utf-8",
            newline="\n") as f:
    f.write("\n".join(lines) + "\n")
  return schema.VOCAB_FILE


def sort_for_writing(sessions: pd.DataFrame) -> pd.DataFrame:
  """The written order of one split's sessions."""
  return sessions.sort_values(S.TIMESTAMP, kind="stable").reset_index(drop=True)


def serialize(row, index: Dict[str, int]) -> bytes:
  """One session as canonical `tf.train.Example` bytes."""
  return schema.make_example([index[item] for item in row[S.ITEMS]],
                             row[S.SESSION_ID], row[S.USER_ID],
                             row[S.TIMESTAMP], row[S.EVAL_START])


def shard_sizes(num_sessions: int, num_shards: int) -> List[int]:
  """Sessions per shard of a split: min(num_shards, sessions) near-equal
  contiguous shards, the first ones one session larger; [] for no session."""
  count = min(num_shards, num_sessions)
  return [num_sessions // count + (shard < num_sessions % count)
          for shard in range(count)]


def write_shard(path: str, rows: Iterable[dict], index: Dict[str, int],
                on_written: Optional[Callable[[], None]] = None) -> int:
  """Writes sessions (dicts with the standard columns) as one TFRecord file.

  Args:
    path: the shard file.
    rows: the sessions, in written order.
    index: raw item id -> vocabulary index.
    on_written: called after each record (progress).

  Returns:
    The number of records written.
  """
  import tensorflow as tf  # (here: `prepare` loads it quietly after its checks)
  written = 0
  with tf.io.TFRecordWriter(path) as writer:
    for row in rows:
      writer.write(serialize(row, index))
      written += 1
      if on_written is not None:
        on_written()
  return written


def write_split(folder: str, split: str, sessions: pd.DataFrame,
                index: Dict[str, int], num_shards: int) -> List[str]:
  """Writes one split's sessions (already in written order) as shards.

  Returns:
    The shard file names, in order.
  """
  sizes = shard_sizes(len(sessions), num_shards)
  bounds = np.cumsum([0] + sizes)
  names = []
  rows = sessions.to_dict("records")
  with tqdm(total=len(rows), desc=f"write {split}", unit=" sessions",
            leave=False) as bar:
    for shard in range(len(sizes)):
      name = schema.shard_name(split, shard, len(sizes))
      write_shard(os.path.join(folder, name), rows[bounds[shard]:bounds[shard + 1]],
                  index, lambda: bar.update(1))
      names.append(name)
  return names


def write_text_table(folder: str, table: np.ndarray) -> str:
  """Saves the float32 item text table as `schema.TEXT_EMBEDDINGS_FILE`."""
  np.save(os.path.join(folder, schema.TEXT_EMBEDDINGS_FILE),
          np.ascontiguousarray(table, dtype=np.float32), allow_pickle=False)
  return schema.TEXT_EMBEDDINGS_FILE


def file_hashes(folder: str, names: Sequence[str]) -> Dict[str, str]:
  """{file name: sha256} of the written files."""
  return {name: schema.file_sha256(os.path.join(folder, name))
          for name in sorted(names)}


def write_manifest(folder: str, manifest: dict) -> None:
  """Writes `schema.MANIFEST_FILE` with sorted keys and 2-space indentation."""
  with open(os.path.join(folder, schema.MANIFEST_FILE), "w", encoding="utf-8",
            newline="\n") as f:
    json.dump(manifest, f, sort_keys=True, indent=2, ensure_ascii=False)
    f.write("\n")


def check_output_dir(output_dir: str) -> None:
  """Fails early if `output_dir` exists, is non-empty and is not a dataset.

  Raises:
    S.DataToolsError: the folder would be replaced but holds other things.
  """
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise S.DataToolsError(f"{output_dir}: --output_dir exists and is not a folder")
  if (os.path.isdir(output_dir) and os.listdir(output_dir)
      and not os.path.isfile(os.path.join(output_dir, schema.MANIFEST_FILE))):
    raise S.DataToolsError(
        f"{output_dir}: --output_dir is not empty and holds no "
        f"{schema.MANIFEST_FILE}; refusing to replace it (choose another folder)")
  check_writable_parent(output_dir)


def check_writable_parent(output_dir: str) -> None:
  """Fails before any input is read if the folder that will hold `output_dir`
  (the nearest existing one above it: the output is written next to it and
  renamed into place) cannot be written.

  Raises:
    S.DataToolsError: naming the folder and the reason.
  """
  parent = os.path.dirname(os.path.abspath(output_dir))
  while not os.path.isdir(parent) and os.path.dirname(parent) != parent:
    parent = os.path.dirname(parent)
  try:
    with tempfile.NamedTemporaryFile(dir=parent, prefix=".write-check-"):
      pass
  except OSError as error:
    raise S.DataToolsError(
        f"{parent}: cannot write there ({error.strerror or error}), so --output_dir="
        f"{output_dir} cannot be written; choose another --output_dir") from error


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


def remove_stale_temporaries(output_dir: str) -> List[str]:
  """Removes `<output_dir>.tmp-<pid>` / `.old-<pid>` folders whose prepare
  process no longer runs (killed: no handler could clean up) and reports each
  on stderr; a live process's folder is left alone. Returns the removed paths."""
  removed = []
  for path in sorted(glob.glob(glob.escape(output_dir) + ".tmp-*")
                     + glob.glob(glob.escape(output_dir) + ".old-*")):
    pid = path.rsplit("-", 1)[1]
    if not pid.isdigit() or not os.path.isdir(path) or _process_alive(int(pid)):
      continue
    shutil.rmtree(path, ignore_errors=True)
    print(f"removed {path}: left by a prepare (pid {pid}) that was killed",
          file=sys.stderr, flush=True)
    removed.append(path)
  return removed


def _is_disk_full(error: BaseException) -> bool:
  """A write failed for lack of space: ENOSPC and friends, numpy's
  "N requested and M written", TensorFlow's "No space left on device"."""
  if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
    return True
  message = str(getattr(error, "message", "") or error)
  return ("requested and" in message and "written" in message) or any(
      words in message for words in ("No space left", "Disk quota", "File too large"))


@contextlib.contextmanager
def atomic_output_dir(output_dir: str) -> Iterator[str]:
  """Yields a temporary folder that replaces `output_dir` on success.

  On an exception the temporary folder is removed and `output_dir` is left
  as it was; a full disk becomes a `DataToolsError` naming the folder.
  Temporary folders of killed earlier runs are removed first.
  """
  output_dir = os.path.abspath(output_dir)
  check_output_dir(output_dir)
  parent = os.path.dirname(output_dir)
  os.makedirs(parent, exist_ok=True)
  remove_stale_temporaries(output_dir)
  temp = f"{output_dir}.tmp-{os.getpid()}"
  shutil.rmtree(temp, ignore_errors=True)
  os.makedirs(temp)
  try:
    yield temp
  except BaseException as error:
    shutil.rmtree(temp, ignore_errors=True)
    if _is_disk_full(error):
      free_mb = shutil.disk_usage(parent).free / 2**20
      raise S.DataToolsError(
          f"{temp}: no space left to write the dataset (the disk is full or a "
          f"file-size limit was reached; {free_mb:,.0f} MB free there); nothing "
          f"was written to {output_dir}: free space or choose another "
          "--output_dir, then run the same command again") from error
    raise
  old = f"{output_dir}.old-{os.getpid()}"
  try:
    check_output_dir(output_dir)
    if os.path.isdir(output_dir):
      os.rename(output_dir, old)
    os.rename(temp, output_dir)
  except BaseException:
    if os.path.isdir(old) and not os.path.exists(output_dir):
      os.rename(old, output_dir)
    shutil.rmtree(temp, ignore_errors=True)
    raise
  shutil.rmtree(old, ignore_errors=True)
