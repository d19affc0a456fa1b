"""RecBole / UniSRec atomic files, split leave-one-out.

`--raw_path` is the folder with `<name>.train.inter`, `<name>.valid.inter` and
`<name>.test.inter` (or one of those files). They are tab-separated with typed
headers such as `user_id:token  item_id_list:token_seq  item_id:token`;
`item_id_list` holds space-separated item ids. Two layouts:

* plain RecBole: the .inter files hold the item ids themselves; item text comes
  from `--catalog_path`, else `<name>.text` (`item_id:token  text:token_seq`),
  else `<name>.item`, keyed by the same ids.
* UniSRec / VQ-Rec downstream sets, detected by a `<name>.item2index` file: the
  .inter files hold integer indices, and `<name>.item2index` /
  `<name>.user2index` (tab-separated `original_id<TAB>index` lines, no header)
  map them back to the original ids, by which `<name>.text` is keyed (e.g. an
  Amazon ASIN; a .text keyed by the indices is accepted too). Items and users
  are then named by their original ids everywhere (vocabulary, sessions).

`--text_fields` names the text columns (without the `:type`).

Rows in = rows out. A validation or test row becomes the session
item_id_list + [item_id] scored only at its last item (eval_start len-1), the
leave-one-out protocol, and every such row is kept by `data_tools.prepare`
(`keep_eval_rows`), whatever training holds: an item that no training row has
stays in the vocabulary with its text. Training rows: UniSRec writes every
prefix of each user's training sequence as a row, its history capped at 50
items, so a long user's later rows are sliding windows. Per user, the longest
row R (item_id_list + [item_id]; the first on ties) becomes one session that
scores exactly the positions of the rows covered by it: the rows that are
prefixes of R, with lengths running down from len(R) without a gap (eval_start
= the shortest covered length - 1). Every other training row (a sliding
window, a prefix below a gap, a second copy of a row, any row of a file
without user_id) is a session of its own scoring only its last item. So each
training row is scored exactly once.

Repeated items keep their first occurrence; in a row scored at its last item
the target stays last (`sessions.dedup_with_target`), and a covered row whose
target repeats an item of its history is scored as a row of its own. A row
whose history is empty (or holds only the target) has nothing to predict from:
it is not written and is counted as `rows_unscorable_<split>`; this is the one
case where rows out < rows in.
"""

import csv
import io
import os
import re
from typing import Dict, List, Optional, Tuple

import pandas as pd

from alterrec_tf.formats import schema
from data_tools import sessions as S
from data_tools import tables
from data_tools.filtering import remap_eval_start
from data_tools.options import PrepareOptions

SPLIT_SUFFIXES = {"train": ".train.inter", "valid": ".valid.inter",
                  "test": ".test.inter"}
ITEM_MAP_SUFFIX = ".item2index"
USER_MAP_SUFFIX = ".user2index"
_BAD_TOKEN = re.compile(r"[\[\]'\",]")


class Row:
  """One .inter row: user, history, target and its 1-based data row."""
  __slots__ = ("user", "history", "target", "row")

  def __init__(self, user: str, history: List[str], target: str, row: int):
    self.user, self.history, self.target, self.row = user, history, target, row

  @property
  def full(self) -> List[str]:
    return self.history + [self.target]


def dataset_files(raw_path: str) -> Dict[str, str]:
  """{split: path} of the three .inter files that `raw_path` points to.

  Raises:
    DataToolsError: the files are missing or several datasets share the folder.
  """
  if os.path.isdir(raw_path):
    found = tables.list_files(raw_path, ["*.train.inter"])
    if len(found) != 1:
      raise S.DataToolsError(f"{raw_path}: expected one *.train.inter file, "
                             f"found {len(found)}")
    prefix = found[0][:-len(SPLIT_SUFFIXES["train"])]
  else:
    prefix = raw_path
    for suffix in SPLIT_SUFFIXES.values():
      if raw_path.endswith(suffix):
        prefix = raw_path[:-len(suffix)]
  files = {split: prefix + suffix for split, suffix in SPLIT_SUFFIXES.items()}
  for path in files.values():
    if not os.path.isfile(path):
      raise S.DataToolsError(f"{path}: no such file (recbole needs "
                             f"{', '.join(SPLIT_SUFFIXES.values())})")
  return files


def read_atomic(path: str) -> pd.DataFrame:
  """A tab-separated atomic file, its columns renamed to the part before ':'."""
  table = tables.read_table(path, sep="\t")
  return table.rename(columns=lambda name: str(name).split(":", 1)[0].strip())


def read_index_map(path: str) -> Dict[str, str]:
  """A UniSRec `original_id<TAB>index` file (no header) as {index: original id}.

  Raises:
    DataToolsError: naming file and line of a malformed line, or of an index
      or original id given twice.
  """
  if not os.path.isfile(path):
    raise S.DataToolsError(f"{path}: no such file")
  by_index: Dict[str, str] = {}
  originals = set()
  try:
    with open(path, encoding="utf-8", newline="") as f:
      text = f.read()
  except UnicodeDecodeError as error:
    raise S.DataToolsError(tables.not_utf8_message(path)) from error
  for line_number, line in enumerate(csv.reader(
      io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
    if not line or line == [""]:
      continue
    cells = [cell.strip() for cell in line]
    if len(cells) != 2 or not all(cells):
      raise S.DataToolsError(
          f"{path}, line {line_number}: expected 'original_id<TAB>index', "
          f"got {chr(9).join(line)!r}")
    original, index = cells
    twice = (f"index {index!r}" if index in by_index else
             f"id {original!r}" if original in originals else None)
    if twice:
      raise S.DataToolsError(f"{path}, line {line_number}: {twice} is mapped "
                             "twice")
    by_index[index] = original
    originals.add(original)
  if not by_index:
    raise S.DataToolsError(f"{path}: the file is empty (expected 'original_id<TAB>index' "
                           "lines); restore it, or remove it to read the .inter ids as they are")
  return by_index


def _token(value: str, path: str, row: int, column: str) -> str:
  if not value or _BAD_TOKEN.search(value):
    raise S.input_error(f"bad item id {value!r} (expected space-separated ids)",
                        path, row=row, column=column)
  return value


def _mapper(mapping: Optional[Dict[str, str]], map_path: str, path: str,
            what: str):
  """A function (token, row, column) -> original id through `mapping`."""
  if mapping is None:
    return lambda token, row, column: token

  def lookup(token: str, row: int, column: str) -> str:
    if token not in mapping:
      raise S.input_error(f"{what} index {token!r} is not in "
                          f"{os.path.basename(map_path)}", path, row=row,
                          column=column)
    return mapping[token]
  return lookup


def _rows(path: str, item_map: Optional[Dict[str, str]],
          user_map: Optional[Dict[str, str]], map_paths: Dict[str, str]
          ) -> Tuple[List[Row], bool]:
  """The rows of one .inter file with ids mapped to the original ids.

  Returns:
    The rows, and whether the file has a user_id column.
  """
  table = read_atomic(path)
  list_column = tables.find_column(table, path, ("item_id_list",))
  item_column = tables.find_column(table, path, ("item_id",))
  user_column = tables.find_column(table, path, ("user_id",), False)
  users = table[user_column] if user_column else pd.Series([""] * len(table))
  item = _mapper(item_map, map_paths["item"], path, "item")
  user = _mapper(user_map, map_paths["user"], path, "user")
  rows = []
  for row, (user_id, history, target) in enumerate(
      zip(users, table[list_column], table[item_column]), start=1):
    history = [item(_token(token, path, row, list_column), row, list_column)
               for token in str(history).split()]
    target = item(_token(str(target).strip(), path, row, item_column), row,
                  item_column)
    user_id = str(user_id).strip()
    rows.append(Row(user(user_id, row, user_column) if user_id else "",
                    history, target, row))
  return rows, user_column is not None


def _session(path: str, row: Row, items: List[str], split: str,
             eval_start: int) -> dict:
  return {S.SESSION_ID: f"{os.path.basename(path)}:{row.row}",
          S.USER_ID: row.user, S.TIMESTAMP: 0, S.ITEMS: items, S.SPLIT: split,
          S.EVAL_START: eval_start}


def _last_item_session(path: str, row: Row, split: str) -> Optional[dict]:
  """The session of a row scored only at its target; None if unscorable."""
  items = S.dedup_with_target(row.history, row.target)
  if len(items) < 2:
    return None
  return _session(path, row, items, split, len(items) - 1)


def _covered(user_rows: List[Row]) -> Tuple[Row, List[Row]]:
  """The longest row of one user and the rows its session scores.

  Returns:
    (R, covered): R is the first longest row; covered are the first rows with
    each length len(R), len(R)-1, ... down to the first length without a row
    that is a prefix of R (lengths >= 2).
  """
  longest = max(user_rows, key=lambda row: len(row.full))
  full = longest.full
  by_length: Dict[int, Row] = {}
  for row in user_rows:
    length = len(row.full)
    if length not in by_length and row.full == full[:length]:
      by_length[length] = row
  covered = []
  length = len(full)
  while length >= 2 and length in by_length:
    covered.append(by_length[length])
    length -= 1
  return longest, covered


def _train_sessions(path: str, rows: List[Row], has_user: bool
                    ) -> Tuple[List[dict], int]:
  """Training sessions as the module docstring says; (sessions, unscorable)."""
  by_user: Dict[str, List[Row]] = {}
  for row in rows:
    key = row.user if has_user else f"\x00{row.row}"
    by_user.setdefault(key, []).append(row)
  records, alone = [], []
  for user_rows in by_user.values():
    longest, covered = _covered(user_rows)
    full = longest.full
    keep = [item not in full[:position] for position, item in enumerate(full)]
    scored = {len(row.full) - 1 for row in covered if keep[len(row.full) - 1]}
    start = remap_eval_start(keep, min(scored)) if scored else 0
    if start:
      records.append(_session(path, longest, S.dedup_items(full), "train",
                              start))
    ids = {id(row) for row in covered if len(row.full) - 1 in scored}
    alone.extend(row for row in user_rows if id(row) not in ids)
  unscorable = 0
  for row in alone:
    record = _last_item_session(path, row, "train")
    if record is None:
      unscorable += 1
    else:
      records.append(record)
  order = {f"{os.path.basename(path)}:{row.row}": row.row for row in rows}
  records.sort(key=lambda record: order[record[S.SESSION_ID]])
  return records, unscorable


def _leave_one_out_sessions(path: str, rows: List[Row], split: str
                            ) -> Tuple[List[dict], int]:
  records = [_last_item_session(path, row, split) for row in rows]
  kept = [record for record in records if record is not None]
  return kept, len(records) - len(kept)


def _text_file(options: PrepareOptions, prefix: str) -> Optional[str]:
  if options.catalog_path:
    return options.catalog_path
  for suffix in (".text", ".item"):
    if os.path.isfile(prefix + suffix):
      return prefix + suffix
  return None


def read_catalog(options: PrepareOptions, prefix: str,
                 item_map: Optional[Dict[str, str]] = None) -> pd.DataFrame:
  """Item text from the .text/.item file, one column per text field.

  Args:
    options: the prepare options (`text_fields`, `catalog_path`).
    prefix: the dataset's path prefix (`<folder>/<name>`).
    item_map: UniSRec {index: original id}; the text file may be keyed by
      either (original ids are tried first).

  Returns:
    The catalogue indexed by item id (original ids with `item_map`).

  Raises:
    DataToolsError: text fields are set but there is no text file, or it lacks
      a field.
  """
  fields = list(options.text_fields)
  if not fields:
    return S.empty_catalog(fields)
  path = _text_file(options, prefix)
  if path is None:
    raise S.DataToolsError(
        f"{prefix}.text: no such file (nor {prefix}.item); --text_fields="
        f"{','.join(fields)} needs item text: pass --catalog_path or "
        "--text_fields=")
  table = read_atomic(path) if not path.endswith((".csv", ".parquet")) else (
      tables.read_table(path))
  id_column = tables.find_column(table, path, ("item_id", "id"))
  ids = tables.id_strings(table[id_column], path, id_column)
  if item_map is not None:
    ids = _original_text_ids(ids, item_map, options.text_keys, path)
  catalog = pd.DataFrame(
      {field: table[tables.find_column(table, path, (field,))].map(S.clean_text)
       .to_numpy() for field in fields},
      index=pd.Index(ids.to_numpy(), name="item_id"))
  return catalog[~catalog.index.duplicated(keep="first")]


def _original_text_ids(ids: pd.Series, item_map: Dict[str, str], text_keys: str,
                       path: str) -> pd.Series:
  """The text file's ids as original ids (UniSRec layout).

  `text_keys="auto"`: ids that are all .inter indices and never original ids
  are indices; ids that are original ids and not all indices are original ids.
  Numeric original ids can be both (every id is an index and an original id,
  and the map is not the identity): then the file is ambiguous and refused,
  since a wrong guess gives items other items' text without any error.

  Raises:
    DataToolsError: an ambiguous file under "auto".
  """
  if text_keys == "index":
    return ids.map(lambda index: item_map.get(index, index))
  if text_keys == "original":
    return ids
  originals = set(item_map.values())
  as_original, as_index = ids.isin(originals), ids.isin(item_map.keys())
  if as_index.all() and not as_original.any():
    return ids.map(item_map)
  identity = all(index == original for index, original in item_map.items())
  if as_index.all() and as_original.all() and not identity:
    raise S.DataToolsError(
        f"{path}: its ids are both original ids and .inter indices of the "
        ".item2index map, which maps them differently; say which with "
        "--text_keys=original or --text_keys=index")
  return ids


def read_recbole(options: PrepareOptions) -> S.RawSessions:
  """Reads RecBole atomic files (see the module docstring)."""
  files = dataset_files(options.raw_path)
  prefix = files["train"][:-len(SPLIT_SUFFIXES["train"])]
  map_paths = {"item": prefix + ITEM_MAP_SUFFIX,
               "user": prefix + USER_MAP_SUFFIX}
  unisrec = os.path.isfile(map_paths["item"])
  if not unisrec and options.text_keys != "auto":
    raise S.DataToolsError(
        f"{map_paths['item']}: no such file; --text_keys={options.text_keys} is for the "
        "UniSRec layout, whose .item2index maps the .inter indices to original ids: restore "
        "the map, or leave --text_keys unset for a plain RecBole folder")
  item_map = read_index_map(map_paths["item"]) if unisrec else None
  user_map = (read_index_map(map_paths["user"])
              if unisrec and os.path.isfile(map_paths["user"]) else None)
  records, origin, rows_read = [], {}, {}
  cleaning: Dict[str, object] = {
      "layout": "unisrec (ids mapped through " + os.path.basename(
          map_paths["item"]) + (" and " + os.path.basename(map_paths["user"])
                                if user_map is not None else "") + ")"
      if unisrec else "recbole (ids as in the .inter files)"}
  for split, path in files.items():
    rows, has_user = _rows(path, item_map, user_map, map_paths)
    rows_read[split] = len(rows)
    cleaning[f"rows_read_{split}"] = len(rows)
    S.first_occurrences([row.history for row in rows],
                        [row.row for row in rows], path, "item_id_list",
                        into=origin)
    S.first_occurrences([[row.target] for row in rows],
                        [row.row for row in rows], path, "item_id", into=origin)
    if split == "train":
      split_records, unscorable = _train_sessions(path, rows, has_user)
    else:
      split_records, unscorable = _leave_one_out_sessions(path, rows, split)
    records.extend(split_records)
    cleaning[f"rows_unscorable_{split}"] = unscorable
  names = {split: os.path.basename(path) for split, path in files.items()}
  rule = (f"given by the atomic files: train = {names['train']} (per user, the "
          "longest row is one session scoring the rows that are its prefixes; "
          "every other row scores only its last item), valid = "
          f"{names['valid']}, test = {names['test']} (leave-one-out: only the "
          "last item of each row is scored; every row kept)")
  return S.RawSessions(
      sessions=S.make_sessions(records),
      catalog=read_catalog(options, prefix, item_map),
      raw_format="recbole", eval_protocol=schema.EVAL_LEAVE_ONE_OUT,
      split_rule=rule, item_origin=origin, cleaning=cleaning,
      sessions_deduplicated=True, keep_eval_rows=True, rows_read=rows_read)
