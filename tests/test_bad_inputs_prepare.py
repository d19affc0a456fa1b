"""Bad inputs to `data_tools.prepare`, through its command line (issue 13, items 8-9).

Each case runs the command in a subprocess and checks the exit code, the one
`error:` line (or warning) and what is left on disk. The raw data are a small
synthetic Online Retail CSV; text is skipped (`--text_fields=`) except where
the case is about text.
"""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from alterrec_tf.formats import schema
from data_tools.options import PrepareOptions
from data_tools.sessions import DataToolsError
from tests.test_data_tools_recbole import _sequences, write_unisrec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
FILE_SIZE_LIMIT = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))"


def retail_csv(path, invoices=300, items=40, seed=0, descriptions=True):
  """An Online Retail CSV: `invoices` invoices of 2-6 distinct items each."""
  rng = np.random.default_rng(seed)
  rows = []
  for invoice in range(invoices):
    codes = rng.choice(items, size=rng.integers(2, 7), replace=False)
    for code in codes:
      rows.append((str(536000 + invoice), f"2{code:04d}",
                   f"ITEM NUMBER {code}" if descriptions else "", 2,
                   f"2010-12-{1 + invoice % 28:02d} 08:{invoice % 60:02d}", 1.5,
                   str(12000 + invoice % 50), "United Kingdom"))
  pd.DataFrame(rows, columns=["InvoiceNo", "StockCode", "Description", "Quantity",
                              "InvoiceDate", "UnitPrice", "CustomerID", "Country"]
               ).to_csv(path, index=False)
  return path


def prepare(raw_path, output_dir, *args, prelude="", timeout=300):
  argv = ["-m", "data_tools.prepare", "--raw_format=online_retail",
          f"--raw_path={raw_path}", f"--output_dir={output_dir}", "--min_item_count=1",
          "--text_fields=", "--num_shards=2", *map(str, args)]
  if prelude:
    argv = ["-c", f"{prelude}; import os, sys; os.execv(sys.executable, [sys.executable] + "
            "sys.argv[1:])", *argv]
  return subprocess.run([sys.executable, *argv], cwd=REPO, env=ENV, capture_output=True,
                        text=True, timeout=timeout, check=False)


def error_line(out, *words):
  assert out.returncode == 1, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, out.stderr[-3000:]
  for word in words:
    assert word in lines[0], (word, lines[0])
  return lines[0]


def siblings(output_dir):
  """What sits next to the output folder under its name (temporaries)."""
  parent, name = os.path.split(str(output_dir))
  return sorted(entry for entry in os.listdir(parent) if entry.startswith(name))


def test_a_full_disk_during_prepare_is_one_line_and_leaves_nothing(tmp_path):
  raw = retail_csv(tmp_path / "retail.csv", invoices=600)
  output_dir = tmp_path / "prepared"
  out = prepare(raw, output_dir, prelude=FILE_SIZE_LIMIT)
  error_line(out, str(output_dir), "no space left", "nothing was written", "MB free")
  assert siblings(output_dir) == []  # no output folder, no temporary folder


def test_a_byte_that_is_not_utf8_names_its_line(tmp_path):
  raw = retail_csv(tmp_path / "retail.csv")
  lines = raw.read_bytes().split(b"\n")
  lines[7] = lines[7].replace(b"ITEM", b"IT\xe9M", 1)  # a latin-1 e-acute
  raw.write_bytes(b"\n".join(lines))
  out = prepare(raw, tmp_path / "prepared")
  column = lines[7].index(b"\xe9") + 1
  error_line(out, str(raw), "line 8,", f"byte {column} ", "0xe9", "not UTF-8")
  assert siblings(tmp_path / "prepared") == []


def test_a_killed_prepares_temporary_folder_is_removed_by_the_next(tmp_path):
  raw = retail_csv(tmp_path / "retail.csv")
  output_dir = tmp_path / "prepared"
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  stale = tmp_path / f"prepared.tmp-{dead}"
  stale.mkdir()
  (stale / "vocab.tsv").write_text("half written")
  live = tmp_path / f"prepared.tmp-{os.getpid()}"  # this process runs: not stale
  live.mkdir()
  out = prepare(raw, output_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"removed {stale}" in out.stderr and "killed" in out.stderr
  assert not stale.exists() and live.exists()
  assert os.path.isfile(output_dir / schema.MANIFEST_FILE)


def test_norequire_text_counts_the_items_without_text(tmp_path):
  raw = tmp_path / "retail.csv"
  retail_csv(raw, invoices=120, items=12)
  table = pd.read_csv(raw, dtype=str)
  blank = table["StockCode"].isin(["20000", "20001", "20002"])
  table.loc[blank, "Description"] = ""
  table.to_csv(raw, index=False)
  output_dir = tmp_path / "prepared"
  out = prepare(raw, output_dir, "--text_fields=title", "--norequire_text")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "warning: 3 of 12 items have no text in title" in out.stderr
  manifest = schema.load_manifest(str(output_dir))
  assert manifest["num_items_without_text"] == 3
  required = prepare(raw, tmp_path / "refused", "--text_fields=title", "--require_text")
  error_line(required, "has no text in title", "3 such item(s)", "--norequire_text")


# --- data_tools.embed_items (issue 34) --------------------------------------------------------
def embed_items(*args):
  return subprocess.run([sys.executable, "-m", "data_tools.embed_items", *map(str, args)],
                        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
                        check=False)


def test_embed_items_names_the_catalogue_row_of_an_item_without_text(tmp_path):
  catalog = tmp_path / "new_items.csv"
  pd.DataFrame({"id": ["N1", "N2", "N3"], "title": ["red mug", "", "blue lamp"]}).to_csv(
      catalog, index=False)
  out = embed_items(f"--catalog={catalog}", f"--output={tmp_path / 'out'}",
                    "--text_fields=title")
  line = error_line(out, f"{catalog}, row 2: item 'N2' has no text in title",
                    "1 such item(s)", "add it to the catalogue")
  assert "--norequire_text" not in line and "--require_text" not in line  # not its flags
  assert not (tmp_path / "out").exists()


def test_embed_items_flags_go_through_the_one_error_path(tmp_path):
  out = embed_items(f"--output={tmp_path / 'out'}")
  error_line(out, "--catalog and --output are required")
  out = embed_items(f"--catalog={tmp_path / 'missing.csv'}", f"--output={tmp_path / 'out'}")
  error_line(out, str(tmp_path / "missing.csv"))
  assert not (tmp_path / "out").exists()


def test_a_missing_raw_path_is_named_before_reading(tmp_path):
  missing = str(tmp_path / "no_such.csv")
  with pytest.raises(DataToolsError, match=f"--raw_path={missing}: no such file or folder"):
    PrepareOptions(raw_path=missing, output_dir="out").check_raw_path()
  (tmp_path / "shop.train.inter").write_text("")
  PrepareOptions(raw_path=str(tmp_path / "shop"), output_dir="out").check_raw_path()  # prefix
  PrepareOptions(raw_path=str(tmp_path), output_dir="out").check_raw_path()


def test_beam_prepare_refuses_a_missing_raw_path_before_the_pipeline(tmp_path):
  pytest.importorskip("apache_beam")  # (an extra: make test installs it)
  missing = tmp_path / "no_such.csv"
  out = subprocess.run([sys.executable, "-m", "data_tools.beam_prepare",
                        "--raw_format=online_retail", f"--raw_path={missing}",
                        f"--output_dir={tmp_path / 'prepared'}", "--text_fields="],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
                       check=False)
  error_line(out, f"--raw_path={missing}", "no such file or folder")
  assert "apache_beam" not in out.stderr, out.stderr[-3000:]  # no Beam stack above it
  assert sorted(os.listdir(tmp_path)) == []


def test_online_retail_without_a_price_column_says_the_price_cleaning_was_skipped(tmp_path):
  raw = retail_csv(tmp_path / "retail.csv")
  table = pd.read_csv(raw, dtype=str)
  table.loc[3, "UnitPrice"] = "0"  # a stock adjustment: dropped with the column, kept without
  table.drop(columns=["UnitPrice"]).to_csv(tmp_path / "no_price.csv", index=False)
  table.to_csv(raw, index=False)
  out = prepare(tmp_path / "no_price.csv", tmp_path / "prepared")
  assert out.returncode == 0, out.stderr[-3000:]
  assert (f"warning: {tmp_path / 'no_price.csv'}: skipped: no UnitPrice / Price column, so "
          "lines with price <= 0") in out.stderr
  cleaning = schema.load_manifest(str(tmp_path / "prepared"))["filters"]["cleaning"]
  assert cleaning["non_positive_price"].startswith("skipped: no UnitPrice / Price column")
  assert "rows_dropped_non_positive_price" not in cleaning
  with_price = prepare(raw, tmp_path / "with_price")
  assert with_price.returncode == 0 and "UnitPrice / Price" not in with_price.stderr
  cleaning = schema.load_manifest(str(tmp_path / "with_price"))["filters"]["cleaning"]
  assert cleaning["rows_dropped_non_positive_price"] == 1
  assert "non_positive_price" not in cleaning


def test_an_empty_or_missing_item2index_is_reported_as_such(tmp_path):
  folder, _ = write_unisrec(tmp_path, _sequences())
  item_map = os.path.join(folder, "Mini.item2index")
  open(item_map, "w", encoding="utf-8").close()
  args = ["--raw_format=recbole", f"--raw_path={folder}", "--text_fields=", "--num_shards=1"]
  out = subprocess.run([sys.executable, "-m", "data_tools.prepare", *args,
                        f"--output_dir={tmp_path / 'prepared'}"], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=300, check=False)
  error_line(out, f"{item_map}: the file is empty", "original_id<TAB>index")
  os.remove(item_map)
  out = subprocess.run([sys.executable, "-m", "data_tools.prepare", *args,
                        "--text_keys=original", f"--output_dir={tmp_path / 'prepared'}"],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
                       check=False)
  error_line(out, f"{item_map}: no such file", "--text_keys=original")
  assert not (tmp_path / "prepared").exists()


def test_unwritable_output_parent_is_refused_before_the_input_is_read(tmp_path, monkeypatch):
  """Issue 34 (notes): prepare used to read the whole input before finding that it
  cannot write its output; the check now comes first (simulated: root may write
  anywhere, so the write check itself is made to fail)."""
  import tempfile

  from data_tools import prepare, readers

  raw = tmp_path / "raw.csv"
  raw.write_text("InvoiceNo,StockCode\n")
  read = []
  monkeypatch.setattr(readers, "read", lambda options: read.append(options))

  def refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied")

  monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
  with pytest.raises(DataToolsError, match=r"cannot write there \(Permission denied\)"):
    prepare.prepare(PrepareOptions(raw_path=str(raw),
                                   output_dir=str(tmp_path / "missing" / "out")))
  assert read == []  # nothing was read
  assert not (tmp_path / "missing").exists()
