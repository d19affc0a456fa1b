"""ReChorus layout (train/dev/test tables, .item2index, .text), written here the
way the LRD / ReChorus preprocessing lays them out: tab-separated despite the
.csv name, integer ids from 1, unix-second times, dev/test with a neg_items column."""

import numpy as np
import pytest

from alterrec_tf.formats import schema
from data_tools import embed, prepare
from data_tools import sessions as S
from data_tools.options import PrepareOptions
from data_tools.readers import rechorus

ASINS = {1: "B001", 2: "B002", 3: "B003", 4: "B004", 5: "B005", 6: "B006"}
TEXT = {"B001": "red stapler", "B002": "blue pen", "B003": "paper clips",
        "B004": "desk lamp", "B005": "ink refill", "B006": "spare stapler"}
# user u: train items in time order (file sorted by time, users interleaved)
TRAIN = [(1, 1, 100), (2, 2, 100), (1, 2, 200), (2, 3, 210), (1, 3, 300),
         (2, 2, 300),  # a repeated item: its first occurrence stays
         (3, 4, 300), (3, 1, 400)]
DEV = [(1, 4, 500), (2, 5, 500), (3, 5, 500)]
TEST = [(1, 5, 600), (2, 6, 600), (3, 6, 500)]  # user 3: dev and test at one time


def write_rechorus(folder, train=TRAIN, dev=DEV, test=TEST, item2index=True):
  def table(name, rows, negatives):
    with open(folder / name, "w", encoding="utf-8") as f:
      f.write("user_id\titem_id\ttime" + ("\tneg_items" if negatives else "") + "\n")
      for row in rows:
        f.write("\t".join(map(str, row)) + ("\t[3, 1, 2]" if negatives else "") + "\n")
  table("train.csv", train, False)
  table("dev.csv", dev, True)
  table("test.csv", test, True)
  if item2index:
    with open(folder / "Toy.item2index", "w", encoding="utf-8") as f:
      f.write("".join(f"{asin}\t{index}\n" for index, asin in ASINS.items()))
  with open(folder / "Toy.text", "w", encoding="utf-8") as f:
    f.write("id\ttext\n" + "".join(f"{asin}\t{text}\n" for asin, text in TEXT.items()))
  return str(folder)


def _options(folder, **kwargs):
  values = dict(raw_format="rechorus", raw_path=str(folder), output_dir="unused",
                text_fields=("text",), min_item_count=1)
  values.update(kwargs)
  return PrepareOptions(**values)


def _by_split(raw, split):
  rows = raw.sessions[raw.sessions[S.SPLIT] == split]
  return list(zip(rows[S.USER_ID], rows[S.ITEMS], rows[S.EVAL_START]))


def test_sessions_per_user_and_leave_one_out_rows(tmp_path):
  raw = rechorus.read_rechorus(_options(write_rechorus(tmp_path)))
  assert _by_split(raw, "train") == [
      ("1", ["B001", "B002", "B003"], 1), ("2", ["B002", "B003"], 1),
      ("3", ["B004", "B001"], 1)]
  # validation: the user's train items, then the dev item, scored there only
  assert _by_split(raw, "valid") == [
      ("1", ["B001", "B002", "B003", "B004"], 3), ("2", ["B002", "B003", "B005"], 2),
      ("3", ["B004", "B001", "B005"], 2)]
  # test: train items and the dev item, then the test item
  assert _by_split(raw, "test") == [
      ("1", ["B001", "B002", "B003", "B004", "B005"], 4),
      ("2", ["B002", "B003", "B005", "B006"], 3),
      ("3", ["B004", "B001", "B005", "B006"], 3)]
  assert raw.eval_protocol == schema.EVAL_LEAVE_ONE_OUT and raw.keep_eval_rows
  assert raw.rows_read == {"train": 8, "valid": 3, "test": 3}


def test_prepare_keeps_every_dev_and_test_row_with_text(tmp_path, monkeypatch,
                                                        read_prepared, fake_encoder):
  monkeypatch.setattr(embed, "load_encoder", lambda name: fake_encoder)
  # B006 is only a test target: it stays in the vocabulary, with its text.
  result = prepare.prepare(_options(write_rechorus(tmp_path),
                                    output_dir=str(tmp_path / "out")))
  manifest, rows = read_prepared(result.output_dir)
  assert manifest["num_sessions"]["valid"] == len(DEV)
  assert manifest["num_sessions"]["test"] == len(TEST)
  assert manifest["num_examples"]["test"] == len(TEST)
  assert "B006" in result.vocab
  table = schema.load_text_embeddings(result.output_dir, manifest)
  np.testing.assert_allclose(table[result.vocab.index("B006")],
                             fake_encoder.encode(["spare stapler"])[0])


def test_ids_without_item2index_are_the_csv_ids(tmp_path):
  folder = write_rechorus(tmp_path, item2index=False)
  raw = rechorus.read_rechorus(_options(folder, text_fields=()))
  assert _by_split(raw, "train")[0] == ("1", ["1", "2", "3"], 1)


@pytest.mark.parametrize("problem, message", [
    ("unknown_item", "dev.csv, row 2, column 'item_id': item id '9' is not in Toy.item2index"),
    ("bad_time", "train.csv, row 1, column 'time': time 'soon' is not a number"),
    ("empty_map", "Toy.item2index: the file is empty"),
    ("missing_test", "test.csv: no such file"),
])
def test_bad_input_names_file_row_and_column(tmp_path, problem, message):
  dev = [(1, 4, 500), (2, 9, 500), (3, 5, 500)] if problem == "unknown_item" else DEV
  train = [(1, 1, "soon")] + TRAIN[1:] if problem == "bad_time" else TRAIN
  folder = write_rechorus(tmp_path, train=train, dev=dev)
  if problem == "empty_map":
    (tmp_path / "Toy.item2index").write_text("")
  if problem == "missing_test":
    (tmp_path / "test.csv").unlink()
  with pytest.raises(S.DataToolsError, match=message.replace("(", r"\(")):
    rechorus.read_rechorus(_options(folder))
