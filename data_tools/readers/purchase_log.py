"""Purchase logs with users: the Homedepot layout and UCI Online Retail.

`purchase_log` (Homedepot layout): `--raw_path` is a table of interactions
(CSV/TSV/Parquet, or a folder holding one `interactions.*` file) with columns
user_id, session_id, item_id, timestamp (unix seconds or a date-time);
`--catalog_path` (or `items.*` / `catalog.*` next to it) is the item catalogue
with item_id and the text columns named by `--text_fields` (e.g. title,
description, taxonomy). Every interaction row is one item of its session.

`online_retail`: the UCI Online Retail table (dataset 352: InvoiceNo,
StockCode, Description, Quantity, InvoiceDate, UnitPrice, CustomerID, Country)
or Online Retail II (dataset 502, its 2009-2011 continuation: Invoice,
StockCode, Description, Quantity, InvoiceDate, Price, Customer ID, Country),
as .csv, .parquet or an .xlsx workbook (every sheet, in workbook order, or the
one named by `--sheet`: the II workbook has one sheet per year; an invoice
found in several sheets is one session). Column names match case-insensitively
under either naming; Country is not used and the price column is optional.
Cleaning, in order, each step counted in the manifest:
  * cancellations (InvoiceNo starting with "C") are dropped;
  * lines with Quantity <= 0 are dropped;
  * lines with UnitPrice (or Price) <= 0 are dropped (stock adjustments such
    as "check", "found", "amazon" and the "Unknown" lines; sales have a price);
  * non-product codes are dropped: only StockCodes starting with a digit are
    products (this removes POST, DOT, M, C2, D, S, B, BANK CHARGES, AMAZONFEE,
    CRUK, PADS, DCGS*, gift_*, m), plus the codes in `--excluded_stock_codes`.
A cell that cannot be read (an empty InvoiceNo or StockCode, a Quantity or
price that is not a number, an InvoiceDate that is not a date) is an error
naming the file (and sheet), the 1-based data row of that file or sheet (the
header not counted) and the column, whether or not the line would be kept.
Then InvoiceNo = session, CustomerID = user (a guest line without CustomerID
makes the invoice a one-session user "guest-<InvoiceNo>", a guest session
that the split handles apart from the registered users'), StockCode = item,
session timestamp = the invoice's earliest InvoiceDate, items in line order;
title = the most frequent Description of the StockCode among the kept lines
(ties: alphabetically first; whitespace runs collapsed).

Both layouts: repeated items in a session keep their first occurrence, and
sessions are listed by (timestamp, session_id). They come unsplit: the split is
`data_tools.splits.chronological_user_split`. Each is read in two steps that the
Beam pipeline (`data_tools.beam`) reuses: the cleaned item lines
(`purchase_log_lines`, `retail_lines`), then sessions grouped from them
(`data_tools.readers.lines`) with the catalogue (`read_catalog`; Online Retail:
`best_title` per StockCode).
"""

import os
import sys
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from data_tools import sessions as S
from data_tools import tables
from data_tools.options import PrepareOptions
from data_tools.readers import lines
from data_tools.readers.lines import lines_to_sessions

INTERACTION_COLUMNS = {
    S.USER_ID: ("user_id", "user", "customer_id", "visitor_id"),
    S.SESSION_ID: ("session_id", "session"),
    "item_id": ("item_id", "item", "product_id"),
    S.TIMESTAMP: ("timestamp", "time", "datetime", "date"),
}
CATALOG_ITEM_COLUMN = ("item_id", "item", "product_id", "id")
RETAIL_NAMES = {  # canonical name: (Online Retail name, Online Retail II name)
    "InvoiceNo": ("InvoiceNo", "Invoice"),
    "StockCode": ("StockCode", "StockCode"),
    "Description": ("Description", "Description"),
    "Quantity": ("Quantity", "Quantity"),
    "InvoiceDate": ("InvoiceDate", "InvoiceDate"),
    "UnitPrice": ("UnitPrice", "Price"),
    "CustomerID": ("CustomerID", "Customer ID"),
}
OPTIONAL_RETAIL_COLUMNS = ("UnitPrice",)
PRICE_SKIPPED = ("skipped: no UnitPrice / Price column, so lines with price <= 0 (stock "
                 "adjustments) were kept")
ROW_NOTE = "(rows are 1-based data rows, the header line not counted)"
UNKNOWN_DESCRIPTION = "Unknown"


def _data_file(path: str, stems: Sequence[str],
               extensions: Sequence[str] = tables.PARQUET_EXTENSIONS
               + tables.CSV_EXTENSIONS) -> str:
  """`path` itself, or the one table in folder `path` whose name starts with a stem."""
  if not os.path.isdir(path):
    return path
  patterns = [f"{stem}*" for stem in stems]
  found = [name for name in tables.list_files(path, patterns)
           if name.lower().endswith(tuple(extensions))]
  if len(found) != 1:
    raise S.DataToolsError(
        f"{path}: expected exactly one table named {' or '.join(patterns)}, "
        f"found {len(found)}: {[os.path.basename(name) for name in found]}")
  return found[0]


def to_unix_seconds(values: pd.Series, path: str, column: str) -> pd.Series:
  """Timestamps (numbers of unix seconds, date-times or date strings) -> int64.

  Raises:
    DataToolsError: naming file, row and column of the first unparseable value.
  """
  if pd.api.types.is_numeric_dtype(values.dtype):
    parsed = pd.to_numeric(values, errors="coerce")
  elif pd.api.types.is_datetime64_any_dtype(values.dtype):
    parsed = values
  else:
    text = values.astype(str).str.strip()
    numeric = text.str.fullmatch(r"-?\d+(\.\d+)?").fillna(False)
    parsed = (pd.to_numeric(text, errors="coerce") if numeric.all()
              else pd.to_datetime(text, errors="coerce", format="mixed"))
  bad = np.flatnonzero(pd.isna(parsed).to_numpy())
  if len(bad):
    raise S.input_error(f"cannot read timestamp {values.iloc[bad[0]]!r}",
                        path, row=int(bad[0]) + 1, column=column)
  if pd.api.types.is_datetime64_any_dtype(parsed.dtype):
    if getattr(parsed.dt, "tz", None) is not None:
      parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed.astype("datetime64[s]").astype("int64")
  return parsed.astype("float64").floordiv(1).astype("int64")


def purchase_log_lines(options: PrepareOptions) -> lines.LineSource:
  """The interaction lines of the Homedepot layout (see the module docstring)."""
  path = _data_file(options.raw_path, ("interactions", "inter"))
  table = tables.read_table(path)
  names = {key: tables.find_column(table, path, aliases)
           for key, aliases in INTERACTION_COLUMNS.items()}
  item_lines = pd.DataFrame({
      S.SESSION_ID: tables.id_strings(table[names[S.SESSION_ID]], path,
                                      names[S.SESSION_ID]),
      S.USER_ID: tables.id_strings(table[names[S.USER_ID]], path,
                                   names[S.USER_ID]),
      "item_id": tables.id_strings(table[names["item_id"]], path,
                                   names["item_id"]),
      S.TIMESTAMP: to_unix_seconds(table[names[S.TIMESTAMP]], path,
                                   names[S.TIMESTAMP]),
      "row": np.arange(1, len(table) + 1)})
  return lines.LineSource(item_lines, lines.header("purchase_log", {"rows_read": len(table)}),
                    path, names[S.USER_ID], names["item_id"])


def read_purchase_log(options: PrepareOptions) -> S.RawSessions:
  """Reads the Homedepot layout (see the module docstring)."""
  source = purchase_log_lines(options)
  sessions = lines_to_sessions(source.lines, source.path, source.user_column)
  return lines.with_sessions(source, sessions, read_catalog(options, source.path))


def read_catalog(options: PrepareOptions, interactions_path: str) -> pd.DataFrame:
  """The item catalogue of a purchase log, one column per text field.

  Raises:
    DataToolsError: text fields are set but no catalogue is given, or a field
      column is missing.
  """
  fields = list(options.text_fields)
  if not fields:
    return S.empty_catalog(fields)
  path = options.catalog_path
  if not path and os.path.isdir(options.raw_path):
    path = _data_file(options.raw_path, ("items", "catalog"))
  if not path:
    raise S.DataToolsError(
        f"{interactions_path}: --text_fields={','.join(fields)} needs an item "
        "catalogue; pass --catalog_path=<file> (or --text_fields= for IDs only)")
  table = tables.read_table(path)
  item_column = tables.find_column(table, path, CATALOG_ITEM_COLUMN)
  columns = {field: tables.find_column(table, path, (field,)) for field in fields}
  catalog = pd.DataFrame(
      {field: table[column].map(S.clean_text) for field, column in columns.items()})
  catalog.index = pd.Index(tables.id_strings(table[item_column], path, item_column),
                           name="item_id")
  return catalog[~catalog.index.duplicated(keep="first")]


def customer_ids(values: pd.Series) -> pd.Series:
  """CustomerID cells -> str ids ("17850", never "17850.0"); "" for guests."""
  text = values.astype(object).map(S.clean_text)
  number = pd.to_numeric(text, errors="coerce")
  whole = number.notna() & (number == np.floor(number))
  text[whole] = number[whole].astype("int64").astype(str)
  return text


def _numbers(table: pd.DataFrame, column: str, path: str) -> pd.Series:
  """A numeric column; an empty or unparseable cell is an error."""
  values = pd.to_numeric(table[column], errors="coerce")
  bad = np.flatnonzero(values.isna().to_numpy())
  if len(bad):
    raise S.input_error(f"not a number: {table[column].iloc[bad[0]]!r}", path,
                        row=int(bad[0]) + 1, column=column)
  return values


def retail_columns(table: pd.DataFrame, source: str) -> Dict[str, Optional[str]]:
  """{canonical name: the table's column} under either Online Retail naming.

  Raises:
    DataToolsError: naming the file, the missing columns, both namings and
      the columns the file has.
  """
  found = {name: tables.find_column(table, source, aliases, False)
           for name, aliases in RETAIL_NAMES.items()}
  missing = [name for name, column in found.items()
             if column is None and name not in OPTIONAL_RETAIL_COLUMNS]
  if missing:
    second = any(  # the file uses an Online Retail II name: show those
        column is not None and column.lower() == RETAIL_NAMES[name][1].lower()
        != RETAIL_NAMES[name][0].lower() for name, column in found.items())
    shown = [RETAIL_NAMES[name][1 if second else 0] for name in missing]
    expected = [", ".join(names[i] for names in RETAIL_NAMES.values())
                for i in (0, 1)]
    raise S.input_error(
        f"missing column{'s' if len(shown) > 1 else ''} "
        f"{', '.join(map(repr, shown))}; online_retail expects the Online Retail "
        f"columns {expected[0]} (UCI 352) or the Online Retail II columns "
        f"{expected[1]} (UCI 502; Country is not used, the price is optional); "
        f"the file has {', '.join(repr(str(c)) for c in table.columns)}",
        source, row=0, column=shown[0])
  return found


def _retail_part(table: pd.DataFrame, source: str) -> pd.DataFrame:
  """One file or sheet of Online Retail lines with parsed, canonical columns.

  Raises:
    DataToolsError: a missing column, or a cell that cannot be read, named by
      file (and sheet), 1-based data row and column.
  """
  columns = retail_columns(table, source)
  price = columns["UnitPrice"]
  try:
    part = pd.DataFrame({
        "invoice": tables.id_strings(table[columns["InvoiceNo"]], source,
                                     columns["InvoiceNo"]).to_numpy(),
        "code": tables.id_strings(table[columns["StockCode"]], source,
                                  columns["StockCode"]).to_numpy(),
        "title": table[columns["Description"]].map(S.clean_text).to_numpy(),
        "quantity": _numbers(table, columns["Quantity"], source).to_numpy(),
        S.TIMESTAMP: to_unix_seconds(table[columns["InvoiceDate"]], source,
                                     columns["InvoiceDate"]).to_numpy(),
        "price": (_numbers(table, price, source).to_numpy() if price
                  else np.full(len(table), np.nan)),
        "customer": customer_ids(table[columns["CustomerID"]]).to_numpy(),
        "source": source, "row": np.arange(1, len(table) + 1)})
  except S.DataToolsError as error:
    raise S.DataToolsError(f"{error} {ROW_NOTE}") from error
  part.attrs["has_price"] = price is not None
  part.attrs["columns"] = {name: column for name, column in columns.items()
                           if column is not None}
  return part


def read_retail_parts(path: str, sheet: str = "") -> List[pd.DataFrame]:
  """The parsed lines of each sheet of a workbook, or of the one table file."""
  if path.lower().endswith(tables.EXCEL_EXTENSIONS):
    sheets = tables.read_workbook(path, sheet)
    parts = []
    for name, table in sheets:
      parts.append(_retail_part(table, f"{path}, sheet {name!r}"))
      parts[-1].attrs["sheet"] = name
    return parts
  if sheet:
    raise S.DataToolsError(f"{path}: --sheet={sheet} needs an .xlsx workbook")
  return [_retail_part(tables.read_table(path), path)]


def _keep_masks(lines: pd.DataFrame, excluded: Sequence[str], has_price: bool):
  """Boolean masks of the Online Retail cleaning steps, in order."""
  code = lines["code"].str.strip()
  excluded_upper = {value.strip().upper() for value in excluded}
  masks = {
      "cancellations": ~lines["invoice"].str.upper().str.startswith("C"),
      "non_positive_quantity": lines["quantity"] > 0,
  }
  if has_price:
    masks["non_positive_price"] = lines["price"] > 0
  masks["non_product_codes"] = (code.str.match(r"\d").fillna(False)
                                & ~code.str.upper().isin(excluded_upper))
  return masks


def countable_title(title: str) -> bool:
  """A Description that can be an item's title (not empty, not "Unknown")."""
  return title not in ("", UNKNOWN_DESCRIPTION)


def best_title(counts: Mapping[str, int]) -> Optional[str]:
  """The most frequent of one item's titles (ties: alphabetically first).

  Args:
    counts: countable title -> number of kept lines with it.

  Returns:
    The title, or None when the item has none.
  """
  if not counts:
    return None
  return min(counts.items(), key=lambda pair: (-pair[1], pair[0]))[0]


def retail_catalog(item_lines: pd.DataFrame) -> pd.DataFrame:
  """Title of each StockCode: `best_title` of its kept lines' Descriptions."""
  described = item_lines.loc[item_lines["title"].map(countable_title).to_numpy(dtype=bool),
                             ["item_id", "title"]]
  per_item: Dict[str, Dict[str, int]] = {}
  for (item, title), count in described.value_counts().items():
    per_item.setdefault(item, {})[title] = int(count)
  titles = pd.Series({item: best_title(counts) for item, counts in per_item.items()},
                     dtype=object)
  catalog = pd.DataFrame({"title": titles})
  catalog.index.name = "item_id"
  return catalog


def retail_lines(options: PrepareOptions) -> lines.LineSource:
  """The kept lines of UCI Online Retail (II) and the cleaning counts."""
  extra = [field for field in options.text_fields if field != "title"]
  if extra:
    raise S.DataToolsError(f"--text_fields={','.join(options.text_fields)}: "
                           "online_retail has only the text field 'title'")
  path = _data_file(options.raw_path, ("online_retail", ""),
                    tables.PARQUET_EXTENSIONS + tables.CSV_EXTENSIONS
                    + tables.EXCEL_EXTENSIONS)
  parts = read_retail_parts(path, options.sheet)
  has_price = all(part.attrs["has_price"] for part in parts)
  table = pd.concat(parts, ignore_index=True)
  cleaning = {"rows_read": len(table),
              "columns": parts[0].attrs["columns"]}
  if len(parts) > 1:
    cleaning["rows_read_per_sheet"] = {part.attrs["sheet"]: len(part)
                                       for part in parts}
    sheets_per_invoice = table.groupby("invoice")["source"].nunique()
    cleaning["invoices_in_several_sheets"] = int((sheets_per_invoice > 1).sum())
  if not has_price:  # said, not silent: the kept lines (and the content hash) differ
    cleaning["non_positive_price"] = PRICE_SKIPPED
    print(f"warning: {path}: {PRICE_SKIPPED}", file=sys.stderr, flush=True)
  keep = pd.Series(True, index=table.index)
  for step, mask in _keep_masks(table, options.excluded_stock_codes,
                                has_price).items():
    cleaning[f"rows_dropped_{step}"] = int((keep & ~mask.fillna(False)).sum())
    keep &= mask.fillna(False)
  kept = table[keep.to_numpy()]
  guest = (kept["customer"] == "").to_numpy()
  users = np.where(guest, kept["invoice"].map(S.guest_user_id), kept["customer"])
  item_lines = pd.DataFrame({
      S.SESSION_ID: kept["invoice"].to_numpy(), S.USER_ID: users,
      "item_id": kept["code"].to_numpy(),
      S.TIMESTAMP: kept[S.TIMESTAMP].to_numpy(),
      "row": kept["row"].to_numpy(), "source": kept["source"].to_numpy(),
      "title": kept["title"].to_numpy()})
  cleaning["rows_kept"] = len(item_lines)
  names = parts[0].attrs["columns"]
  return lines.LineSource(item_lines, lines.header("online_retail", cleaning), path,
                    names["CustomerID"], names["StockCode"])


def read_online_retail(options: PrepareOptions) -> S.RawSessions:
  """Reads UCI Online Retail or Online Retail II (see the module docstring)."""
  source = retail_lines(options)
  sessions = lines_to_sessions(source.lines, source.path, source.user_column)
  return lines.with_sessions(source, sessions, retail_catalog(source.lines))
