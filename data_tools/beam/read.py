"""Reading in the Beam pipeline: raw input -> sessions, catalogue, origins, header.

Line layouts (online_retail, purchase_log): one worker reads and cleans the
input file with the reader's own code (`purchase_log.retail_lines`,
`purchase_log.purchase_log_lines`) and emits one `lines.Line` per kept item
line; the lines are keyed by session id, grouped (GroupByKey) and turned into
sessions by `lines.build_session`. Online Retail titles are counted per
(StockCode, Description) and chosen per item by `purchase_log.best_title`;
the purchase-log catalogue is read by `purchase_log.read_catalog`.

Session layouts (amazon_m2, recbole) are read whole by `readers.read` in one
step (their rules span files) and their sessions, catalogue and origins are
emitted as elements.

Every session element is a dict with the standard columns of
`data_tools.sessions` plus `ORDER`: its place in the reader's order, which with
the timestamp gives the written order (`write_key`).
"""

import dataclasses
import sys
from typing import Iterator, NamedTuple

import apache_beam as beam
import pandas as pd

from data_tools import readers
from data_tools import sessions as S
from data_tools.options import PrepareOptions
from data_tools.readers import lines, purchase_log

ORDER = "order"
LINE_READERS = {"online_retail": purchase_log.retail_lines,
                "purchase_log": purchase_log.purchase_log_lines}
HEADER, SOURCE, CATALOG, ORIGIN, TITLES = "header", "source", "catalog", "origin", "titles"


class Raw(NamedTuple):
  """What the read step gives the rest of the pipeline.

  Attributes:
    sessions: session dicts (standard columns + `ORDER`).
    catalog: (raw item id, {catalogue column: text}).
    origin: (raw item id, `sessions.Location` of its first appearance).
    header: one `sessions.RawSessions` without sessions (layout facts and the
      reader's counts, as the manifest reports them).
  """
  sessions: beam.PCollection
  catalog: beam.PCollection
  origin: beam.PCollection
  header: beam.PCollection


def write_key(session: dict) -> tuple:
  """The written order of a split's sessions: (timestamp, reader order)."""
  return session[S.TIMESTAMP], session[ORDER]


def progress(message: str) -> None:
  """One progress line on stderr (workers' lines appear in the launcher's log
  with the DirectRunner)."""
  print(f"beam_prepare: {message}", file=sys.stderr, flush=True)


def _catalog_rows(catalog: pd.DataFrame) -> Iterator[tuple]:
  for item, row in zip(catalog.index, catalog.to_dict("records")):
    yield str(item), row


def _empty_header(raw: S.RawSessions) -> S.RawSessions:
  return dataclasses.replace(raw, sessions=S.make_sessions([]),
                             catalog=S.empty_catalog(()), item_origin={})


class ReadLinesFn(beam.DoFn):
  """Reads one line-layout input into `lines.Line`s (one worker per file).

  Outputs: main = lines; SOURCE = the `lines.LineSource` without lines;
  TITLES = (item, Description) of Online Retail lines that can be a title;
  CATALOG = the purchase-log catalogue rows.
  """

  def __init__(self, options: PrepareOptions):
    self._options = options

  def process(self, raw_format: str):
    source = LINE_READERS[raw_format](self._options)
    progress(f"read {len(source.lines):,} item lines from {source.path}")
    yield beam.pvalue.TaggedOutput(SOURCE, dataclasses.replace(
        source, lines=source.lines.iloc[:0]))
    yield from lines.iter_lines(source.lines, source.path)
    if raw_format == "online_retail":  # titles come from the lines (`retail_catalog`)
      for item, title in zip(source.lines["item_id"], source.lines["title"]):
        if purchase_log.countable_title(title):
          yield beam.pvalue.TaggedOutput(TITLES, (item, title))
    else:
      catalog = purchase_log.read_catalog(self._options, source.path)
      for row in _catalog_rows(catalog):
        yield beam.pvalue.TaggedOutput(CATALOG, row)


def _titles_catalog(titles: beam.PCollection) -> beam.PCollection:
  """(item, {"title": best title}) from (item, Description) pairs."""

  def best(item, counted):
    title = purchase_log.best_title(dict(counted))
    return [] if title is None else [(item, {"title": title})]

  return (titles
          | "CountTitles" >> beam.combiners.Count.PerElement()
          | "TitleByItem" >> beam.MapTuple(lambda pair, n: (pair[0], (pair[1], n)))
          | "GroupTitles" >> beam.GroupByKey()
          | "BestTitle" >> beam.FlatMapTuple(best))


def _session(grouped, source: lines.LineSource) -> dict:
  session_id, item_lines = grouped
  session = lines.build_session(session_id, item_lines, source.user_column)
  session[ORDER] = lines.session_order(session)[1]
  return session


def _read_lines(pipeline: beam.Pipeline, options: PrepareOptions) -> Raw:
  """Line layouts: read, GroupByKey on the session id, `build_session`."""
  read = (pipeline
          | "RawFormat" >> beam.Create([options.raw_format])
          | "ReadLines" >> beam.ParDo(ReadLinesFn(options)).with_outputs(
              SOURCE, TITLES, CATALOG, main="lines"))
  source = beam.pvalue.AsSingleton(read[SOURCE])
  sessions = (read["lines"]
              | "KeyBySession" >> beam.Map(lambda line: (line.session_id, line))
              | "GroupBySession" >> beam.GroupByKey()
              | "BuildSession" >> beam.Map(_session, source=source))
  catalog = ((read[CATALOG], _titles_catalog(read[TITLES]))
             | "Catalog" >> beam.Flatten())
  origin = (read["lines"]
            | "KeyByItem" >> beam.Map(lambda line: (line.item_id, line))
            | "FirstLine" >> beam.CombinePerKey(
                lambda found: min(found, key=lambda line: line.order))
            | "Origin" >> beam.Map(_origin, source=source))
  num_read = sessions | "CountRead" >> beam.combiners.Count.Globally()
  guests = (sessions
            | "Guests" >> beam.Filter(lambda s: S.is_guest_user(s[S.USER_ID], s[S.SESSION_ID]))
            | "CountGuests" >> beam.combiners.Count.Globally())
  header = (read[SOURCE]
            | "Header" >> beam.Map(
                _completed_header, num_read=beam.pvalue.AsSingleton(num_read),
                guests=beam.pvalue.AsSingleton(guests)))
  return Raw(sessions, catalog, origin, header)


def _origin(first: tuple, source: lines.LineSource) -> tuple:
  item, line = first
  return item, lines.first_location(line, source.item_column)


def _completed_header(source: lines.LineSource, num_read: int,
                      guests: int) -> S.RawSessions:
  """The reader's header with its counts of grouped sessions (`lines.with_sessions`)."""
  raw = source.header
  return dataclasses.replace(raw, cleaning=dict(
      raw.cleaning, **lines.session_counts(raw.raw_format, num_read, guests)))


class ReadSessionsFn(beam.DoFn):
  """Reads a session layout whole with `readers.read` (one step).

  Outputs: main = session dicts; HEADER, CATALOG, ORIGIN.
  """

  def __init__(self, options: PrepareOptions):
    self._options = options

  def process(self, unused_raw_format: str):
    raw = readers.read(self._options)
    progress(f"read {len(raw.sessions):,} sessions from {self._options.raw_path}")
    yield beam.pvalue.TaggedOutput(HEADER, _empty_header(raw))
    for row in _catalog_rows(raw.catalog):
      yield beam.pvalue.TaggedOutput(CATALOG, row)
    for item, location in raw.item_origin.items():
      yield beam.pvalue.TaggedOutput(ORIGIN, (item, location))
    for position, record in enumerate(raw.sessions.to_dict("records")):
      yield {S.SESSION_ID: str(record[S.SESSION_ID]), S.USER_ID: str(record[S.USER_ID]),
             S.TIMESTAMP: int(record[S.TIMESTAMP]), S.ITEMS: list(record[S.ITEMS]),
             S.SPLIT: str(record[S.SPLIT]), S.EVAL_START: int(record[S.EVAL_START]),
             ORDER: position}


def _read_sessions(pipeline: beam.Pipeline, options: PrepareOptions) -> Raw:
  read = (pipeline
          | "RawFormat" >> beam.Create([options.raw_format])
          | "ReadSessions" >> beam.ParDo(ReadSessionsFn(options)).with_outputs(
              HEADER, CATALOG, ORIGIN, main="sessions"))
  return Raw(read["sessions"], read[CATALOG], read[ORIGIN], read[HEADER])


def read_raw(pipeline: beam.Pipeline, options: PrepareOptions) -> Raw:
  """The read step for `options.raw_format` (see the module docstring)."""
  if options.raw_format in LINE_READERS:
    return _read_lines(pipeline, options)
  return _read_sessions(pipeline, options)
