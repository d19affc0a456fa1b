"""RecBole / UniSRec atomic files, split leave-one-out.

`--raw_path` is the folder with `<name>.train.inter`, `<name>.valid.inter` and
`<name>.test.inter` (or one of those files). They are tab-separated with typed
headers such as `user_id:token  item_id_list:token_seq  item_id:token`;
`item_id_list` holds space-separated item ids. Item text comes from
`--catalog_path`, else `<name>.text` (`item_id:token  text:token_seq`), else
`<name>.item`; `--text_fields` names its columns (without the `:type`).

Training rows of UniSRec files are usually every prefix of each user's
sequence. One training session per user is rebuilt from the row whose
item_id_list + [item_id] is longest (the first such row on ties); the user's
other rows must be prefixes of it and are then covered by it, and a row that is
not a prefix is kept as a session of its own. Training sessions score every
prefix (eval_start 1). A validation or test row becomes the session
item_id_list + [item_id] scored only at its last item (eval_start len-1), the
leave-one-out protocol. Repeated items keep their first occurrence; in a
leave-one-out row the target stays last (`sessions.dedup_with_target`).
Without a user_id column every training row is a session of its own.
"""

import os
import re
from typing import Dict, List, Optional, Tuple

import pandas as pd

from alterrec_tf.formats import schema
from data_tools import sessions as S
from data_tools import tables
from data_tools.options import PrepareOptions

SPLIT_SUFFIXES = {"train": ".train.inter", "valid": ".valid.inter",
                  "test": ".test.inter"}
_BAD_TOKEN = re.compile(r"[\[\]'\",]")


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


def _token(value: str, path: str, row: int, column: str) -> str:
  if not value or _BAD_TOKEN.search(value):
    raise S.input_error(f"bad item id {value!r} (expected space-separated ids)",
                        path, row=row, column=column)
  return value


def _rows(path: str) -> Tuple[List[Tuple[str, List[str], str, int]], bool]:
  """(user, history, target, row) per row of an .inter file; has_user flag."""
  table = read_atomic(path)
  list_column = tables.find_column(table, path, ("item_id_list",))
  item_column = tables.find_column(table, path, ("item_id",))
  user_column = tables.find_column(table, path, ("user_id",), False)
  users = table[user_column] if user_column else pd.Series([""] * len(table))
  rows = []
  for row, (user, history, target) in enumerate(
      zip(users, table[list_column], table[item_column]), start=1):
    history = [_token(item, path, row, list_column)
               for item in str(history).split()]
    rows.append((str(user).strip(), history,
                 _token(str(target).strip(), path, row, item_column), row))
  return rows, user_column is not None


def _train_sessions(path: str, rows, has_user: bool) -> List[dict]:
  """Training sessions rebuilt as the module docstring says."""
  by_user: Dict[str, list] = {}
  for user, history, target, row in rows:
    key = user if has_user else f"\x00{row}"
    by_user.setdefault(key, []).append((history + [target], row))
  chosen = []
  for user_rows in by_user.values():
    longest, longest_row = max(user_rows, key=lambda pair: len(pair[0]))
    chosen.append((longest_row, longest))
    for full, row in user_rows:
      if full != longest[:len(full)]:
        chosen.append((row, full))
  name = os.path.basename(path)
  users = {row: user for user, _, _, row in rows}
  return [{S.SESSION_ID: f"{name}:{row}", S.USER_ID: users[row],
           S.TIMESTAMP: 0, S.ITEMS: S.dedup_items(full), S.SPLIT: "train",
           S.EVAL_START: 1} for row, full in sorted(chosen)]


def _leave_one_out_sessions(path: str, rows, split: str) -> List[dict]:
  name = os.path.basename(path)
  records = []
  for user, history, target, row in rows:
    items = S.dedup_with_target(history, target)
    records.append({S.SESSION_ID: f"{name}:{row}", S.USER_ID: user,
                    S.TIMESTAMP: 0, S.ITEMS: items, S.SPLIT: split,
                    S.EVAL_START: max(1, len(items) - 1)})
  return records


def _text_file(options: PrepareOptions, prefix: str) -> Optional[str]:
  if options.catalog_path:
    return options.catalog_path
  for suffix in (".text", ".item"):
    if os.path.isfile(prefix + suffix):
      return prefix + suffix
  return None


def read_catalog(options: PrepareOptions, prefix: str) -> pd.DataFrame:
  """Item text from the .text/.item file, one column per text field.

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
  catalog = pd.DataFrame(
      {field: table[tables.find_column(table, path, (field,))].map(S.clean_text)
       .to_numpy() for field in fields},
      index=pd.Index(tables.id_strings(table[id_column], path, id_column)
                     .to_numpy(), name="item_id"))
  return catalog[~catalog.index.duplicated(keep="first")]


def read_recbole(options: PrepareOptions) -> S.RawSessions:
  """Reads RecBole atomic files (see the module docstring)."""
  files = dataset_files(options.raw_path)
  records, origin, cleaning = [], {}, {}
  for split, path in files.items():
    rows, has_user = _rows(path)
    cleaning[f"rows_read_{split}"] = len(rows)
    S.first_occurrences([h for _, h, _, _ in rows], [r for *_, r in rows],
                        path, "item_id_list", into=origin)
    S.first_occurrences([[t] for _, _, t, _ in rows], [r for *_, r in rows],
                        path, "item_id", into=origin)
    if split == "train":
      records.extend(_train_sessions(path, rows, has_user))
    else:
      records.extend(_leave_one_out_sessions(path, rows, split))
  prefix = files["train"][:-len(SPLIT_SUFFIXES["train"])]
  names = {split: os.path.basename(path) for split, path in files.items()}
  rule = (f"given by the atomic files: train = {names['train']} (one session "
          "per user rebuilt from its longest row, every prefix scored), valid = "
          f"{names['valid']}, test = {names['test']} (leave-one-out: only the "
          "last item of each row is scored)")
  return S.RawSessions(
      sessions=S.make_sessions(records), catalog=read_catalog(options, prefix),
      raw_format="recbole", eval_protocol=schema.EVAL_LEAVE_ONE_OUT,
      split_rule=rule, item_origin=origin, cleaning=cleaning,
      sessions_deduplicated=True)
