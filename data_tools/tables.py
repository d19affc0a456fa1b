"""Reading raw tables (CSV, TSV, Parquet, .xlsx) with progress and checked columns."""

import csv
import glob
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from tqdm import tqdm

from data_tools.sessions import DataToolsError, input_error

PARQUET_EXTENSIONS = (".parquet", ".pq")
CSV_EXTENSIONS = (".csv", ".tsv", ".txt", ".inter", ".item", ".text")
EXCEL_EXTENSIONS = (".xlsx", ".xlsm")
_CHUNK_ROWS = 100_000


def read_table(path: str, sep: Optional[str] = None,
               columns: Optional[Sequence[str]] = None) -> pd.DataFrame:
  """Reads a whole CSV/TSV or Parquet file, showing a rows-read progress bar.

  CSV cells are read as strings (no type guessing, empty cells stay ""), so
  that ids like "00123" keep their form; Parquet keeps its own types.

  Args:
    path: the file.
    sep: CSV separator; default "\\t" for .tsv/.inter/.item/.text, else ",".
    columns: Parquet columns to read (all if None); ignored for CSV.

  Returns:
    The table.

  Raises:
    DataToolsError: the file is missing, of an unknown type or unreadable.
  """
  if not os.path.isfile(path):
    raise DataToolsError(f"{path}: no such file")
  extension = os.path.splitext(path)[1].lower()
  try:
    if extension in PARQUET_EXTENSIONS:
      return _read_parquet(path, columns)
    if extension in CSV_EXTENSIONS:
      if sep is None:
        sep = "," if extension == ".csv" else "\t"
      return _read_csv(path, sep)
  except UnicodeDecodeError as error:
    raise DataToolsError(not_utf8_message(path)) from error
  except (OSError, ValueError, pd.errors.ParserError) as error:
    if isinstance(error, DataToolsError):
      raise
    raise DataToolsError(f"{path}: cannot read the file: {error}") from error
  raise DataToolsError(f"{path}: unknown file type {extension!r} (expected "
                       f"{', '.join(PARQUET_EXTENSIONS + CSV_EXTENSIONS)})")


def read_workbook(path: str, sheet: str = "") -> List[Tuple[str, pd.DataFrame]]:
  """The sheets of an .xlsx workbook, in workbook order, as (name, table).

  Cells keep the types the workbook gives them (dates, numbers, text), like
  Parquet columns. Reading needs the openpyxl package.

  Args:
    path: the workbook.
    sheet: read only this sheet; "" reads every sheet.

  Returns:
    (sheet name, table) pairs.

  Raises:
    DataToolsError: the file is missing, openpyxl is not installed, the sheet
      does not exist, or the workbook cannot be read.
  """
  if not os.path.isfile(path):
    raise DataToolsError(f"{path}: no such file")
  try:
    import openpyxl  # noqa: F401  (only checks that the engine pandas needs is installed)
  except ImportError as error:
    raise DataToolsError(
        f"{path}: reading .xlsx workbooks needs the openpyxl package, which is "
        "not installed (pip install openpyxl); or save the sheets as .csv or "
        ".parquet") from error
  try:
    with pd.ExcelFile(path, engine="openpyxl") as book:
      names = list(book.sheet_names)
      if sheet and sheet not in names:
        raise DataToolsError(f"{path}: no sheet {sheet!r}; the workbook has "
                             f"{', '.join(map(repr, names))}")
      chosen = [sheet] if sheet else names
      sheets = []
      for name in tqdm(chosen, desc=f"read {os.path.basename(path)}",
                       unit=" sheets", leave=False):
        sheets.append((name, pd.read_excel(book, sheet_name=name)))
  except DataToolsError:
    raise
  except (OSError, ValueError, KeyError) as error:
    raise DataToolsError(f"{path}: cannot read the workbook: {error}") from error
  return sheets


def not_utf8_message(path: str) -> str:
  """The error for a text file that is not UTF-8, naming its first bad line.

  The decoder's own position is an offset in a read buffer, useless to a
  user; the file is scanned line by line to find the row and byte instead.
  """
  with open(path, "rb") as f:
    for line_number, line in enumerate(f, start=1):
      try:
        line.decode("utf-8")
      except UnicodeDecodeError as error:
        return (f"{path}, line {line_number}, byte {error.start + 1} of the line "
                f"(0x{line[error.start]:02x}): not UTF-8; save the file as UTF-8 "
                "(e.g. iconv -f latin1 -t utf-8)")
  return f"{path}: not UTF-8; save the file as UTF-8"


def _progress(path: str, total: Optional[int]):
  return tqdm(total=total, unit=" rows", unit_scale=True,
              desc=f"read {os.path.basename(path)}", leave=False)


def _read_parquet(path: str, columns: Optional[Sequence[str]]) -> pd.DataFrame:
  parquet = pq.ParquetFile(path)
  if columns is not None:
    present = set(parquet.schema_arrow.names)
    columns = [name for name in columns if name in present]
  parts = []
  with _progress(path, parquet.metadata.num_rows) as bar:
    for batch in parquet.iter_batches(batch_size=_CHUNK_ROWS, columns=columns):
      parts.append(batch.to_pandas())
      bar.update(batch.num_rows)
  if not parts:
    return parquet.schema_arrow.empty_table().to_pandas()
  return pd.concat(parts, ignore_index=True)


def _read_csv(path: str, sep: str) -> pd.DataFrame:
  parts = []
  with _progress(path, None) as bar:
    reader = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                         na_filter=False, quoting=csv.QUOTE_MINIMAL
                         if sep == "," else csv.QUOTE_NONE,
                         chunksize=_CHUNK_ROWS, encoding="utf-8")
    for chunk in reader:
      parts.append(chunk)
      bar.update(len(chunk))
  return pd.concat(parts, ignore_index=True)


def find_column(table: pd.DataFrame, path: str, names: Sequence[str],
                required: bool = True) -> Optional[str]:
  """The first of `names` that `table` has (case-insensitive).

  Args:
    table: the table read from `path`.
    path: its file, for the error message.
    names: accepted names of one column, the preferred first.
    required: raise if none is present; else return None.

  Returns:
    The column's actual name, or None.

  Raises:
    DataToolsError: naming the file, the header and the missing column.
  """
  lower = {str(column).lower(): column for column in table.columns}
  for name in names:
    if name.lower() in lower:
      return lower[name.lower()]
  if not required:
    return None
  aliases = f" (or {', '.join(map(repr, names[1:]))})" if len(names) > 1 else ""
  raise input_error(f"missing column {names[0]!r}{aliases}; the file has "
                    f"{', '.join(map(repr, map(str, table.columns)))}",
                    path, row=0, column=names[0])


def id_strings(values: pd.Series, path: str, column: str) -> pd.Series:
  """Id cells -> str; integral floats lose ".0"; empty or missing ids fail.

  Raises:
    DataToolsError: naming file, row and column of the first missing id.
  """
  if pd.api.types.is_float_dtype(values.dtype):
    whole = values.dropna()
    if (whole == np.floor(whole)).all():
      values = values.astype("Int64")
  strings = values.astype(object).map(
      lambda value: "" if value is None or value is pd.NA
      or (isinstance(value, float) and value != value) else str(value).strip())
  missing = np.flatnonzero((strings == "").to_numpy())
  if len(missing):
    raise input_error("empty id", path, row=int(missing[0]) + 1, column=column)
  return strings


def list_files(folder: str, patterns: Sequence[str]) -> List[str]:
  """Sorted files of `folder` matching any glob pattern, without duplicates."""
  found = set()
  for pattern in patterns:
    found.update(glob.glob(os.path.join(folder, pattern)))
  return sorted(path for path in found if os.path.isfile(path))
