"""TFRecord shards and the manifest in the Beam pipeline.

Shards: like `writer.write_split`, each split is cut into
min(--num_shards, sessions) contiguous runs of its written order (timestamp,
then reader order: `read.write_key`) of near-equal size (`writer.shard_sizes`).
One worker per split gathers the split's sort keys and returns the key at the
start of every shard but the first; each session then goes to its shard by
bisection, the shards are grouped (GroupByKey on (split, shard)), and each is
sorted and written by `writer.write_shard` with `schema.shard_name`, so the
files hold the records, in the order, that the local path writes.

Manifest: a last step whose side inputs are every written file and count, so
it runs after all writes; it hashes the files (`writer.file_hashes`), builds
the manifest with `prepare.build_manifest` and writes it with
`writer.write_manifest`.
"""

import bisect
import os
from typing import Dict, List, Tuple

import apache_beam as beam
import numpy as np

from alterrec_tf.formats import identity, schema
from data_tools import prepare, writer
from data_tools import sessions as S
from data_tools.beam.read import progress, write_key
from data_tools.beam.select import SplitCountsFn, singleton
from data_tools.counts import SessionStats
from data_tools.options import PrepareOptions


def shard_bounds(split_keys: tuple, num_shards: int) -> Tuple[str, Tuple[int, list]]:
  """(split, (number of shards, write key at the start of shards 1..n-1)) of
  (split, the split's write keys)."""
  split, keys = split_keys
  ordered = sorted(keys)
  sizes = writer.shard_sizes(len(ordered), num_shards)
  starts = np.cumsum(sizes)[:-1]
  return split, (len(sizes), [ordered[int(start)] for start in starts])


def assign_shard(session: dict, bounds: Dict[str, Tuple[int, list]]):
  """((split, shard, number of shards), session)."""
  count, starts = bounds[session[S.SPLIT]]
  shard = bisect.bisect_right(starts, write_key(session))
  return (session[S.SPLIT], shard, count), session


class WriteShardFn(beam.DoFn):
  """Writes one shard: its sessions sorted by `write_key`, `writer.write_shard`."""

  def __init__(self, folder: str):
    self._folder = folder
    self._index: Dict[str, int] = {}

  def process(self, keyed, vocab: List[str]):
    (split, shard, count), sessions = keyed
    if len(self._index) != len(vocab):
      self._index = {item: row for row, item in enumerate(vocab)}
    name = schema.shard_name(split, shard, count)
    rows = sorted(sessions, key=write_key)
    written = writer.write_shard(os.path.join(self._folder, name), rows, self._index)
    progress(f"wrote {name} ({written:,} sessions)")
    yield split, shard, name


def write_shards(sessions: beam.PCollection, vocab: beam.PCollection, folder: str,
                 options: PrepareOptions) -> beam.PCollection:
  """The shards of every split; returns (split, shard, file name) per shard."""
  bounds = (sessions
            | "SortKeys" >> beam.Map(lambda s: (s[S.SPLIT], write_key(s)))
            | "KeysBySplit" >> beam.GroupByKey()
            | "ShardBounds" >> beam.Map(shard_bounds, options.num_shards))
  return (sessions
          | "AssignShard" >> beam.Map(assign_shard, beam.pvalue.AsDict(bounds))
          | "GroupShards" >> beam.GroupByKey()
          | "WriteShard" >> beam.ParDo(WriteShardFn(folder), vocab=singleton(vocab)))


def _files(vocab_file: str, text: dict, shards: List[Tuple[str, int, str]]) -> dict:
  files = {"vocab": vocab_file, "text_embeddings": text["file"]}
  for split in schema.SPLITS:
    files[split] = [name for s, _, name in sorted(shards) if s == split]
  return files


class ManifestFn(beam.DoFn):
  """Hashes the written files and writes the manifest (the pipeline's last step)."""

  def __init__(self, folder: str, options: PrepareOptions):
    self._folder = folder
    self._options = options

  def process(self, unused, header: S.RawSessions, stats: SessionStats, rule: str,
              frequency: dict, unseen: dict, vocab_file: str, text: dict, shards: list):
    files = _files(vocab_file, text, shards)
    names = [vocab_file] + [name for _, _, name in shards]
    names += [text["file"]] if text["file"] else []
    written = {"files": files, "text_dim": text["text_dim"],
               "num_items_without_text": text["num_items_without_text"],
               "file_hashes": writer.file_hashes(self._folder, names)}
    written["data_identity"] = identity.dataset_identity(self._folder, written)
    report = prepare.filter_report(self._options, header, frequency, unseen)
    manifest = prepare.build_manifest(header, self._options, stats, rule, report, written)
    writer.write_manifest(self._folder, manifest)
    progress(f"wrote {schema.MANIFEST_FILE}")
    yield manifest


def split_counts(sessions: beam.PCollection) -> beam.PCollection:
  """One `counts.SplitCounts` of the written sessions."""
  return sessions | "CountWritten" >> beam.CombineGlobally(SplitCountsFn())


def session_stats(sessions: beam.PCollection, counts: beam.PCollection,
                  vocab: beam.PCollection) -> beam.PCollection:
  """One `counts.SessionStats` of the written sessions."""
  users = (sessions | "Users" >> beam.Map(lambda s: s[S.USER_ID])
           | "KnownUsers" >> beam.Filter(lambda user: user != "")
           | "DistinctUsers" >> beam.Distinct()
           | "CountUsers" >> beam.combiners.Count.Globally())
  train_items = (sessions | "WrittenTrain" >> beam.Filter(lambda s: s[S.SPLIT] == "train")
                 | "WrittenTrainItems" >> beam.FlatMap(lambda s: s[S.ITEMS])
                 | "DistinctWrittenTrain" >> beam.Distinct()
                 | "CountTrainItems" >> beam.combiners.Count.Globally())
  return counts | "Stats" >> beam.Map(
      lambda counts, users, vocab, train: SessionStats(counts, users, len(vocab),
                                                       len(vocab) - 1 - train),
      users=singleton(users), vocab=singleton(vocab), train=singleton(train_items))
