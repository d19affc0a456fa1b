"""RecBole / UniSRec atomic files (synthetic: no such real files are available)."""

import os

import numpy as np
import pytest

from alterrec_tf.formats import schema
from data_tools import embed, filtering, prepare
from data_tools import sessions as S
from data_tools.options import PrepareOptions
from data_tools.readers import recbole

HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
TRAIN = [  # UniSRec style: every prefix of each user's training sequence
    ("u1", "a", "b"), ("u1", "a b", "c"), ("u1", "a b c", "d"),
    ("u2", "b", "c"), ("u2", "b c", "e"),
    ("u2", "c", "a"),  # not a prefix of u2's longest row -> its own session
    ("u3", "a d", "a"),  # a repeated item
]
VALID = [("u1", "a b c d", "e"), ("u2", "b c e", "d"), ("u3", "a d", "b")]
TEST = [("u1", "a b c d e", "c"), ("u2", "b c e d", "a"), ("u3", "a d b", "x")]
TEXT = [("a", "red mug"), ("b", "blue mug"), ("c", "green cup"), ("d", "tea pot"),
        ("e", "coffee pot"), ("x", "unseen thing")]


def write_atomic(folder, name="Toy", train=TRAIN, valid=VALID, test=TEST):
  for split, rows in (("train", train), ("valid", valid), ("test", test)):
    with open(folder / f"{name}.{split}.inter", "w", encoding="utf-8") as f:
      f.write(HEADER + "".join("\t".join(row) + "\n" for row in rows))
  with open(folder / f"{name}.text", "w", encoding="utf-8") as f:
    f.write("item_id:token\ttext:token_seq\n")
    f.write("".join(f"{item}\t{text}\n" for item, text in TEXT))
  return str(folder)


def _options(folder, **kwargs):
  values = dict(raw_format="recbole", raw_path=str(folder), output_dir="unused",
                text_fields=("text",), min_item_count=1)
  values.update(kwargs)
  return PrepareOptions(**values)


def test_training_sessions_are_rebuilt_per_user(tmp_path):
  raw = recbole.read_recbole(_options(write_atomic(tmp_path)))
  train = raw.sessions[raw.sessions[S.SPLIT] == "train"]
  got = list(zip(train[S.SESSION_ID], train[S.USER_ID], train[S.ITEMS],
                 train[S.EVAL_START]))
  assert got == [("Toy.train.inter:3", "u1", ["a", "b", "c", "d"], 1),
                 ("Toy.train.inter:5", "u2", ["b", "c", "e"], 1),
                 ("Toy.train.inter:6", "u2", ["c", "a"], 1),
                 ("Toy.train.inter:7", "u3", ["a", "d"], 1)]


def test_valid_and_test_rows_are_leave_one_out(tmp_path):
  raw = recbole.read_recbole(_options(write_atomic(tmp_path)))
  rest = raw.sessions[raw.sessions[S.SPLIT] != "train"]
  got = list(zip(rest[S.SPLIT], rest[S.ITEMS], rest[S.EVAL_START]))
  assert got[0] == ("valid", ["a", "b", "c", "d", "e"], 4)
  assert got[3] == ("test", ["a", "b", "d", "e", "c"], 4)  # c moved to the end
  assert raw.eval_protocol == schema.EVAL_LEAVE_ONE_OUT
  assert raw.catalog.loc["d", "text"] == "tea pot"


def test_prepare_keeps_the_protocol(tmp_path, monkeypatch, read_prepared,
                                    fake_encoder):
  monkeypatch.setattr(embed, "load_encoder", lambda name: fake_encoder)
  result = prepare.prepare(_options(write_atomic(tmp_path),
                                    output_dir=str(tmp_path / "out")))
  manifest, rows = read_prepared(result.output_dir)
  assert manifest["eval_protocol"] == schema.EVAL_LEAVE_ONE_OUT
  test = [r for r in rows if r["split"] == "test"]
  # u3's test target x never occurs in training: the session is dropped.
  assert [(r[S.ITEMS], r[S.EVAL_START]) for r in test] == [
      (["a", "b", "d", "e", "c"], 4), (["b", "c", "e", "d", "a"], 4)]
  assert manifest["num_examples"]["test"] == 2
  assert manifest["num_examples"]["valid"] == 3
  assert manifest["num_examples"]["train"] == 3 + 2 + 1 + 1
  assert "x" not in result.vocab
  table = schema.load_text_embeddings(result.output_dir, manifest)
  np.testing.assert_allclose(table[result.vocab.index("d")],
                             fake_encoder.encode(["tea pot"])[0])


def test_truncation_and_filtering_keep_the_target():
  sessions = S.make_sessions([
      {S.SESSION_ID: "s", S.USER_ID: "", S.TIMESTAMP: 0, S.ITEMS: list("abcdef"),
       S.SPLIT: "test", S.EVAL_START: 5}])
  truncated = filtering.truncate(sessions, 3)
  assert truncated[S.ITEMS][0] == ["d", "e", "f"] and truncated[S.EVAL_START][0] == 2
  dropped = filtering.drop_items(sessions, {"b"}, 2)
  assert dropped[S.ITEMS][0] == list("acdef") and dropped[S.EVAL_START][0] == 4
  assert filtering.drop_items(sessions, {"f"}, 2).empty


def test_bad_item_list_names_file_row_column(tmp_path):
  write_atomic(tmp_path, valid=VALID[:1] + [("u2", "['b', 'c']", "d")])
  with pytest.raises(S.DataToolsError, match=r"Toy.valid.inter, row 2, column "
                     r"'item_id_list': bad item id"):
    recbole.read_recbole(_options(tmp_path))


def test_missing_text_file_and_missing_files(tmp_path):
  write_atomic(tmp_path)
  os.remove(tmp_path / "Toy.text")
  with pytest.raises(S.DataToolsError, match=r"Toy.text: no such file"):
    recbole.read_recbole(_options(tmp_path))
  os.remove(tmp_path / "Toy.test.inter")
  with pytest.raises(S.DataToolsError, match=r"Toy.test.inter: no such file"):
    recbole.read_recbole(_options(tmp_path / "Toy.train.inter"))
