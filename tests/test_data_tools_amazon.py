"""Amazon-M2 reader: the real task-2 files (IDs only), CSV string form, products."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from alterrec_tf.formats import schema
from data_tools import prepare
from data_tools import sessions as S
from data_tools.options import PrepareOptions
from data_tools.readers import amazon_m2

PUBLIC = "task2_public_test_sessions_test.parquet"
PUBLIC_GT = "task2_public_test_DONT_SHARE_gt_test.parquet"
PRIVATE = "task2_private_test_sessions_test.parquet"
PRIVATE_GT = "task2_private_test_DONT_SHARE_gt_test.parquet"


def _ids_only(raw_path, **kwargs):
  return PrepareOptions(raw_format="amazon_m2", raw_path=str(raw_path),
                        output_dir="unused", text_fields=(), require_text=False,
                        **kwargs)


@pytest.fixture(scope="module")
def french(amazon_m2_dir):
  return amazon_m2.read_amazon_m2(_ids_only(amazon_m2_dir, locale="FR"))


def test_real_files_are_paired_and_assigned(amazon_m2_dir):
  answers, roles = amazon_m2.find_files(amazon_m2_dir)
  names = {os.path.basename(k): os.path.basename(v) for k, v in answers.items()}
  assert names == {PUBLIC: PUBLIC_GT, PRIVATE: PRIVATE_GT}
  assert {os.path.basename(k): v for k, v in roles.items()} == {
      PUBLIC: "train", PRIVATE: "test"}


def test_real_sessions_are_prev_items_plus_answer(french, amazon_m2_dir):
  sessions = pd.read_parquet(os.path.join(amazon_m2_dir, PUBLIC))
  answers = pd.read_parquet(os.path.join(amazon_m2_dir, PUBLIC_GT))
  private = pd.read_parquet(os.path.join(amazon_m2_dir, PRIVATE))
  french_rows = np.flatnonzero(sessions["locale"] == "FR")
  assert len(french.sessions) == len(french_rows) + (private["locale"] == "FR").sum()
  got = french.sessions.set_index(S.SESSION_ID)
  for row in french_rows[[0, 1, len(french_rows) // 2, -1]]:
    expected = list(dict.fromkeys(list(sessions["prev_items"].iloc[row])
                                  + [answers["next_item"].iloc[row]]))
    assert got.loc[f"{PUBLIC}:{row + 1}", S.ITEMS] == expected


def test_real_split_holds_out_a_tenth_of_public(french):
  split = french.sessions.groupby(S.SPLIT)[S.SESSION_ID].agg(list)
  assert all(s.startswith(PRIVATE) for s in split["test"])
  assert all(s.startswith(PUBLIC) for s in split["train"] + split["valid"])
  share = len(split["valid"]) / (len(split["train"]) + len(split["valid"]))
  assert abs(share - 0.1) < 0.001
  assert french.eval_protocol == schema.EVAL_ALL_PREFIXES
  assert "train = " + PUBLIC in french.split_rule


def test_real_files_prepare_ids_only(amazon_m2_dir, tmp_path, read_prepared):
  options = PrepareOptions(raw_format="amazon_m2", raw_path=amazon_m2_dir,
                           output_dir=str(tmp_path / "es"), locale="ES",
                           text_fields=(), require_text=False)
  result = prepare.prepare(options)
  manifest, rows = read_prepared(result.output_dir)
  assert manifest["text_dim"] == 0 and manifest["files"]["text_embeddings"] is None
  assert not os.path.exists(os.path.join(result.output_dir,
                                         schema.TEXT_EMBEDDINGS_FILE))
  assert manifest["num_users"] is None
  assert all(n > 500 for n in manifest["num_sessions"].values())
  written = [(r["split"], r[S.SESSION_ID], r[S.ITEMS]) for r in rows]
  assert written == list(zip(result.sessions[S.SPLIT], result.sessions[S.SESSION_ID],
                             result.sessions[S.ITEMS]))


def _numpy_repr(items) -> str:
  return str(np.array(list(items)))


def test_csv_string_form_of_real_sessions(amazon_m2_dir, tmp_path):
  """The CSV form (numpy's "['B0..' 'B0..']", wrapped lines) parses the same."""
  (tmp_path / "csv").mkdir()
  (tmp_path / "parquet").mkdir()
  for name in (PUBLIC, PUBLIC_GT, PRIVATE, PRIVATE_GT):
    table = pd.read_parquet(os.path.join(amazon_m2_dir, name))
    table = table[table["locale"] == "IT"].iloc[:400]
    table.to_parquet(tmp_path / "parquet" / name)
    if "prev_items" in table:
      table["prev_items"] = table["prev_items"].map(_numpy_repr)
    table.to_csv(tmp_path / "csv" / name.replace(".parquet", ".csv"), index=False)
  assert any("\n" in value for value in pd.read_csv(
      tmp_path / "csv" / PUBLIC.replace(".parquet", ".csv"))["prev_items"])
  from_csv = amazon_m2.read_amazon_m2(_ids_only(tmp_path / "csv", locale="IT"))
  from_parquet = amazon_m2.read_amazon_m2(_ids_only(tmp_path / "parquet",
                                                    locale="IT"))
  csv_items = from_csv.sessions[S.ITEMS].tolist()
  assert csv_items == from_parquet.sessions[S.ITEMS].tolist()
  assert len(csv_items) == 800
  assert from_csv.sessions[S.SPLIT].tolist() == from_parquet.sessions[S.SPLIT].tolist()
  shutil.copy(tmp_path / "parquet" / PUBLIC, tmp_path / "csv")
  with pytest.raises(S.DataToolsError, match="same data as"):
    amazon_m2.find_files(str(tmp_path / "csv"))


@pytest.mark.parametrize("text, expected", [
    ("['B0A' 'B0B']", ["B0A", "B0B"]),
    ("['B0A' 'B0B'\n 'B0C']", ["B0A", "B0B", "B0C"]),
    ("['B0A', 'B0B']", ["B0A", "B0B"]),
    ("[]", []),
])
def test_parse_item_list(text, expected):
  assert amazon_m2.parse_item_list(text, "f.csv", 1, "prev_items") == expected


@pytest.mark.parametrize("text", ["B0A B0B", "['B0A' B0B]", "['B0A',, 'B0B']",
                                  "['B0A' 'B0B'", "", "['B0 A']"])
def test_parse_item_list_rejects_garbage(text):
  with pytest.raises(S.DataToolsError, match=r"f.csv, row 7, column 'prev_items'"):
    amazon_m2.parse_item_list(text, "f.csv", 7, "prev_items")


def _write_train_csv(folder, prev_items, next_items, locale="FR"):
  pd.DataFrame({"prev_items": prev_items, "next_item": next_items,
                "locale": [locale] * len(next_items)}).to_csv(
                    folder / "sessions_train.csv", index=False)
  pd.DataFrame({"prev_items": ["['A' 'B']"], "next_item": ["C"],
                "locale": [locale]}).to_csv(folder / "sessions_test.csv",
                                            index=False)


def test_unparseable_prev_items_names_file_row_column(tmp_path):
  _write_train_csv(tmp_path, ["['A' 'B']", "['A' 'C']", "A|B"], ["C", "B", "C"])
  with pytest.raises(S.DataToolsError, match=r"sessions_train.csv, row 3, column "
                     r"'prev_items': cannot parse the item list 'A\|B'"):
    amazon_m2.read_amazon_m2(_ids_only(tmp_path))


def test_products_requirement(tmp_path):
  _write_train_csv(tmp_path, ["['A' 'B']", "['A' 'D']", "['B' 'C']"],
                   ["C", "B", "A"])
  options = PrepareOptions(raw_format="amazon_m2", raw_path=str(tmp_path),
                           output_dir="unused", locale="FR",
                           text_fields=("title", "desc"), valid_fraction=0.0)
  with pytest.raises(S.DataToolsError, match="needs the products file"):
    amazon_m2.read_amazon_m2(options)
  pd.DataFrame({"id": ["A", "B", "C", "D", "A"], "locale": ["FR"] * 4 + ["DE"],
                "title": ["tA", "tB", "", "tD", "de"],
                "desc": ["", "dB", "", "", ""]}).to_csv(
                    tmp_path / "products_train.csv", index=False)
  raw = amazon_m2.read_amazon_m2(options)
  # C has no text in either field: sessions with C are dropped (paper rule).
  assert raw.sessions[S.ITEMS].tolist() == [["A", "D", "B"]]
  assert raw.catalog.loc["A", "title"] == "tA"
  assert raw.cleaning["sessions_dropped_item_without_text"] == 3
  shutil.copy(tmp_path / "products_train.csv", tmp_path / "products_2.csv")
  with pytest.raises(S.DataToolsError, match="several products files"):
    amazon_m2.read_amazon_m2(options)
