"""Amazon-M2 (KDD Cup 2023) sessions and products.

`--raw_path` is a folder with session files named `*sessions*.csv|parquet`
(columns prev_items, locale and, for training files, next_item) and, optionally,
answer files `*gt*.csv|parquet` (columns next_item, locale) whose row i answers
row i of the session file with the same name once "sessions" and
"[DONT_SHARE_]gt" are removed (e.g. task2_public_test_sessions_test.parquet ->
task2_public_test_DONT_SHARE_gt_test.parquet). A session is
prev_items + [next_item] (just prev_items where no answer exists), repeated
items keeping their first occurrence. `prev_items` is a list column in Parquet
and a string like "['B0..' 'B0..']" in CSV (`parse_item_list`).

Roles: files with "train" in the name are training data and the others test
data; when no such file exists (the shared task-2 test layout), the "public"
files are training data and the "private" files test data. A random
round(valid_fraction * n) of the n training sessions is held out for
validation (`data_tools.splits.random_holdout`), as the paper does.

`--locale` keeps one locale. Products (`--catalog_path`, or the one
`*products*` file in the folder; columns id, locale, and the text fields such
as title, desc) are needed when `--text_fields` is set; with `--require_text`
only sessions whose items all have text (in at least one field) are kept, as in
the paper.
"""

import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from alterrec_tf.formats import schema
from data_tools import sessions as S
from data_tools import splits, tables
from data_tools.options import PrepareOptions

EXTENSIONS = (".csv", ".parquet")
_QUOTED = re.compile(r"""\s*(?:'([^'\s]+)'|"([^"\s]+)")\s*,?""")


def parse_item_list(value, file: str, row: int, column: str) -> List[str]:
  """One prev_items cell -> list of item ids.

  Accepts a list/array of strings (Parquet) or its CSV string form: numpy's
  "['A' 'B']" (line breaks allowed) or Python's "['A', 'B']".

  Raises:
    DataToolsError: naming file, row and column of a cell that is neither.
  """
  if isinstance(value, (list, tuple, np.ndarray)):
    items = [str(item).strip() if item is not None else "" for item in value]
    if all(items):
      return items
  elif isinstance(value, str):
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
      items, inner, position = [], text[1:-1], 0
      if not inner.strip():
        return items
      while position < len(inner):
        match = _QUOTED.match(inner, position)
        if not match:
          break
        items.append(match.group(1) or match.group(2))
        position = match.end()
      else:
        return items
  shown = value if len(repr(value)) < 80 else repr(value)[:77] + "..."
  raise S.input_error(f"cannot parse the item list {shown!r}; expected e.g. "
                      "['B0A' 'B0B']", file, row=row, column=column)


def _answer_key(path: str) -> str:
  stem = os.path.splitext(os.path.basename(path))[0].lower()
  return re.sub(r"_?(dont_share_)?gt(?=_|$)|_?sessions", "", stem)


def find_files(folder: str) -> Tuple[Dict[str, Optional[str]], Dict[str, str]]:
  """Session files with their answer files, and the role of each.

  Returns:
    ({sessions file: answer file or None}, {sessions file: "train" or "test"}).

  Raises:
    DataToolsError: no session files, an unpaired answer file, or no way to
      tell training files from test files.
  """
  if not os.path.isdir(folder):
    raise S.DataToolsError(f"{folder}: amazon_m2 --raw_path must be the folder "
                           "holding sessions_*.csv|parquet")
  def tables_named(pattern):
    return [path for path in tables.list_files(folder, [pattern])
            if path.lower().endswith(EXTENSIONS)]
  session_files = tables_named("*sessions*")
  if not session_files:
    raise S.DataToolsError(f"{folder}: no *sessions*.csv|parquet file")
  keys = {}
  for path in session_files:
    if _answer_key(path) in keys:
      raise S.DataToolsError(f"{path}: same data as {keys[_answer_key(path)]}; "
                             "keep one of them")
    keys[_answer_key(path)] = path
  answers = dict.fromkeys(session_files)
  for path in tables_named("*gt*"):
    if path in answers:
      continue
    if _answer_key(path) not in keys:
      raise S.DataToolsError(f"{path}: answer file without a matching sessions "
                             "file")
    if answers[keys[_answer_key(path)]] is not None:
      raise S.DataToolsError(f"{path}: a second answer file for "
                             f"{keys[_answer_key(path)]}")
    answers[keys[_answer_key(path)]] = path
  names = {path: os.path.basename(path).lower() for path in session_files}
  if any("train" in name for name in names.values()):
    roles = {path: "train" if "train" in name else "test"
             for path, name in names.items()}
  elif all(("public" in name) != ("private" in name) for name in names.values()):
    roles = {path: "train" if "public" in name else "test"
             for path, name in names.items()}
  else:
    raise S.DataToolsError(f"{folder}: cannot tell training from test session "
                           "files (name them *train* / *test*)")
  return answers, roles


def _targets(table: pd.DataFrame, path: str, answer: Optional[str],
             locale_column: Optional[str]):
  """(next items or None, their file, their column) of one sessions file.

  Raises:
    DataToolsError: the answer file does not line up with the sessions file.
  """
  next_column = tables.find_column(table, path, ("next_item",), False)
  if answer is None:
    return (table[next_column] if next_column else None), path, next_column
  gt = tables.read_table(answer)
  if len(gt) != len(table):
    raise S.input_error(f"{len(gt)} rows, but {os.path.basename(path)} has "
                        f"{len(table)}", answer)
  next_column = tables.find_column(gt, answer, ("next_item",))
  gt_locale = tables.find_column(gt, answer, ("locale",), False)
  if locale_column and gt_locale:
    differ = np.flatnonzero(gt[gt_locale].astype(str).to_numpy()
                            != table[locale_column].astype(str).to_numpy())
    if len(differ):
      raise S.input_error(f"locale differs from row {differ[0] + 1} of "
                          f"{os.path.basename(path)}", answer,
                          row=int(differ[0]) + 1, column=gt_locale)
  return gt[next_column], answer, next_column


def _read_one(path: str, answer: Optional[str], role: str, locale: str,
              origin: Dict[str, S.Location]) -> Tuple[list, int]:
  """Session records of one sessions file (and its answers) for `locale`."""
  table = tables.read_table(path)
  prev_column = tables.find_column(table, path, ("prev_items",))
  locale_column = tables.find_column(table, path, ("locale",), bool(locale))
  targets, target_file, next_column = _targets(table, path, answer, locale_column)
  rows = np.arange(1, len(table) + 1)
  if locale:
    chosen = (table[locale_column].astype(str).str.upper() == locale.upper()).to_numpy()
    rows = rows[chosen]
  name = os.path.basename(path)
  records = []
  for row in rows:
    items = parse_item_list(table[prev_column].iat[row - 1], path, row, prev_column)
    S.first_occurrences([items], [row], path, prev_column, into=origin)
    if targets is not None:
      target = S.clean_text(targets.iat[row - 1])
      if not target:
        raise S.input_error("empty next_item", target_file, row=int(row),
                            column=next_column)
      S.first_occurrences([[target]], [row], target_file, next_column, into=origin)
      items = items + [target]
    records.append({S.SESSION_ID: f"{name}:{row}", S.USER_ID: "",
                    S.TIMESTAMP: 0, S.ITEMS: S.dedup_items(items),
                    S.SPLIT: role, S.EVAL_START: 1})
  return records, len(table)


def read_products(options: PrepareOptions) -> Optional[pd.DataFrame]:
  """The products table as a catalogue for `--locale`, or None if none is found."""
  path = options.catalog_path
  if not path:
    found = [name for name in tables.list_files(options.raw_path, ["*products*"])
             if name.lower().endswith(EXTENSIONS)]
    if len(found) > 1:
      raise S.DataToolsError(f"{options.raw_path}: several products files "
                             f"{found}; choose one with --catalog_path")
    path = found[0] if found else ""
  if not path:
    return None
  table = tables.read_table(path)
  id_column = tables.find_column(table, path, ("id", "item_id"))
  locale_column = tables.find_column(table, path, ("locale",), False)
  if options.locale and locale_column:
    table = table[(table[locale_column].astype(str).str.upper()
                   == options.locale.upper()).to_numpy()]
  columns = {field: tables.find_column(table, path, (field,))
             for field in options.text_fields}
  catalog = pd.DataFrame({field: table[column].map(S.clean_text).to_numpy()
                          for field, column in columns.items()},
                         index=pd.Index(tables.id_strings(table[id_column], path,
                                                          id_column).to_numpy(),
                                        name="item_id"))
  return catalog[~catalog.index.duplicated(keep="first")]


def _keep_with_text(sessions: pd.DataFrame, catalog: pd.DataFrame,
                    fields: Sequence[str]) -> pd.DataFrame:
  """Only the sessions whose items all have text in some field."""
  with_text = set(catalog.index[(catalog[list(fields)] != "").any(axis=1)])
  keep = sessions[S.ITEMS].map(lambda items: all(i in with_text for i in items))
  return sessions[keep.to_numpy()]


def read_amazon_m2(options: PrepareOptions) -> S.RawSessions:
  """Reads Amazon-M2 (see the module docstring)."""
  answers, roles = find_files(options.raw_path)
  origin: Dict[str, S.Location] = {}
  records, cleaning = [], {"rows_read": 0}
  for path in sorted(answers, key=lambda p: (roles[p] != "train", p)):
    file_records, num_rows = _read_one(path, answers[path], roles[path],
                                       options.locale, origin)
    records.extend(file_records)
    cleaning["rows_read"] += num_rows
  sessions = S.make_sessions(records)
  cleaning["sessions_in_locale"] = len(sessions)
  fields = list(options.text_fields)
  catalog = read_products(options) if fields else S.empty_catalog([])
  if fields and catalog is None:
    raise S.DataToolsError(
        f"{options.raw_path}: --text_fields={','.join(fields)} needs the products "
        "file (no *products*.csv|parquet found); pass --catalog_path=<products "
        "file>, or --text_fields= --norequire_text for item IDs only")
  if fields and options.require_text:
    sessions = _keep_with_text(sessions, catalog, fields)
    cleaning["sessions_dropped_item_without_text"] = (
        cleaning["sessions_in_locale"] - len(sessions))
  sessions = splits.random_holdout(sessions, options.valid_fraction,
                                   options.split_seed)
  train = sorted(os.path.basename(p) for p, role in roles.items() if role == "train")
  test = sorted(os.path.basename(p) for p, role in roles.items() if role == "test")
  rule = (f"train = {', '.join(train)}; test = {', '.join(test)}"
          f"{'; locale = ' + options.locale.upper() if options.locale else ''}; "
          + splits.holdout_rule(options.valid_fraction, options.split_seed))
  return S.RawSessions(sessions=S.normalize_sessions(sessions), catalog=catalog,
                       raw_format="amazon_m2",
                       eval_protocol=schema.EVAL_ALL_PREFIXES, split_rule=rule,
                       item_origin=origin, cleaning=cleaning,
                       sessions_deduplicated=True)
