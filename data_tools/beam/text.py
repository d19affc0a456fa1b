"""The vocabulary, its file and the item text table in the Beam pipeline.

* Vocabulary: the distinct items of the selected sessions, gathered on one
  worker (dense indices are the ranks of the sorted ids) and checked by
  `filtering.require_splits` and `writer.vocab_from_items`, like `prepare`.
* Vocabulary file: one worker joins the vocabulary with the catalogue rows of
  its items, builds the text frame with `prepare.item_texts`, fails on an item
  without text (`embed.field_columns`, --require_text), writes
  `writer.write_vocab` with `prepare.titles`, and emits each item's field texts.
* Embedding: the distinct non-empty texts go through BatchElements
  (--embedding_batch_size texts per batch) into `EmbedFn`, which loads the
  sentence model once per worker in `setup` and embeds a batch with
  `embed.embed_texts`. Texts are joined back to their (item, field) uses by
  text (CoGroupByKey); each item's vector is `embed.mean_field_vector` of its
  fields in field order.
* Text table: the item vectors are gathered on one worker (one .npy file),
  placed at their vocabulary rows (no text: a zero row) and written with
  `writer.write_text_table`.
"""

import os
import time
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pandas as pd

from data_tools import embed, filtering, prepare, writer
from data_tools.beam.read import progress
from data_tools.beam.select import singleton
from data_tools.counts import SplitCounts
from data_tools.options import PrepareOptions

ITEM_TEXTS = "item_texts"
PROGRESS_SECONDS = 10.0


class Vocabulary(NamedTuple):
  """The vocabulary and what was written from it."""
  vocab: beam.PCollection  # one list of raw ids, index 0 = padding
  vocab_file: beam.PCollection  # one file name
  text: beam.PCollection  # one dict: file (or None), text_dim, num_items_without_text


def _vocab(items: List[str], counts: SplitCounts, options: PrepareOptions) -> List[str]:
  filtering.require_splits(counts.sessions, options.raw_path,
                           prepare.required_splits(options), prepare.require_hint(options))
  vocab = writer.vocab_from_items(items)
  progress(f"vocabulary: {len(vocab) - 1:,} items")
  return vocab


def _catalog_of(rows: List[Tuple[str, dict]]) -> pd.DataFrame:
  """The catalogue DataFrame (indexed by raw item id) of joined rows."""
  catalog = pd.DataFrame.from_records([row for _, row in rows],
                                      index=pd.Index([item for item, _ in rows],
                                                     dtype=object, name="item_id"))
  return catalog


class VocabFileFn(beam.DoFn):
  """Writes the vocabulary file on one worker; emits (item, field texts).

  Raises (in the pipeline):
    DataToolsError: --require_text and a vocabulary item has no text.
  """

  def __init__(self, folder: str, options: PrepareOptions):
    self._folder = folder
    self._options = options

  def process(self, rows: List[Tuple[str, dict]], vocab: List[str], origin: Dict):
    fields = list(self._options.text_fields)
    catalog = _catalog_of(rows)
    if fields:
      texts = prepare.item_texts(catalog, vocab, fields)
      columns = embed.field_columns(texts, fields, self._options.require_text, origin)
      for item, item_texts in zip(vocab[1:], zip(*columns)):
        yield beam.pvalue.TaggedOutput(ITEM_TEXTS, (item, tuple(item_texts)))
    yield writer.write_vocab(self._folder, vocab, prepare.titles(catalog, vocab, fields))


class EmbedFn(beam.DoFn):
  """Embeds a batch of distinct texts with the sentence model of the options.

  The model is loaded once per worker (`setup`), by `embed.options_encoder`.
  """

  def __init__(self, options: PrepareOptions):
    self._options = options
    self._encoder = None
    self._done = 0
    self._reported = 0.0

  def setup(self):
    self._encoder = embed.options_encoder(self._options)

  def process(self, batch: Sequence[str]):
    rows, vectors = embed.embed_texts(self._encoder, list(batch), len(batch),
                                      progress=False)
    self._done += len(batch)
    if time.monotonic() - self._reported > PROGRESS_SECONDS:
      self._reported = time.monotonic()
      progress(f"embedded {self._done:,} texts on worker {os.getpid()}")
    for text, row in rows.items():
      yield text, vectors[row]


def _uses(item: str, texts: Tuple[str, ...]):
  return [(text, (item, position)) for position, text in enumerate(texts) if text]


def _field_vectors(text: str, grouped: Dict):
  vectors = list(grouped["vector"])
  return [(item, (position, vectors[0])) for item, position in grouped["use"]]


def _item_vector(item: str, field_vectors) -> Tuple[str, np.ndarray]:
  ordered = sorted(field_vectors, key=lambda pair: pair[0])
  return item, embed.mean_field_vector([vector for _, vector in ordered])


class TextTableFn(beam.DoFn):
  """Places the item vectors at their vocabulary rows and writes the table."""

  def __init__(self, folder: str, options: PrepareOptions):
    self._folder = folder
    self._options = options

  def process(self, item_vectors: List[Tuple[str, np.ndarray]], vocab: List[str]):
    index = {item: row for row, item in enumerate(vocab)}
    dim = (len(item_vectors[0][1]) if item_vectors
           else embed.probe_dim(embed.options_encoder(self._options)))
    table = np.zeros((len(vocab), dim), dtype=np.float32)
    for item, vector in item_vectors:
      table[index[item]] = vector
    name = writer.write_text_table(self._folder, table)
    without_text = int(np.sum(~table[1:].any(axis=1)))
    prepare.warn_without_text(without_text, len(vocab) - 1, list(self._options.text_fields))
    progress(f"text table: {len(vocab) - 1:,} items x {dim}")
    yield {"file": name, "text_dim": int(dim), "num_items_without_text": without_text}


def _vocab_rows(items: beam.PCollection, catalog: beam.PCollection) -> beam.PCollection:
  """(item, catalogue row) of the vocabulary items that have one."""

  def joined(item, grouped) -> List[Tuple[str, dict]]:
    rows = list(grouped["row"])
    return [(item, rows[0])] if list(grouped["item"]) and rows else []

  return ({"item": items | "ItemKeys" >> beam.Map(lambda item: (item, None)),
           "row": catalog} | "JoinCatalog" >> beam.CoGroupByKey()
          | "VocabRows" >> beam.FlatMapTuple(joined))


def _text_table(item_texts: beam.PCollection, vocab: beam.PCollection, folder: str,
                options: PrepareOptions) -> beam.PCollection:
  vectors = (item_texts
             | "Texts" >> beam.FlatMapTuple(lambda item, texts: [t for t in texts if t])
             | "DistinctTexts" >> beam.Distinct()
             | "Batch" >> beam.BatchElements(min_batch_size=options.embedding_batch_size,
                                             max_batch_size=options.embedding_batch_size)
             | "Embed" >> beam.ParDo(EmbedFn(options)))
  uses = item_texts | "Uses" >> beam.FlatMapTuple(_uses)
  return ({"vector": vectors, "use": uses} | "JoinVectors" >> beam.CoGroupByKey()
          | "FieldVectors" >> beam.FlatMapTuple(_field_vectors)
          | "GroupFields" >> beam.GroupByKey()
          | "ItemVector" >> beam.MapTuple(_item_vector)
          | "AllVectors" >> beam.combiners.ToList()
          | "WriteTable" >> beam.ParDo(TextTableFn(folder, options), vocab=singleton(vocab)))


def vocabulary(sessions: beam.PCollection, counts: beam.PCollection,
               catalog: beam.PCollection, origin: beam.PCollection, folder: str,
               options: PrepareOptions) -> Vocabulary:
  """The vocabulary, its file and (with --text_fields) the text table."""
  items = (sessions | "VocabItems" >> beam.FlatMap(lambda s: s["items"])
           | "DistinctVocab" >> beam.Distinct())
  vocab = (items | "AllItems" >> beam.combiners.ToList()
           | "Vocab" >> beam.Map(_vocab, singleton(counts), options))
  written = (_vocab_rows(items, catalog) | "AllRows" >> beam.combiners.ToList()
             | "WriteVocab" >> beam.ParDo(
                 VocabFileFn(folder, options), vocab=singleton(vocab),
                 origin=beam.pvalue.AsDict(origin)).with_outputs(ITEM_TEXTS, main="file"))
  text: Optional[beam.PCollection] = None
  if options.text_fields:
    text = _text_table(written[ITEM_TEXTS], vocab, folder, options)
  else:
    text = (sessions.pipeline | "NoText" >> beam.Create(
        [{"file": None, "text_dim": 0, "num_items_without_text": None}]))
  return Vocabulary(vocab, written["file"], text)
