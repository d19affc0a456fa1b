"""The in-memory result every reader returns, and the error type of `data_tools`.

A reader turns one raw layout into `RawSessions`:

* `sessions`: a DataFrame with one row per session and the columns of
  `SESSION_COLUMNS`: `session_id` (str), `user_id` (str, "" where unknown),
  `timestamp` (int unix seconds, 0 where unknown), `items` (list of raw item id
  strings in order, without repeats: `dedup_items` keeps the first occurrence),
  `split` ("train", "valid", "test", or "" while the split is still to be
  assigned) and `eval_start` (the first scored position: 1 scores every prefix,
  len-1 is leave-one-out).
  A guest session (a purchase without a known user) has user_id "" or
  `guest_user_id(session_id)` ("guest-<session_id>"); `is_guest` finds both.
* `catalog`: a DataFrame indexed by raw item id (str) with one str column per
  text field ("" where the item has no text in that field).
* `item_origin`: where each raw item first appears in the input (file, row,
  column), so that later steps can name the place of a problem.

Row numbers in messages count data rows from 1, the header not included.
"""

import dataclasses
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd

SESSION_ID = "session_id"
USER_ID = "user_id"
TIMESTAMP = "timestamp"
ITEMS = "items"
SPLIT = "split"
EVAL_START = "eval_start"
SESSION_COLUMNS = (SESSION_ID, USER_ID, TIMESTAMP, ITEMS, SPLIT, EVAL_START)
UNSPLIT = ""
GUEST_PREFIX = "guest-"


class DataToolsError(ValueError):
  """Bad raw input or options; the message names file, row and column if known."""


class Location(NamedTuple):
  """A place in the raw input: file, 1-based data row (0 = header), column."""
  file: str
  row: int
  column: str

  def describe(self) -> str:
    row = "header" if self.row == 0 else f"row {self.row}"
    return f"{self.file}, {row}, column {self.column!r}"


def input_error(message: str, file: str, row: Optional[int] = None,
                column: Optional[str] = None) -> DataToolsError:
  """Builds a `DataToolsError` whose message starts with the place of the problem.

  Args:
    message: what is wrong.
    file: the input file.
    row: 1-based data row, 0 for the header, None if not about one row.
    column: the column name, None if not about one column.

  Returns:
    The error, to be raised by the caller.
  """
  place = [file]
  if row is not None:
    place.append("header" if row == 0 else f"row {row}")
  if column is not None:
    place.append(f"column {column!r}")
  return DataToolsError(f"{', '.join(place)}: {message}")


@dataclasses.dataclass
class RawSessions:
  """Sessions and item text of one raw dataset, before indexing.

  Attributes:
    sessions: one row per session, columns `SESSION_COLUMNS`.
    catalog: item text, indexed by raw item id, one column per text field.
    raw_format: the reader's layout name.
    eval_protocol: `schema.EVAL_ALL_PREFIXES` or `schema.EVAL_LEAVE_ONE_OUT`.
    split_rule: how the reader assigned splits; "" if `sessions` is unsplit.
    item_origin: first place of every raw item id in the input.
    cleaning: reader-specific counts and rules, stored in the manifest.
    sessions_deduplicated: True if the reader removed repeated items within
      sessions (`dedup_items`, `dedup_with_target`); stored in the manifest.
    keep_eval_rows: True if the validation/test sessions are a benchmark's rows
      that no filter may change or drop (`data_tools.filtering`).
    rows_read: input rows per split, for layouts that come as rows per split.
  """
  sessions: pd.DataFrame
  catalog: pd.DataFrame
  raw_format: str
  eval_protocol: str
  split_rule: str
  item_origin: Dict[str, Location]
  cleaning: Dict[str, object] = dataclasses.field(default_factory=dict)
  sessions_deduplicated: bool = False
  keep_eval_rows: bool = False
  rows_read: Optional[Dict[str, int]] = None


def guest_user_id(session_id: str) -> str:
  """The user id of a guest session: a one-session user "guest-<session_id>"."""
  return GUEST_PREFIX + session_id


def is_guest_user(user_id: str, session_id: str) -> bool:
  """A guest session: user_id "" or `guest_user_id(session_id)`."""
  return user_id == "" or user_id == guest_user_id(str(session_id))


def is_guest(sessions: pd.DataFrame) -> np.ndarray:
  """Mask of guest sessions (`is_guest_user` of each row)."""
  return np.fromiter(map(is_guest_user, sessions[USER_ID], sessions[SESSION_ID]),
                     dtype=bool, count=len(sessions))


def dedup_items(items: Iterable[str]) -> List[str]:
  """Removes repeated items, keeping each item's first occurrence, in order."""
  return list(dict.fromkeys(items))


def dedup_with_target(history: Sequence[str], target: str) -> List[str]:
  """A leave-one-out sequence without repeats whose last item stays `target`.

  The history keeps each item's first occurrence; an earlier occurrence of
  the target is removed so that the scored target is still the last item.
  """
  return [item for item in dedup_items(history) if item != target] + [target]


def make_sessions(records: Sequence[dict]) -> pd.DataFrame:
  """A sessions DataFrame with the standard columns and dtypes."""
  frame = pd.DataFrame.from_records(list(records), columns=list(SESSION_COLUMNS))
  return normalize_sessions(frame)


def normalize_sessions(frame: pd.DataFrame) -> pd.DataFrame:
  """Casts the standard columns to their dtypes and renumbers the index."""
  frame = frame.loc[:, list(SESSION_COLUMNS)].reset_index(drop=True)
  frame[SESSION_ID] = frame[SESSION_ID].astype(object).map(str)
  frame[USER_ID] = frame[USER_ID].astype(object).map(str)
  frame[TIMESTAMP] = frame[TIMESTAMP].astype("int64")
  frame[SPLIT] = frame[SPLIT].astype(object).map(str)
  frame[EVAL_START] = frame[EVAL_START].astype("int64")
  return frame


def first_occurrences(item_lists: Iterable[Sequence[str]], rows: Iterable[int],
                      file: str, column: str,
                      into: Optional[Dict[str, Location]] = None
                      ) -> Dict[str, Location]:
  """Records where each item first appears.

  Args:
    item_lists: the items of each input row.
    rows: the 1-based data row number of each input row.
    file: the input file.
    column: the column that holds the items.
    into: an existing mapping to extend (earlier places win).

  Returns:
    raw item id -> `Location` of its first appearance.
  """
  origin = {} if into is None else into
  for items, row in zip(item_lists, rows):
    for item in items:
      if item not in origin:
        origin[item] = Location(file, int(row), column)
  return origin


def empty_catalog(fields: Sequence[str]) -> pd.DataFrame:
  """A catalogue without items, with the given text columns."""
  return pd.DataFrame({field: pd.Series([], dtype=object) for field in fields},
                      index=pd.Index([], dtype=object, name="item_id"))


def clean_text(value) -> str:
  """Text cell -> str with whitespace runs collapsed; missing values -> ""."""
  if value is None or (isinstance(value, float) and value != value):
    return ""
  if value is pd.NA or value is pd.NaT:
    return ""
  return " ".join(str(value).split())
