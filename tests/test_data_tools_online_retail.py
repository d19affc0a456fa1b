"""Online Retail reader: both UCI namings, .csv / .parquet / .xlsx, file rows in errors.

Online Retail II (UCI 502) renames InvoiceNo -> Invoice, UnitPrice -> Price and
CustomerID -> Customer ID and ships one .xlsx with a sheet per year. The
workbook tests write such a workbook with pandas + openpyxl and are skipped
where openpyxl is not installed (the reader then fails with a clear error,
tested below).
"""

import os
import subprocess
import sys

import pandas as pd
import pytest

from alterrec_tf.formats import schema
from data_tools import prepare
from data_tools import sessions as S
from data_tools.options import PrepareOptions
from data_tools.readers import purchase_log

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TO_II = {"InvoiceNo": "Invoice", "UnitPrice": "Price", "CustomerID": "Customer ID"}
COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate",
           "UnitPrice", "CustomerID", "Country"]
LINES = [  # invoice, code, description, quantity, date, price, customer
    ("536365", "85123A", "WHITE HANGING HEART", 6, "2010-12-01 08:26", 2.55, 17850.0),
    ("536365", "71053", "WHITE METAL LANTERN", 6, "2010-12-01 08:26", 3.39, 17850.0),
    ("536365", "84406B", "CREAM CUPID HEARTS", 8, "2010-12-01 08:26", 0.0, 17850.0),
    ("536366", "22633", "HAND WARMER UNION JACK", 6, "2010-12-01 08:28", 1.85, None),
    ("536366", "22632", "HAND WARMER RED SPOT", 6, "2010-12-01 08:28", 1.85, None),
    ("C536379", "22633", "HAND WARMER UNION JACK", -1, "2010-12-01 09:41", 1.85, 14527.0),
    ("536380", "POST", "POSTAGE", 1, "2010-12-01 09:45", 18.0, 12583.0),
    ("536381", "22632", "HAND WARMER RED SPOT", 2, "2010-12-01 09:50", -5.0, 12583.0),
    ("536381", "71053", "WHITE METAL LANTERN", 2, "2010-12-01 09:50", 3.39, 12583.0),
    ("536381", "85123A", "WHITE HANGING HEART", 2, "2010-12-01 09:50", 2.55, 12583.0),
]


def retail_table(lines=LINES, naming="original"):
  table = pd.DataFrame([line + ("United Kingdom",) for line in lines],
                       columns=COLUMNS)
  table["InvoiceDate"] = pd.to_datetime(table["InvoiceDate"])
  return table.rename(columns=TO_II) if naming == "ii" else table


def _read(path, **kwargs):
  return purchase_log.read_online_retail(
      PrepareOptions(raw_path=str(path), output_dir="unused", **kwargs))


def _sessions(raw):
  return {row[S.SESSION_ID]: (row[S.USER_ID], row[S.ITEMS])
          for _, row in raw.sessions.iterrows()}


EXPECTED = {"536365": ("17850", ["85123A", "71053"]),  # 84406B: price 0
            "536366": ("guest-536366", ["22633", "22632"]),
            "536381": ("12583", ["71053", "85123A"])}  # 22632: price -5


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_online_retail_ii_naming_reads_like_the_original(tmp_path, suffix):
  for naming in ("original", "ii"):
    path = tmp_path / f"{naming}{suffix}"
    table = retail_table(naming=naming)
    if suffix == ".csv":
      table.to_csv(path, index=False)
    else:
      table.to_parquet(path)
    raw = _read(path)
    assert _sessions(raw) == EXPECTED, naming
    assert raw.cleaning["rows_dropped_non_positive_price"] == 2  # Price too
    assert raw.cleaning["rows_dropped_cancellations"] == 1
    assert raw.cleaning["rows_dropped_non_product_codes"] == 1
    assert raw.cleaning["rows_kept"] == 6
    assert raw.catalog.loc["71053", "title"] == "WHITE METAL LANTERN"
  assert raw.cleaning["columns"]["CustomerID"] == "Customer ID"


def test_missing_column_names_both_namings(tmp_path):
  path = tmp_path / "retail_ii.csv"
  retail_table(naming="ii").drop(columns=["Customer ID"]).to_csv(path, index=False)
  with pytest.raises(S.DataToolsError) as error:
    _read(path)
  message = str(error.value)
  assert message.startswith(f"{path}, header, column 'Customer ID': missing "
                            "column 'Customer ID'; online_retail expects")
  assert ("InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice, "
          "CustomerID (UCI 352)") in message
  assert ("Invoice, StockCode, Description, Quantity, InvoiceDate, Price, "
          "Customer ID (UCI 502") in message


def test_bad_date_names_the_file_row_not_the_kept_position(tmp_path):
  """Rows 6-8 are dropped lines; the bad date is on data row 9 of the file."""
  table = retail_table().astype({"InvoiceDate": str})
  table.loc[8, "InvoiceDate"] = "31/31/2010"
  table.to_csv(tmp_path / "retail.csv", index=False)
  with pytest.raises(S.DataToolsError, match=r"retail.csv, row 9, column "
                     r"'InvoiceDate': cannot read timestamp '31/31/2010' "
                     r"\(rows are 1-based data rows, the header line not "
                     r"counted\)"):
    _read(tmp_path / "retail.csv")


def test_empty_invoice_names_the_file_row(tmp_path):
  table = retail_table(naming="ii")
  table.loc[9, "Invoice"] = ""
  table.to_csv(tmp_path / "retail.csv", index=False)
  with pytest.raises(S.DataToolsError, match=r"retail.csv, row 10, column "
                     r"'Invoice': empty id \(rows are 1-based data rows"):
    _read(tmp_path / "retail.csv")


def write_workbook(path, sheets):
  """An .xlsx with one sheet per (name, table), as UCI ships Online Retail II."""
  with pd.ExcelWriter(path, engine="openpyxl") as writer:
    for name, table in sheets:
      table.to_excel(writer, sheet_name=name, index=False)


def _two_sheets():
  """Online Retail II's two yearly sheets; invoice 536381 is in both."""
  table = retail_table(naming="ii")
  table["Invoice"] = [int(v) if v.isdigit() else v for v in table["Invoice"]]
  return [("Year 2009-2010", table.iloc[:5]), ("Year 2010-2011", table.iloc[5:])]


def test_two_sheet_workbook_reads_every_sheet(tmp_path):
  pytest.importorskip("openpyxl")
  sheets = _two_sheets()
  first, second = sheets
  second = (second[0], pd.concat([first[1].iloc[3:4], second[1]]))  # 536366 twice
  write_workbook(tmp_path / "online_retail_II.xlsx", [first, second])
  raw = _read(tmp_path)  # the folder: its one workbook
  assert _sessions(raw) == EXPECTED
  assert raw.cleaning["rows_read_per_sheet"] == {"Year 2009-2010": 5,
                                                 "Year 2010-2011": 6}
  assert raw.cleaning["invoices_in_several_sheets"] == 1
  assert raw.item_origin["85123A"] == S.Location(
      f"{tmp_path / 'online_retail_II.xlsx'}, sheet 'Year 2009-2010'", 1,
      "StockCode")


def test_sheet_option_reads_one_sheet(tmp_path):
  pytest.importorskip("openpyxl")
  write_workbook(tmp_path / "retail.xlsx", _two_sheets())
  raw = _read(tmp_path / "retail.xlsx", sheet="Year 2010-2011")
  assert _sessions(raw) == {"536381": EXPECTED["536381"]}
  assert raw.cleaning["rows_read"] == 5
  with pytest.raises(S.DataToolsError, match=r"retail.xlsx: no sheet 'Year "
                     r"2011'; the workbook has 'Year 2009-2010', 'Year 2010-2011'"):
    _read(tmp_path / "retail.xlsx", sheet="Year 2011")
  with pytest.raises(S.DataToolsError, match=r"--sheet=Year 2011 needs an "
                     r".xlsx workbook"):
    retail_table().to_csv(tmp_path / "retail.csv", index=False)
    _read(tmp_path / "retail.csv", sheet="Year 2011")


def test_workbook_error_names_sheet_and_row(tmp_path):
  pytest.importorskip("openpyxl")
  first, second = _two_sheets()
  bad = second[1].astype({"Quantity": object})
  bad.iloc[2, bad.columns.get_loc("Quantity")] = "two"
  write_workbook(tmp_path / "retail.xlsx", [first, (second[0], bad)])
  with pytest.raises(S.DataToolsError, match=r"retail.xlsx, sheet 'Year "
                     r"2010-2011', row 3, column 'Quantity': not a number: 'two'"):
    _read(tmp_path / "retail.xlsx")


def test_workbook_without_openpyxl_is_a_clear_error(tmp_path, monkeypatch):
  (tmp_path / "retail.xlsx").write_bytes(b"PK\x03\x04")
  monkeypatch.setitem(sys.modules, "openpyxl", None)  # import fails
  with pytest.raises(S.DataToolsError, match=r"retail.xlsx: reading .xlsx "
                     r"workbooks needs the openpyxl package, which is not "
                     r"installed \(pip install openpyxl\); or save the sheets "
                     r"as .csv or .parquet"):
    _read(tmp_path / "retail.xlsx")


def _run_cli(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "data_tools.prepare", *args],
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=600, check=False)


def test_online_retail_ii_prepares_with_the_default_flagfile(online_retail_path,
                                                             tmp_path):
  """Acceptance of issue 12: the II naming needs only --raw_path."""
  head = pd.read_parquet(online_retail_path).iloc[:5000]
  head.rename(columns=TO_II).to_parquet(tmp_path / "online_retail_II.parquet")
  head.to_parquet(tmp_path / "online_retail.parquet")
  result = _run_cli("--flagfile=configs/online_retail.flags",
                    f"--raw_path={tmp_path / 'online_retail_II.parquet'}",
                    f"--output_dir={tmp_path / 'ii'}")
  assert result.returncode == 0, result.stderr[-2000:]
  ii = schema.load_manifest(str(tmp_path / "ii"), verify_hashes=True)
  original = prepare.prepare(PrepareOptions(
      raw_path=str(tmp_path / "online_retail.parquet"), text_fields=(),
      output_dir=str(tmp_path / "original"))).manifest
  assert ii["text_dim"] == 384 and ii["num_sessions"] == original["num_sessions"]
  for name, digest in original["file_hashes"].items():  # shards and vocabulary
    assert ii["file_hashes"][name] == digest, name
