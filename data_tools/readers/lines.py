"""Item lines -> sessions, for the layouts that come as one line per purchased item.

A purchase log (`purchase_log.py`: the Homedepot layout and UCI Online Retail)
is read as cleaned item lines; every line is one `Line`. `build_session` turns
the lines of one session into its record; it is called per session id both by
`lines_to_sessions` (the local `data_tools.prepare`) and, after a GroupByKey on
the session id, by the Beam pipeline (`data_tools.beam`), so the two paths share
the rule:

  items in (timestamp, line order) without repeats (first occurrence kept),
  session timestamp = the earliest line's, user = the lines' one user (lines of
  two users in one session are an error naming the file, row and column of the
  first line of the second user), split unassigned, every prefix scored.

`Line.order` is the line's position in the input (file order, sheets in workbook
order); `Line.source` the file (and sheet) and `Line.row` the 1-based data row.
"""

import dataclasses
import itertools
from typing import Dict, Iterable, Iterator, NamedTuple

import numpy as np
import pandas as pd

from alterrec_tf.formats import schema
from data_tools import sessions as S

ITEM_ID = "item_id"
ROW = "row"
SOURCE = "source"


class Line(NamedTuple):
  """One purchased item of a session, as read."""
  session_id: str
  user_id: str
  item_id: str
  timestamp: int
  order: int
  source: str
  row: int


def iter_lines(lines: pd.DataFrame, path: str) -> Iterator[Line]:
  """The rows of a lines table as `Line`s, `order` = position in the table.

  Args:
    lines: columns session_id, user_id, item_id, timestamp, row and
      optionally source, in input order.
    path: the source of lines without a source column.
  """
  sources = (lines[SOURCE].to_numpy(dtype=object) if SOURCE in lines
             else np.full(len(lines), path, dtype=object))
  columns = zip(lines[S.SESSION_ID].to_numpy(dtype=object),
                lines[S.USER_ID].to_numpy(dtype=object),
                lines[ITEM_ID].to_numpy(dtype=object),
                lines[S.TIMESTAMP].to_numpy(dtype=np.int64).tolist(),
                sources, lines[ROW].to_numpy(dtype=np.int64).tolist())
  for order, (session, user, item, time, source, row) in enumerate(columns):
    yield Line(str(session), str(user), str(item), int(time), order, str(source),
               int(row))


def build_session(session_id: str, lines: Iterable[Line], user_column: str) -> dict:
  """The session record (standard columns) of one session's lines.

  Args:
    session_id: the session.
    lines: its lines, in any order.
    user_column: the input's user column, for the error message.

  Returns:
    A dict with the keys of `sessions.SESSION_COLUMNS`.

  Raises:
    DataToolsError: the lines belong to two users.
  """
  ordered = sorted(lines, key=lambda line: (line.timestamp, line.order))
  first = ordered[0]
  for line in ordered:
    if line.user_id != first.user_id:
      raise S.input_error(f"session {session_id!r} belongs to two users",
                          line.source, row=line.row, column=user_column)
  return {S.SESSION_ID: session_id, S.USER_ID: first.user_id,
          S.TIMESTAMP: first.timestamp,
          S.ITEMS: S.dedup_items(line.item_id for line in ordered),
          S.SPLIT: S.UNSPLIT, S.EVAL_START: 1}


def lines_to_sessions(lines: pd.DataFrame, path: str,
                      user_column: str) -> pd.DataFrame:
  """Groups item lines into sessions (`build_session` per session id).

  Args:
    lines: columns session_id, user_id, item_id, timestamp, row (1-based data
      row in `path`), in file order; optionally source (the file, or file and
      sheet, of each line, when the lines come from several).
    path: the interactions file, for errors (unless lines has source).
    user_column: its user column, for errors.

  Returns:
    Unsplit sessions sorted by (timestamp, session_id).

  Raises:
    DataToolsError: a session has lines of two users (the first such session
      in session id order).
  """
  ordered = sorted(iter_lines(lines, path), key=lambda line: line.session_id)
  records = [build_session(session, group, user_column) for session, group
             in itertools.groupby(ordered, key=lambda line: line.session_id)]
  records.sort(key=session_order)
  return S.make_sessions(records)


def session_order(session: dict) -> tuple:
  """How a reader lists line-grouped sessions: by (timestamp, session_id)."""
  return session[S.TIMESTAMP], session[S.SESSION_ID]


def first_location(line: Line, column: str) -> S.Location:
  """Where `line`'s item appears (its first appearance is the lowest `order`)."""
  return S.Location(line.source, line.row, column)


def item_origin(lines: pd.DataFrame, path: str, column: str) -> Dict[str, S.Location]:
  """Each item's first line as a `Location` in `column`."""
  origin: Dict[str, S.Location] = {}
  for line in iter_lines(lines, path):
    if line.item_id not in origin:
      origin[line.item_id] = first_location(line, column)
  return origin


@dataclasses.dataclass
class LineSource:
  """A purchase log read as cleaned item lines, before grouping into sessions.

  Attributes:
    lines: one row per kept item line, in input order (the columns of
      `iter_lines`; Online Retail adds title).
    header: the layout's `RawSessions` without sessions, catalogue or origin
      (format, protocol, the reader's counts so far).
    path: the input file.
    user_column: the input's user column (messages).
    item_column: the input's item column (messages).
  """
  lines: pd.DataFrame
  header: S.RawSessions
  path: str
  user_column: str
  item_column: str


def header(raw_format: str, cleaning: dict) -> S.RawSessions:
  """A purchase log's `RawSessions` before grouping: no sessions, catalogue,
  origin; every prefix scored, split still to assign, repeats removed."""
  return S.RawSessions(
      sessions=S.make_sessions([]), catalog=S.empty_catalog(()),
      raw_format=raw_format, eval_protocol=schema.EVAL_ALL_PREFIXES,
      split_rule="", item_origin={}, cleaning=cleaning,
      sessions_deduplicated=True)


def session_counts(raw_format: str, sessions_read: int,
                   guest_sessions: int) -> Dict[str, int]:
  """The reader's counts of grouped sessions, added to `cleaning`."""
  counts = {"sessions_read": int(sessions_read)}
  if raw_format == "online_retail":
    counts["guest_sessions"] = int(guest_sessions)
  return counts


def with_sessions(source: LineSource, sessions: pd.DataFrame,
                  catalog: pd.DataFrame) -> S.RawSessions:
  """`source.header` completed with the grouped sessions and the catalogue."""
  raw = source.header
  cleaning = dict(raw.cleaning, **session_counts(
      raw.raw_format, len(sessions), int(S.is_guest(sessions).sum())))
  return dataclasses.replace(
      raw, sessions=sessions, catalog=catalog, cleaning=cleaning,
      item_origin=item_origin(source.lines, source.path, source.item_column))
