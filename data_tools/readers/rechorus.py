"""ReChorus layout: train/dev/test interaction tables, split leave-one-out.

`--raw_path` is the folder with `train.csv`, `dev.csv` and `test.csv` (tab-
separated despite the name, header `user_id item_id time [neg_items]`), and,
for item text, `<name>.item2index` (`original_id<TAB>integer id` lines, no
header: the ids of the csv files) and `<name>.text` (header `id text`, keyed
by the original ids; `--text_fields=text`). `--catalog_path` may name the text
file instead.

Sessions (one per user, its reviews in time order; ties keep file order):

* train: the user's train.csv items, every prefix scored (eval_start 1);
  repeated items keep their first occurrence.
* valid: one session per dev.csv row: the user's train items, then the dev
  item, scored only at that item (leave-one-out).
* test: one session per test.csv row: the user's train items and dev item(s),
  then the test item, scored only at that item.

Validation and test rows in = rows out (`keep_eval_rows`): no filter changes
or drops them; a row whose history is empty is not written and is counted as
`rows_unscorable_<split>`. The `neg_items` column (ReChorus's 99 sampled
negatives) is ignored: ranking stays over the whole catalogue. Items and users
are named by their original ids (an Amazon ASIN) when `.item2index` exists,
else by the csv ids.
"""

import os
from typing import Dict, List, Optional, Tuple

import pandas as pd

from alterrec_tf.formats import schema
from data_tools import sessions as S
from data_tools import tables
from data_tools.options import PrepareOptions
from data_tools.readers import recbole

SPLIT_FILES = {"train": "train.csv", "valid": "dev.csv", "test": "test.csv"}
ITEM_MAP_SUFFIX = ".item2index"


def dataset_files(raw_path: str) -> Dict[str, str]:
  """{split: path} of the three tables in folder `raw_path`.

  Raises:
    DataToolsError: the folder or a table is missing.
  """
  if not os.path.isdir(raw_path):
    folder = os.path.dirname(raw_path) if os.path.basename(raw_path) in (
        SPLIT_FILES.values()) else ""
    if not folder:
      raise S.DataToolsError(f"{raw_path}: not a folder (rechorus needs the folder with "
                             f"{', '.join(SPLIT_FILES.values())})")
    raw_path = folder
  files = {split: os.path.join(raw_path, name) for split, name in SPLIT_FILES.items()}
  for path in files.values():
    if not os.path.isfile(path):
      raise S.DataToolsError(f"{path}: no such file (rechorus needs "
                             f"{', '.join(SPLIT_FILES.values())} in one folder)")
  return files


def item_map_file(folder: str) -> Optional[str]:
  """The folder's single `*.item2index`, or None.

  Raises:
    DataToolsError: several such files, or an empty one.
  """
  found = tables.list_files(folder, ["*" + ITEM_MAP_SUFFIX])
  if len(found) > 1:
    raise S.DataToolsError(f"{folder}: expected one *{ITEM_MAP_SUFFIX} file, found "
                           f"{len(found)}: {', '.join(map(os.path.basename, found))}")
  if not found:
    return None
  if os.path.getsize(found[0]) == 0:
    raise S.DataToolsError(f"{found[0]}: the file is empty (expected "
                           "'original_id<TAB>integer id' lines)")
  return found[0]


def _interactions(path: str, item_map: Optional[Dict[str, str]],
                  map_path: str) -> pd.DataFrame:
  """One table as columns user, item (original ids), time (int), row (1-based)."""
  table = tables.read_table(path, sep="\t")
  user_column = tables.find_column(table, path, ("user_id",))
  item_column = tables.find_column(table, path, ("item_id",))
  time_column = tables.find_column(table, path, ("time", "timestamp"))
  users = tables.id_strings(table[user_column], path, user_column)
  items = tables.id_strings(table[item_column], path, item_column)
  if item_map is not None:
    unknown = ~items.isin(item_map.keys())
    if unknown.any():
      row = int(unknown.to_numpy().argmax())
      raise S.input_error(f"item id {items.iloc[row]!r} is not in "
                          f"{os.path.basename(map_path)}", path, row=row + 1,
                          column=item_column)
    items = items.map(item_map)
  times = pd.to_numeric(table[time_column], errors="coerce")
  bad = times.isna().to_numpy()
  if bad.any():
    row = int(bad.argmax())
    raise S.input_error(f"time {table[time_column].iloc[row]!r} is not a number (unix "
                        "seconds)", path, row=row + 1, column=time_column)
  return pd.DataFrame({"user": users.to_numpy(), "item": items.to_numpy(),
                       "time": times.astype("int64").to_numpy(),
                       "row": range(1, len(table) + 1)})


def _by_user(table: pd.DataFrame) -> Dict[str, List[Tuple[str, int]]]:
  """{user: [(item, time)] in time order, ties in file order}."""
  ordered = table.sort_values(["time", "row"], kind="stable")
  history: Dict[str, List[Tuple[str, int]]] = {}
  for user, item, time in zip(ordered["user"], ordered["item"], ordered["time"]):
    history.setdefault(user, []).append((item, int(time)))
  return history


def _eval_sessions(path: str, table: pd.DataFrame, split: str,
                   history: Dict[str, List[Tuple[str, int]]]) -> Tuple[List[dict], int]:
  """Leave-one-out sessions of one dev/test table; (sessions, unscorable rows)."""
  records, unscorable = [], 0
  for user, item, time, row in zip(table["user"], table["item"], table["time"],
                                   table["row"]):
    items = S.dedup_with_target([seen for seen, _ in history.get(user, [])], item)
    if len(items) < 2:
      unscorable += 1
      continue
    records.append({S.SESSION_ID: f"{os.path.basename(path)}:{row}", S.USER_ID: user,
                    S.TIMESTAMP: int(time), S.ITEMS: items, S.SPLIT: split,
                    S.EVAL_START: len(items) - 1})
  return records, unscorable


def read_rechorus(options: PrepareOptions) -> S.RawSessions:
  """Reads a ReChorus dataset folder (see the module docstring)."""
  files = dataset_files(options.raw_path)
  folder = os.path.dirname(files["train"])
  map_path = item_map_file(folder)
  item_map = None
  if map_path is not None:  # {index: original id}
    item_map = recbole.read_index_map(map_path)
    if not item_map:
      raise S.DataToolsError(f"{map_path}: no 'original_id<TAB>integer id' line")
  tables_by_split = {split: _interactions(path, item_map, map_path or "")
                     for split, path in files.items()}
  origin: Dict[str, S.Location] = {}
  for split, path in files.items():
    table = tables_by_split[split]
    S.first_occurrences([[item] for item in table["item"]], table["row"], path,
                        "item_id", into=origin)
  history = _by_user(tables_by_split["train"])
  records = []
  for user, events in history.items():
    items = S.dedup_items(item for item, _ in events)
    if len(items) >= 2:
      records.append({S.SESSION_ID: f"train:{user}", S.USER_ID: user,
                      S.TIMESTAMP: events[-1][1], S.ITEMS: items, S.SPLIT: "train",
                      S.EVAL_START: 1})
  cleaning: Dict[str, object] = {
      "layout": "rechorus (ids mapped through " + os.path.basename(map_path) + ")"
      if map_path else "rechorus (ids as in the csv files)",
      "neg_items": "ignored (ranking is over the whole catalogue)"}
  rows_read = {split: len(table) for split, table in tables_by_split.items()}
  # Validation sees the train history; test sees train + dev.
  seen = {user: list(events) for user, events in history.items()}
  for split in ("valid", "test"):
    split_records, unscorable = _eval_sessions(files[split], tables_by_split[split],
                                               split, seen)
    records.extend(split_records)
    cleaning[f"rows_read_{split}"] = rows_read[split]
    cleaning[f"rows_unscorable_{split}"] = unscorable
    table = tables_by_split[split]
    for user, item, time in zip(table["user"], table["item"], table["time"]):
      seen.setdefault(user, []).append((item, int(time)))
  cleaning["rows_read_train"] = rows_read["train"]
  cleaning["users_with_one_train_item"] = sum(
      len(S.dedup_items(item for item, _ in events)) < 2 for events in history.values())
  rule = ("given by the ReChorus tables: train = train.csv (one session per user, every "
          "prefix scored), valid = dev.csv and test = test.csv (leave-one-out: the "
          "user's earlier items, then the row's item, scored only there; every row kept)")
  name = os.path.basename(map_path)[:-len(ITEM_MAP_SUFFIX)] if map_path else "items"
  return S.RawSessions(
      sessions=S.make_sessions(records),
      catalog=recbole.read_catalog(options, os.path.join(folder, name), item_map),
      raw_format="rechorus", eval_protocol=schema.EVAL_LEAVE_ONE_OUT,
      split_rule=rule, item_origin=origin, cleaning=cleaning,
      sessions_deduplicated=True, keep_eval_rows=True, rows_read=rows_read)
