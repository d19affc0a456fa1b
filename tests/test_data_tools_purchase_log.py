"""Purchase-log readers (real Online Retail, synthetic Homedepot layout), filters, split."""

import os

import numpy as np
import pandas as pd
import pytest

from alterrec_tf.formats import schema
from data_tools import embed, filtering, prepare, splits
from data_tools import sessions as S
from data_tools.options import PrepareOptions
from data_tools.readers import purchase_log


@pytest.fixture(scope="module")
def retail(online_retail_path):
  """The real Online Retail file read, filtered and split with the defaults."""
  options = PrepareOptions(raw_path=online_retail_path, output_dir="unused")
  raw = purchase_log.read_online_retail(options)
  selected, rule, report = prepare.select_sessions(raw, options)
  return raw, selected, rule, report


@pytest.fixture(scope="module")
def clean_lines(online_retail_path):
  """Online Retail lines kept by the documented cleaning, computed independently."""
  table = pd.read_parquet(online_retail_path)
  keep = (~table["InvoiceNo"].str.startswith("C") & (table["Quantity"] > 0)
          & (table["UnitPrice"] > 0) & table["StockCode"].str[0].str.isdigit())
  return table[keep]


def test_online_retail_cleaning_counts(retail, clean_lines):
  raw, _, _, _ = retail
  assert raw.cleaning["rows_read"] == 541909
  assert raw.cleaning["rows_dropped_cancellations"] == 9288
  assert raw.cleaning["rows_kept"] == len(clean_lines)
  assert raw.cleaning["sessions_read"] == clean_lines["InvoiceNo"].nunique()
  assert len(raw.sessions) == clean_lines["InvoiceNo"].nunique()


def test_online_retail_sessions_follow_the_rules(retail, clean_lines):
  _, selected, _, _ = retail
  assert 15000 < len(selected) < 19773
  products = set(clean_lines["StockCode"])
  for items, session in zip(selected[S.ITEMS], selected[S.SESSION_ID]):
    assert not session.startswith(("C", "A"))
    assert len(items) >= 2 and len(set(items)) == len(items)
    assert all(item[0].isdigit() and item in products for item in items)
  counts = pd.Series([i for items in selected[S.ITEMS] for i in items]).value_counts()
  assert counts.min() >= 5  # every kept item is in >= min_item_count sessions
  assert not {"POST", "DOT", "M", "C2", "BANK CHARGES", "AMAZONFEE"} & set(counts.index)


def test_online_retail_session_items_in_line_order(retail, clean_lines):
  _, selected, _, _ = retail
  vocab = {i for items in selected[S.ITEMS] for i in items}
  session = selected[S.SESSION_ID].iloc[len(selected) // 2]
  lines = clean_lines[clean_lines["InvoiceNo"] == session]
  lines = lines.assign(row=range(len(lines))).sort_values(["InvoiceDate", "row"])
  expected = [c for c in dict.fromkeys(lines["StockCode"]) if c in vocab]
  assert selected.set_index(S.SESSION_ID).loc[session, S.ITEMS] == expected


def test_online_retail_titles_and_guests(retail):
  raw, selected, _, _ = retail
  assert raw.catalog.loc["85123A", "title"] == "WHITE HANGING HEART T-LIGHT HOLDER"
  assert raw.catalog.loc["22423", "title"] == "REGENCY CAKESTAND 3 TIER"
  assert not (raw.catalog["title"].isin(["", "Unknown"])).any()
  guests = selected[selected[S.USER_ID].str.startswith("guest-")]
  assert len(guests) > 500
  assert (guests[S.USER_ID] == "guest-" + guests[S.SESSION_ID]).all()


def test_online_retail_csv_form_reads_like_parquet(online_retail_path, tmp_path):
  head = pd.read_parquet(online_retail_path).iloc[:3000]
  head.to_csv(tmp_path / "retail.csv", index=False)
  head.to_parquet(tmp_path / "retail.parquet")
  read = lambda name: purchase_log.read_online_retail(
      PrepareOptions(raw_path=str(tmp_path / name), output_dir="unused"))
  from_csv, from_parquet = read("retail.csv"), read("retail.parquet")
  pd.testing.assert_frame_equal(from_csv.sessions, from_parquet.sessions)
  pd.testing.assert_frame_equal(from_csv.catalog, from_parquet.catalog)
  assert "17850" in set(from_csv.sessions[S.USER_ID])


def test_online_retail_bad_quantity_names_file_row_column(online_retail_path,
                                                          tmp_path):
  head = pd.read_parquet(online_retail_path).iloc[:20].astype({"Quantity": str})
  head.loc[6, "Quantity"] = "six"
  head.to_csv(tmp_path / "retail.csv", index=False)
  with pytest.raises(S.DataToolsError, match=r"retail.csv, row 7, column "
                     r"'Quantity': not a number: 'six'"):
    purchase_log.read_online_retail(
        PrepareOptions(raw_path=str(tmp_path / "retail.csv"), output_dir="unused"))


def test_online_retail_split_is_chronological_per_user(retail):
  _, selected, rule, _ = retail
  assert rule.startswith("per-user chronological")
  order = {"train": 0, "valid": 1, "test": 2}
  ordered = selected.sort_values([S.USER_ID, S.TIMESTAMP, S.SESSION_ID])
  codes = ordered[S.SPLIT].map(order)
  assert (codes.groupby(ordered[S.USER_ID]).diff().fillna(0) >= 0).all()
  times = ordered.groupby([S.USER_ID, S.SPLIT])[S.TIMESTAMP].agg(["min", "max"])
  times = times.unstack(S.SPLIT)
  for early, late in (("train", "valid"), ("valid", "test"), ("train", "test")):
    both = times[("max", early)].notna() & times[("min", late)].notna()
    assert (times.loc[both, ("max", early)] <= times.loc[both, ("min", late)]).all()
    assert both.sum() > 50  # the check is not vacuous


def test_online_retail_split_fractions(retail):
  _, selected, _, report = retail
  shares = selected[S.SPLIT].value_counts(normalize=True)
  assert abs(shares["test"] - 0.2) < 0.005 and abs(shares["valid"] - 0.1) < 0.005
  assert report["frequency_filter"]["iterations"] >= 1


def test_online_retail_guests_share_every_split(retail):
  """Guest and registered sessions are split in the same shares (issue 15)."""
  _, selected, _, _ = retail
  guest = S.is_guest(selected)
  assert guest.sum() > 1000
  guests = selected.loc[guest, S.SPLIT].value_counts(normalize=True)
  registered = selected.loc[~guest, S.SPLIT].value_counts(normalize=True)
  for split, fraction in (("train", 0.7), ("valid", 0.1), ("test", 0.2)):
    assert abs(guests[split] - registered[split]) < 0.01, split
    assert abs(guests[split] - fraction) < 0.01, split
  # The guests' training sessions are their oldest, their test sessions the newest.
  times = selected[guest].groupby(S.SPLIT)[S.TIMESTAMP].agg(["min", "max"])
  assert times.loc["train", "max"] <= times.loc["valid", "min"]
  assert times.loc["valid", "max"] <= times.loc["test", "min"]


def test_chronological_split_takes_most_recent_sessions_of_distinct_users():
  records = [{S.SESSION_ID: f"s{i}", S.USER_ID: user, S.TIMESTAMP: time,
              S.ITEMS: ["a", "b"], S.SPLIT: "", S.EVAL_START: 1}
             for i, (user, time) in enumerate(
                 [("u1", 1), ("u1", 2), ("u1", 3), ("u1", 4), ("u2", 5),
                  ("u2", 6), ("u3", 7), ("u4", 2), ("u4", 9)])]
  result = splits.chronological_user_split(S.make_sessions(records), 0.1, 0.2)
  split = dict(zip(result[S.SESSION_ID], result[S.SPLIT]))
  # rank 0 sessions: s3 (t4), s5 (t6), s6 (t7), s8 (t9); 9 sessions -> 2 test,
  # 1 validation, newest first.
  assert [s for s, v in split.items() if v == "test"] == ["s6", "s8"]
  assert [s for s, v in split.items() if v == "valid"] == ["s5"]


def _guest_records(times):
  return [{S.SESSION_ID: f"g{i}", S.USER_ID: S.guest_user_id(f"g{i}"),
           S.TIMESTAMP: time, S.ITEMS: ["a", "b"], S.SPLIT: "",
           S.EVAL_START: 1} for i, time in enumerate(times)]


def test_guests_are_split_by_time_with_the_same_fractions():
  """Guests ("" or guest-<session>) no longer all land in validation/test."""
  registered = [{S.SESSION_ID: f"s{i}", S.USER_ID: f"u{i % 3}", S.TIMESTAMP: i,
                 S.ITEMS: ["a", "b"], S.SPLIT: "", S.EVAL_START: 1}
                for i in range(20)]
  guests = _guest_records([5, 1, 9, 3, 7, 2, 8, 4, 6, 0])
  guests[4][S.USER_ID] = ""  # an unknown user is a guest too
  result = splits.chronological_user_split(S.make_sessions(registered + guests),
                                           0.1, 0.2)
  split = dict(zip(result[S.SESSION_ID], result[S.SPLIT]))
  # 10 guests: the 2 newest (t9 g2, t8 g6) test, the next (t7 g4) validation.
  assert sorted(s for s, v in split.items() if s.startswith("g") and v == "test") == [
      "g2", "g6"]
  assert [s for s, v in split.items() if s.startswith("g") and v == "valid"] == [
      "g4"]
  # 20 registered sessions: 4 test, 2 validation, as without guests.
  alone = splits.chronological_user_split(S.make_sessions(registered), 0.1, 0.2)
  assert (result[S.SPLIT][:20] == alone[S.SPLIT]).all()
  assert alone[S.SPLIT].value_counts().to_dict() == {"train": 14, "test": 4,
                                                     "valid": 2}


def test_guest_split_ties_are_broken_by_session_id():
  guests = _guest_records([3] * 10)
  result = splits.chronological_user_split(S.make_sessions(guests), 0.1, 0.2)
  split = dict(zip(result[S.SESSION_ID], result[S.SPLIT]))
  assert [s for s, v in split.items() if v == "test"] == ["g8", "g9"]
  assert [s for s, v in split.items() if v == "valid"] == ["g7"]


RETAIL_HEADER = ["InvoiceNo", "StockCode", "Description", "Quantity",
                 "InvoiceDate", "UnitPrice", "CustomerID", "Country"]


def _retail_lines(num_invoices=40, lines_per_invoice=3):
  """Invoices of 3 lines each; every other invoice is a guest's (no CustomerID)."""
  lines = []
  for invoice in range(num_invoices):
    customer = "" if invoice % 2 else str(12000 + invoice % 4)
    for line in range(lines_per_invoice):
      code = str(10000 + (invoice + line) % 7)
      lines.append([str(500000 + invoice), code, f"ITEM {code}", "1",
                    f"2011-01-{1 + invoice % 28:02d} 10:{line:02d}", "1.5",
                    customer, "United Kingdom"])
  return lines


def test_guest_invoices_stay_whole(tmp_path):
  path = tmp_path / "retail.csv"
  pd.DataFrame(_retail_lines(), columns=RETAIL_HEADER).to_csv(path, index=False)
  options = PrepareOptions(raw_path=str(path), output_dir="unused",
                           min_item_count=1)
  raw = purchase_log.read_online_retail(options)
  selected, _, _ = prepare.select_sessions(raw, options)
  guests = selected[S.is_guest(selected)]
  assert len(guests) == 20 and guests[S.SESSION_ID].is_unique
  assert set(guests[S.SPLIT]) == {"train", "valid", "test"}
  table = pd.read_csv(path, dtype=str)
  for session, items in zip(guests[S.SESSION_ID], guests[S.ITEMS]):
    assert items == list(table.loc[table["InvoiceNo"] == session, "StockCode"])
  assert guests[S.SPLIT].value_counts().to_dict() == {"train": 14, "test": 4,
                                                      "valid": 2}


def test_remap_eval_start():
  assert filtering.remap_eval_start([True, True, True], 1) == 1
  assert filtering.remap_eval_start([False, True, True], 1) == 1
  assert filtering.remap_eval_start([True, False, True, True], 3) == 2
  assert filtering.remap_eval_start([True, True, True, False], 3) == 0


def test_frequency_filter_repeats_until_stable():
  records = [{S.SESSION_ID: str(i), S.USER_ID: "", S.TIMESTAMP: 0,
              S.ITEMS: items, S.SPLIT: "train", S.EVAL_START: 1}
             for i, items in enumerate([["a", "b"], ["a", "c"], ["b", "c"],
                                        ["c", "d"], ["d", "e"]])]
  result, report = filtering.filter_rare_items(S.make_sessions(records), 2, 2)
  # e is rare -> ["d"] is dropped -> d becomes rare -> ["c", "d"] -> ["c"] dropped
  assert result[S.ITEMS].tolist() == [["a", "b"], ["a", "c"], ["b", "c"]]
  assert report["iterations"] == 2


HOMEDEPOT_LINES = [  # user, session, item, timestamp
    ("u1", "s1", "i1", "2020-01-01 10:00"), ("u1", "s1", "i2", "2020-01-01 10:01"),
    ("u1", "s1", "i1", "2020-01-01 10:02"), ("u1", "s2", "i2", "2020-01-02 09:00"),
    ("u1", "s2", "i3", "2020-01-02 09:01"), ("u1", "s2", "i4", "2020-01-02 09:02"),
    ("u1", "s3", "i3", "2020-01-03 09:00"), ("u1", "s3", "i1", "2020-01-03 09:01"),
    ("u2", "s4", "i4", "2020-01-01 11:00"), ("u2", "s4", "i1", "2020-01-01 11:01"),
    ("u2", "s5", "i4", "2020-01-04 09:05"), ("u2", "s5", "i2", "2020-01-04 09:00"),
    ("u2", "s5", "i5", "2020-01-04 09:01"),
]


def write_homedepot(folder, lines=HOMEDEPOT_LINES,
                    catalog_items=("i1", "i2", "i3", "i4", "i5")):
  """A tiny Homedepot-layout dataset; returns (interactions, catalogue) paths."""
  pd.DataFrame(lines, columns=["user_id", "session_id", "item_id", "timestamp"]
               ).to_csv(folder / "interactions.csv", index=False)
  pd.DataFrame({"item_id": list(catalog_items),
                "title": [f"title {i}" for i in catalog_items],
                "description": [f"description of {i}" for i in catalog_items],
                "taxonomy": ["home > tools"] * len(catalog_items)}
               ).to_csv(folder / "items.csv", index=False)
  return str(folder / "interactions.csv"), str(folder / "items.csv")


def test_homedepot_layout_reader(tmp_path):
  path, catalog = write_homedepot(tmp_path)
  options = PrepareOptions(raw_format="purchase_log", raw_path=path,
                           catalog_path=catalog, output_dir="unused",
                           text_fields=("title", "description", "taxonomy"))
  raw = purchase_log.read_purchase_log(options)
  got = raw.sessions.set_index(S.SESSION_ID)
  assert got.loc["s1", S.ITEMS] == ["i1", "i2"]  # the repeated i1 is dropped
  assert got.loc["s5", S.ITEMS] == ["i2", "i5", "i4"]  # ordered by time
  assert got.loc["s5", S.TIMESTAMP] == 1578128400  # 2020-01-04 09:00 UTC
  assert raw.sessions[S.SESSION_ID].tolist() == ["s1", "s4", "s2", "s3", "s5"]
  assert raw.catalog.loc["i3", "taxonomy"] == "home > tools"
  assert raw.item_origin["i5"] == S.Location(path, 13, "item_id")


def test_homedepot_session_of_two_users_is_an_error(tmp_path):
  lines = HOMEDEPOT_LINES[:4] + [("u2", "s2", "i3", "2020-01-02 09:01")]
  path, _ = write_homedepot(tmp_path, lines)
  options = PrepareOptions(raw_format="purchase_log", raw_path=path,
                           output_dir="unused", text_fields=())
  with pytest.raises(S.DataToolsError, match=r"interactions.csv, row 5, "
                     r"column 'user_id': session 's2' belongs to two users"):
    purchase_log.read_purchase_log(options)


def test_homedepot_bad_timestamp(tmp_path):
  lines = HOMEDEPOT_LINES[:2] + [("u1", "s1", "i3", "yesterday")]
  path, _ = write_homedepot(tmp_path, lines)
  options = PrepareOptions(raw_format="purchase_log", raw_path=path,
                           output_dir="unused", text_fields=())
  with pytest.raises(S.DataToolsError, match=r"interactions.csv, row 3, column "
                     r"'timestamp': cannot read timestamp 'yesterday'"):
    purchase_log.read_purchase_log(options)


def test_homedepot_missing_column(tmp_path):
  path = tmp_path / "interactions.csv"
  pd.DataFrame({"user_id": ["u"], "session_id": ["s"], "timestamp": [1]}).to_csv(
      path, index=False)
  options = PrepareOptions(raw_format="purchase_log", raw_path=str(path),
                           output_dir="unused", text_fields=())
  with pytest.raises(S.DataToolsError, match=r"interactions.csv, header, column "
                     r"'item_id': missing column"):
    purchase_log.read_purchase_log(options)


def test_homedepot_layout_end_to_end(tmp_path, monkeypatch, read_prepared,
                                     fake_encoder):
  """Hand-computed: s5 (newest of u2) is test, s3 (newest of u1) validation;
  i5 occurs only in the test session, so it is removed as unseen."""
  interactions, catalog = write_homedepot(tmp_path)
  monkeypatch.setattr(embed, "load_encoder", lambda name: fake_encoder)
  fields = ("title", "description", "taxonomy")
  result = prepare.prepare(PrepareOptions(
      raw_format="purchase_log", raw_path=interactions, catalog_path=catalog,
      output_dir=str(tmp_path / "out"), text_fields=fields, min_item_count=1))
  manifest, rows = read_prepared(result.output_dir)
  got = [(r["split"], r[S.SESSION_ID], r[S.USER_ID], r[S.ITEMS]) for r in rows]
  assert got == [("train", "s1", "u1", ["i1", "i2"]),
                 ("train", "s4", "u2", ["i4", "i1"]),
                 ("train", "s2", "u1", ["i2", "i3", "i4"]),
                 ("valid", "s3", "u1", ["i3", "i1"]),
                 ("test", "s5", "u2", ["i2", "i4"])]
  assert manifest["num_items"] == 5 and manifest["num_users"] == 2
  assert manifest["sessions_deduplicated"] is True
  assert manifest["guests"]["num_sessions"] == {"train": 0, "valid": 0, "test": 0}
  assert manifest["filters"]["unseen_items"]["unseen_items_removed"] == 1
  table = schema.load_text_embeddings(result.output_dir, manifest)
  texts = ["title i3", "description of i3", "home > tools"]
  np.testing.assert_allclose(table[3], fake_encoder.encode(texts).mean(axis=0),
                             rtol=1e-6)


def test_item_without_text_is_an_error(tmp_path):
  interactions, catalog = write_homedepot(tmp_path, catalog_items=("i1", "i2", "i4"))
  with pytest.raises(S.DataToolsError, match=r"interactions.csv, row 5, column "
                     r"'item_id': item 'i3' has no text in title"):
    prepare.prepare(PrepareOptions(
        raw_format="purchase_log", raw_path=interactions, catalog_path=catalog,
        output_dir=str(tmp_path / "out"), min_item_count=1))
  assert not os.path.exists(tmp_path / "out")
