"""End-to-end `data_tools.prepare`: real Online Retail subset, round trip, determinism,
atomic output, errors, command line, flags."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from absl import flags

from alterrec_tf import flagfiles
from alterrec_tf.formats import schema
from data_tools import embed, prepare
from data_tools import sessions as S
from data_tools.options import PrepareOptions, option_fields

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBSET_ROWS = 5000


@pytest.fixture(scope="module")
def subset(online_retail_path, tmp_path_factory):
  """The first rows of the real Online Retail file (about 300 invoices)."""
  path = tmp_path_factory.mktemp("raw") / "online_retail_head.parquet"
  pd.read_parquet(online_retail_path).iloc[:SUBSET_ROWS].to_parquet(path)
  return str(path)


@pytest.fixture(scope="module")
def with_text(subset, tmp_path_factory):
  """prepare() on the subset with title embeddings from the offline MiniLM."""
  out = tmp_path_factory.mktemp("prepared") / "with_text"
  return prepare.prepare(PrepareOptions(raw_path=subset, output_dir=str(out)))


def _frame(rows):
  return pd.DataFrame(rows)[["split", S.SESSION_ID, S.USER_ID, S.TIMESTAMP,
                             S.EVAL_START, S.ITEMS]]


def test_tfrecords_give_back_exactly_the_sessions(with_text, read_prepared):
  manifest, rows = read_prepared(with_text.output_dir)
  written = with_text.sessions.rename(columns={S.SPLIT: "split"})
  pd.testing.assert_frame_equal(_frame(rows), written[_frame(rows).columns])
  _, parallel = read_prepared(with_text.output_dir, parallel=True)
  key = lambda row: (row["split"], row[S.SESSION_ID])
  assert sorted(parallel, key=key) == sorted(rows, key=key)
  assert manifest["num_sessions"] == {
      split: sum(r["split"] == split for r in rows) for split in schema.SPLITS}


def test_written_sessions_are_the_clean_invoices(with_text, subset, read_prepared):
  """Independent check: a written session = its invoice's kept lines in vocab."""
  _, rows = read_prepared(with_text.output_dir)
  table = pd.read_parquet(subset)
  table = table[~table["InvoiceNo"].str.startswith("C") & (table["Quantity"] > 0)
                & (table["UnitPrice"] > 0) & table["StockCode"].str[0].str.isdigit()]
  vocab = set(with_text.vocab[1:])
  expected = {}
  for invoice, lines in table.groupby("InvoiceNo"):
    lines = lines.assign(row=lines.index).sort_values(["InvoiceDate", "row"])
    items = [c for c in dict.fromkeys(lines["StockCode"]) if c in vocab]
    if len(items) >= 2:
      expected[invoice] = items
  assert {r[S.SESSION_ID]: r[S.ITEMS] for r in rows} == expected
  customers = table.groupby("InvoiceNo")["CustomerID"].first()
  for row in rows:
    customer = customers[row[S.SESSION_ID]]
    assert row[S.USER_ID] == ("guest-" + row[S.SESSION_ID] if np.isnan(customer)
                              else str(int(customer)))


def test_manifest_counts_and_files(with_text, read_prepared):
  manifest, rows = read_prepared(with_text.output_dir)
  folder = with_text.output_dir
  assert manifest["num_items"] == len(schema.read_vocab(folder)) == len(with_text.vocab)
  assert schema.read_vocab(folder)[0] == [schema.PADDING_TOKEN, ""]
  for split in schema.SPLITS:
    mine = [r for r in rows if r["split"] == split]
    assert manifest["num_interactions"][split] == sum(len(r[S.ITEMS]) for r in mine)
    assert manifest["num_examples"][split] == sum(
        len(r[S.ITEMS]) - r[S.EVAL_START] for r in mine)
  assert manifest["num_users"] == len({r[S.USER_ID] for r in rows})
  assert manifest["sessions_deduplicated"] is True
  for split in schema.SPLITS:
    guests = [r for r in rows if r["split"] == split
              and r[S.USER_ID] == "guest-" + r[S.SESSION_ID]]
    assert manifest["guests"]["num_sessions"][split] == len(guests)
    assert manifest["guests"]["num_examples"][split] == sum(
        len(r[S.ITEMS]) - r[S.EVAL_START] for r in guests)
  assert manifest["eval_protocol"] == schema.EVAL_ALL_PREFIXES
  assert manifest["text_dim"] == 384 and manifest["text_fields"] == ["title"]
  assert manifest["flags"] == with_text.manifest["flags"]
  assert set(manifest["flags"]) == flagfiles.PREPARE_FLAG_NAMES
  assert sorted(os.listdir(folder)) == sorted(list(manifest["file_hashes"])
                                              + [schema.MANIFEST_FILE])
  assert manifest["content_hash"] == schema.content_hash(manifest["file_hashes"])
  table = schema.load_text_embeddings(folder, manifest)
  assert table.dtype == np.float32 and not table[0].any()


def test_text_table_rows_follow_the_vocabulary(with_text, text_encoder):
  folder = with_text.output_dir
  table = schema.load_text_embeddings(folder, schema.load_manifest(folder))
  vocab = schema.read_vocab(folder)
  for index in (1, len(vocab) // 2, len(vocab) - 1):
    expected = text_encoder.encode([vocab[index][1]], convert_to_numpy=True)[0]
    np.testing.assert_allclose(table[index], expected, atol=1e-5)


def test_rerun_gives_identical_bytes(with_text, subset, tmp_path):
  again = prepare.prepare(PrepareOptions(raw_path=subset,
                                         output_dir=str(tmp_path / "again")))
  assert again.manifest["content_hash"] == with_text.manifest["content_hash"]
  for name in with_text.manifest["file_hashes"]:
    with open(os.path.join(with_text.output_dir, name), "rb") as first, open(
        os.path.join(again.output_dir, name), "rb") as second:
      assert first.read() == second.read(), name


def test_records_are_canonical(with_text):
  """Sorted map keys make the bytes independent of the writing process."""
  files = schema.split_files(with_text.output_dir, with_text.manifest, "train")
  for record in tf.data.TFRecordDataset(files).as_numpy_iterator():
    canonical = tf.train.Example.FromString(record).SerializeToString(
        deterministic=True)
    assert record == canonical


def _run_cli(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "data_tools.prepare", *args],
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=300, check=False)


def test_command_line_matches_the_api(subset, tmp_path):
  result = _run_cli("--flagfile=configs/online_retail.flags", f"--raw_path={subset}",
                    "--text_fields=", f"--output_dir={tmp_path / 'cli'}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "sessions train/valid/test:" in result.stdout
  api = prepare.prepare(PrepareOptions(raw_path=subset, text_fields=(),
                                       output_dir=str(tmp_path / "api")))
  cli = schema.load_manifest(str(tmp_path / "cli"), verify_hashes=True)
  assert cli["content_hash"] == api.manifest["content_hash"]
  assert cli["dataset_name"] == "online_retail" and cli["text_dim"] == 0
  assert cli["files"]["text_embeddings"] is None


def test_command_line_error_names_file_and_column(online_retail_path, tmp_path):
  bad = tmp_path / "retail.csv"
  pd.read_parquet(online_retail_path).iloc[:50].drop(columns=["Quantity"]).to_csv(
      bad, index=False)
  result = _run_cli("--flagfile=configs/online_retail.flags", f"--raw_path={bad}",
                    f"--output_dir={tmp_path / 'out'}")
  assert result.returncode == 1
  assert f"error: {bad}, header, column 'Quantity': missing column" in result.stderr
  assert "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "out")


def _no_leftovers(folder):
  parent, name = os.path.split(str(folder))
  return [entry for entry in os.listdir(parent) if entry.startswith(name + ".")]


def test_failure_leaves_no_output(subset, tmp_path, monkeypatch):
  def broken(unused_name):
    raise RuntimeError("embedding failed")
  monkeypatch.setattr(embed, "load_encoder", broken)
  out = tmp_path / "out"
  with pytest.raises(RuntimeError, match="embedding failed"):
    prepare.prepare(PrepareOptions(raw_path=subset, output_dir=str(out)))
  assert not out.exists() and not _no_leftovers(out)


def test_failed_rerun_keeps_the_previous_output(subset, tmp_path, monkeypatch,
                                                fake_encoder):
  out = tmp_path / "out"
  monkeypatch.setattr(embed, "load_encoder", lambda name: fake_encoder)
  good = prepare.prepare(PrepareOptions(raw_path=subset, output_dir=str(out)))
  def broken(*unused_args, **unused_kwargs):
    raise RuntimeError("disk full")
  monkeypatch.setattr(embed, "item_text_table", broken)
  with pytest.raises(RuntimeError, match="disk full"):
    prepare.prepare(PrepareOptions(raw_path=subset, output_dir=str(out),
                                   min_item_count=2))
  manifest = schema.load_manifest(str(out), verify_hashes=True)
  assert manifest["content_hash"] == good.manifest["content_hash"]
  assert not _no_leftovers(out)


def test_refuses_to_replace_a_foreign_folder(subset, tmp_path):
  out = tmp_path / "notes"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  with pytest.raises(S.DataToolsError, match="holds no manifest.json; refusing"):
    prepare.prepare(PrepareOptions(raw_path=subset, output_dir=str(out),
                                   text_fields=()))
  assert os.listdir(out) == ["keep.txt"]


def test_empty_result_after_filtering(subset, tmp_path):
  with pytest.raises(S.DataToolsError, match=r"online_retail_head.parquet: no "
                     r"train/test/valid sessions left after filtering.*"
                     r"min_item_count=100000"):
    prepare.prepare(PrepareOptions(raw_path=subset, output_dir=str(tmp_path / "o"),
                                   text_fields=(), min_item_count=100000))
  assert not os.path.exists(tmp_path / "o")


def test_prepare_defines_exactly_the_shared_flag_names():
  defined = flags.FlagValues()
  prepare.define_flags(defined)
  names = {name for name in defined if name not in flags.FlagValues()}
  assert names == set(flagfiles.PREPARE_FLAG_NAMES)
  assert {field.name for field in option_fields()} == set(flagfiles.PREPARE_FLAG_NAMES)


@pytest.mark.parametrize("config", sorted(
    name for name in os.listdir(os.path.join(REPO_ROOT, "configs"))
    if name.endswith(".flags")))
def test_config_flagfiles_parse(config):
  defined = flags.FlagValues()
  prepare.define_flags(defined)
  path = os.path.join(REPO_ROOT, "configs", config)
  known = set(flagfiles.PREPARE_FLAG_NAMES) | prepare.training_flag_names()
  args = defined.read_flags_from_files([f"--flagfile={path}"], force_gnu=False)
  mine = [a for a in args if flagfiles._flag_name(a, known) in
          flagfiles.PREPARE_FLAG_NAMES]
  assert all(flagfiles._flag_name(a, known) in known for a in args)
  defined(["prepare"] + mine + ["--raw_path=x", "--output_dir=y"])
  prepare.options_from_flags(defined).validate()
