"""RecBole / UniSRec atomic files (synthetic: no such real files are available).

The UniSRec files are written here exactly as the UniSRec / VQ-Rec downstream
sets lay them out: typed tab-separated headers, integer indices in the .inter
files, `original_id<TAB>index` mapping files without header, a `.text` keyed by
the original ids; training rows are every prefix of each user's training
sequence with the history capped (UniSRec: 50 items), so long users' later rows
are sliding windows.
"""

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
                 ("Toy.train.inter:7", "u3", ["d", "a"], 1)]  # target stays last


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
  # u3's test target x never occurs in training: the row is kept all the same.
  assert [(r[S.ITEMS], r[S.EVAL_START]) for r in test] == [
      (["a", "b", "d", "e", "c"], 4), (["b", "c", "e", "d", "a"], 4),
      (["a", "d", "b", "x"], 3)]
  assert manifest["num_examples"] == {"train": 7, "valid": 3, "test": 3}
  assert manifest["rows"] == {"read": {"train": 7, "valid": 3, "test": 3},
                              "scored": {"train": 7, "valid": 3, "test": 3}}
  assert manifest["num_items_without_training"] == 1
  assert manifest["filters"]["unseen_items"]["items_without_training"] == 1
  assert manifest["sessions_deduplicated"] is True
  assert "x" in result.vocab
  table = schema.load_text_embeddings(result.output_dir, manifest)
  np.testing.assert_allclose(table[result.vocab.index("d")],
                             fake_encoder.encode(["tea pot"])[0])
  np.testing.assert_allclose(table[result.vocab.index("x")],
                             fake_encoder.encode(["unseen thing"])[0])


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


# --- UniSRec / VQ-Rec downstream layout ---------------------------------------

def asin(number):
  return f"B{number:09d}"


def write_unisrec(folder, sequences, cap=50, name="Mini", text_keys="original",
                  extra_items=()):
  """Writes a UniSRec-layout folder from {user: [original item ids]}.

  Like UniSRec's leave-one-out: the last item of a sequence is the test target,
  the one before the validation target, the rest training; a training row per
  target position 1.. of the training sequence (the longest first), histories
  capped at `cap` items. Users and items are indexed from 0 in order of first
  appearance.

  Returns:
    (folder, {split: number of rows written}).
  """
  users, items = {}, {}
  for user, sequence in sequences.items():
    users.setdefault(user, str(len(users)))
    for item in sequence:
      items.setdefault(item, str(len(items)))
  rows = {"train": [], "valid": [], "test": []}
  for user, sequence in sequences.items():
    uid, seq = users[user], [items[item] for item in sequence]
    train, valid, test = seq[:-2], seq[-2], seq[-1]
    for target_index in range(1, len(train)):
      history = train[:-target_index][-cap:]
      rows["train"].append((uid, " ".join(history), train[-target_index]))
    rows["valid"].append((uid, " ".join(train[-cap:]), valid))
    rows["test"].append((uid, " ".join((train + [valid])[-cap:]), test))
  for split, split_rows in rows.items():
    with open(folder / f"{name}.{split}.inter", "w", encoding="utf-8") as f:
      f.write(HEADER + "".join("\t".join(row) + "\n" for row in split_rows))
  for suffix, mapping in ((".item2index", items), (".user2index", users)):
    with open(folder / f"{name}{suffix}", "w", encoding="utf-8") as f:
      f.write("".join(f"{key}\t{index}\n" for key, index in mapping.items()))
  with open(folder / f"{name}.text", "w", encoding="utf-8") as f:
    f.write("item_id:token\ttext:token_seq\n")
    for item in list(items) + list(extra_items):
      key = items.get(item, item) if text_keys == "index" else item
      f.write(f"{key}\t{item.lower()} gadget, \"deluxe\" edition.\n")
  return str(folder), {split: len(split_rows) for split, split_rows in rows.items()}


def _sequences(num_users=12, length=9, num_items=15, seed=3):
  rng = np.random.RandomState(seed)
  return {f"A{user:04d}": [asin(int(i)) for i in rng.choice(
      num_items, size=length + user % 4, replace=False)]
          for user in range(num_users)}


def test_unisrec_layout_maps_indices_to_original_ids(tmp_path):
  sequences = {"AUSER1": [asin(1), asin(2), asin(3), asin(4), asin(5)],
               "AUSER2": [asin(2), asin(3), asin(6), asin(7)]}
  folder, _ = write_unisrec(tmp_path, sequences)
  raw = recbole.read_recbole(_options(folder))
  got = {(row[S.SPLIT], row[S.USER_ID]): (row[S.ITEMS], row[S.EVAL_START])
         for _, row in raw.sessions.iterrows()}
  assert got[("train", "AUSER1")] == ([asin(1), asin(2), asin(3)], 1)
  assert got[("valid", "AUSER1")] == ([asin(1), asin(2), asin(3), asin(4)], 3)
  assert got[("test", "AUSER2")] == ([asin(2), asin(3), asin(6), asin(7)], 3)
  assert raw.catalog.loc[asin(6), "text"] == 'b000000006 gadget, "deluxe" edition.'
  assert raw.cleaning["layout"].startswith("unisrec")
  assert raw.item_origin[asin(7)] == S.Location(
      os.path.join(folder, "Mini.test.inter"), 2, "item_id")


def test_unisrec_text_keyed_by_index_is_accepted(tmp_path):
  folder, _ = write_unisrec(tmp_path, _sequences(), text_keys="index")
  raw = recbole.read_recbole(_options(folder))
  assert raw.catalog.index.str.startswith("B").all()
  assert raw.catalog.loc[asin(4), "text"].startswith("b000000004 gadget")


@pytest.mark.parametrize("text_keys", ["original", "index"])
def test_numeric_original_ids_are_never_guessed(tmp_path, text_keys):
  """Original ids 0..n-1 in another order than the indices: every text id is
  both an original id and an index, so "auto" refuses instead of giving items
  other items' text; the flag says which, and each item gets its own text."""
  permuted = {str(item): str((item * 3 + 1) % 8) for item in range(8)}
  sequences = {"u1": [permuted[str(i)] for i in (0, 1, 2, 3, 4)],
               "u2": [permuted[str(i)] for i in (5, 6, 7, 1)]}
  folder, _ = write_unisrec(tmp_path, sequences, text_keys=text_keys)
  with pytest.raises(S.DataToolsError, match="--text_keys=original or --text_keys=index"):
    recbole.read_recbole(_options(folder))
  raw = recbole.read_recbole(_options(folder, text_keys=text_keys))
  for item in permuted.values():
    assert raw.catalog.loc[item, "text"] == f'{item} gadget, "deluxe" edition.'


@pytest.mark.parametrize("cap", [50, 4])
def test_unisrec_folder_prepares_rows_in_rows_out(tmp_path, monkeypatch,
                                                  read_prepared, fake_encoder,
                                                  cap):
  """Acceptance of issue 12: no hand conversion; validation/test sessions =
  the files' rows; training scored prefixes = training rows, both when the
  rows are the prefixes of each user's sequence (cap 50) and when capped
  histories make later rows sliding windows (cap 4: one example per row, not
  every prefix of every window)."""
  sequences = _sequences()
  sequences["A9999"] = sequences["A0000"][:4] + [asin(77), asin(78)]
  folder, counts = write_unisrec(tmp_path, sequences, cap=cap)
  monkeypatch.setattr(embed, "load_encoder", lambda name: fake_encoder)
  result = prepare.prepare(PrepareOptions(
      raw_format="recbole", raw_path=folder, text_fields=("text",),
      output_dir=str(tmp_path / "out")))  # the default --min_item_count=5
  manifest, rows = read_prepared(result.output_dir)
  assert manifest["num_sessions"]["valid"] == counts["valid"]
  assert manifest["num_sessions"]["test"] == counts["test"]
  assert manifest["num_examples"] == counts
  assert manifest["rows"] == {"read": counts, "scored": counts}
  train = [r for r in rows if r["split"] == "train"]
  if cap == 50:  # one session per user, every prefix scored
    assert len(train) == len(sequences)
    assert all(r[S.EVAL_START] == 1 for r in train)
  else:
    assert len(train) > len(sequences)
  # asin(78) is only a test target and asin(77) only in validation/test rows:
  # both stay, with their text, as items without training occurrences.
  assert {asin(77), asin(78)} <= set(result.vocab)
  assert manifest["num_items_without_training"] == 2
  table = schema.load_text_embeddings(result.output_dir, manifest)
  np.testing.assert_allclose(
      table[result.vocab.index(asin(78))],
      fake_encoder.encode(['b000000078 gadget, "deluxe" edition.'])[0])


def test_sliding_windows_score_only_their_last_item(tmp_path):
  sequence = [asin(i) for i in range(1, 10)]  # training part: items 1..7
  folder, counts = write_unisrec(tmp_path, {"U": sequence}, cap=3)
  raw = recbole.read_recbole(_options(folder))
  train = raw.sessions[raw.sessions[S.SPLIT] == "train"]
  got = list(zip(train[S.ITEMS], train[S.EVAL_START]))
  # Rows (longest first): [4 5 6]->7, [3 4 5]->6, [2 3 4]->5, [1 2 3]->4,
  # [1 2]->3, [1]->2. Row 1 is the longest: it covers only itself.
  assert got == [([asin(i) for i in (4, 5, 6, 7)], 3),
                 ([asin(i) for i in (3, 4, 5, 6)], 3),
                 ([asin(i) for i in (2, 3, 4, 5)], 3),
                 ([asin(i) for i in (1, 2, 3, 4)], 3),
                 ([asin(i) for i in (1, 2, 3)], 2),
                 ([asin(i) for i in (1, 2)], 1)]
  assert sum(len(items) - start for items, start in got) == counts["train"] == 6


def test_gaps_duplicates_and_repeated_targets(tmp_path):
  train = [("u1", "a", "b"), ("u1", "a b c", "d"),  # prefix length 3 missing
           ("u1", "a b", "c"), ("u1", "a b", "c"),  # a second copy
           ("u2", "a b", "a"), ("u2", "a", "b"),    # u2's longest repeats a
           ("u3", "", "c")]                         # nothing to predict from
  write_atomic(tmp_path, train=train)
  raw = recbole.read_recbole(_options(tmp_path))
  sessions = raw.sessions[raw.sessions[S.SPLIT] == "train"]
  got = list(zip(sessions[S.SESSION_ID], sessions[S.ITEMS], sessions[S.EVAL_START]))
  assert got == [("Toy.train.inter:2", ["a", "b", "c", "d"], 1),
                 ("Toy.train.inter:4", ["a", "b", "c"], 2),
                 ("Toy.train.inter:5", ["a", "b"], 1),  # covers row 6 (a -> b)
                 ("Toy.train.inter:5", ["b", "a"], 1)]  # row 5 itself: a last
  assert raw.cleaning["rows_unscorable_train"] == 1
  assert raw.rows_read["train"] == 7


def test_eval_rows_survive_the_frequency_filter(tmp_path, monkeypatch,
                                                read_prepared, fake_encoder):
  """Rare items leave training sessions only; every validation/test row stays."""
  monkeypatch.setattr(embed, "load_encoder", lambda name: fake_encoder)
  # e is in 5 sessions (1 training session, 4 validation/test rows), x in 1.
  result = prepare.prepare(_options(write_atomic(tmp_path), min_item_count=6,
                                    output_dir=str(tmp_path / "out")))
  manifest, rows = read_prepared(result.output_dir)
  assert manifest["num_sessions"]["valid"] == len(VALID)
  assert manifest["num_sessions"]["test"] == len(TEST)
  assert [r[S.ITEMS] for r in rows if r["split"] == "valid"] == [
      ["a", "b", "c", "d", "e"], ["b", "c", "e", "d"], ["a", "d", "b"]]
  train = [r[S.ITEMS] for r in rows if r["split"] == "train"]
  assert ["b", "c"] in train and all("e" not in items for items in train)
  assert manifest["num_items_without_training"] == 2  # e and x


def test_unknown_index_and_bad_mapping_lines(tmp_path):
  folder, _ = write_unisrec(tmp_path, _sequences())
  with open(tmp_path / "Mini.valid.inter", "a", encoding="utf-8") as f:
    f.write("0\t1 2\t999\n")
  with pytest.raises(S.DataToolsError, match=r"Mini.valid.inter, row 13, column "
                     r"'item_id': item index '999' is not in Mini.item2index"):
    recbole.read_recbole(_options(folder))
  with open(tmp_path / "Mini.item2index", "a", encoding="utf-8") as f:
    f.write("B000000999 999\n")
  with pytest.raises(S.DataToolsError, match=r"Mini.item2index, line 16: "
                     r"expected 'original_id<TAB>index'"):
    recbole.read_recbole(_options(folder))
