"""benchmarks/data_variant.py: controlled dataset copies (noisier item text, fewer
training sessions), everything else byte for byte the same, verified like any
prepared dataset."""

import os

import numpy as np
import pytest
import tensorflow as tf

from alterrec_tf.formats import schema
from tests import scripts, synthetic


@pytest.fixture(scope="module")
def variant():
  return scripts.load_script("benchmarks/data_variant.py")


@pytest.fixture
def source(tmp_path):
  folder = str(tmp_path / "source")
  return folder, synthetic.write_dataset(folder, num_items=40, num_sessions=60, text_dim=16)


def unit_rows(num_rows, dim, seed=1):
  rows = np.random.default_rng(seed).standard_normal((num_rows, dim))
  rows /= np.linalg.norm(rows, axis=1, keepdims=True)
  rows[0] = 0.0  # the padding row
  return rows.astype(np.float32)


def mean_cosine(a, b):
  a, b = a[1:].astype(np.float64), b[1:].astype(np.float64)
  return float(np.mean(np.sum(a * b, axis=1)
                       / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def sessions(folder, names):
  return [record for name in names
          for record in tf.data.TFRecordDataset(os.path.join(folder, name)).as_numpy_iterator()]


@pytest.mark.parametrize("mix", [0.0, 0.5, 0.8, 1.0])
def test_the_mix_is_the_share_of_each_vectors_energy_that_is_noise(variant, mix):
  table = unit_rows(400, 384)
  mixed = variant.mix_with_noise(table, mix, seed=0)
  assert mixed.shape == table.shape and mixed.dtype == np.float32
  assert not mixed[0].any()  # padding stays zero
  # In 384 dimensions a random direction is nearly orthogonal to the row, so the
  # row keeps its norm and a cosine of sqrt(1 - mix) with the original.
  assert mean_cosine(mixed, table) == pytest.approx(np.sqrt(1 - mix), abs=0.01)
  np.testing.assert_allclose(np.linalg.norm(mixed[1:], axis=1), 1.0, atol=0.2)
  if mix == 0.0:
    np.testing.assert_array_equal(mixed, table)


def test_the_noise_is_fixed_by_its_seed(variant):
  table = unit_rows(50, 32)
  np.testing.assert_array_equal(variant.mix_with_noise(table, 0.5, seed=3),
                                variant.mix_with_noise(table, 0.5, seed=3))
  assert not np.array_equal(variant.mix_with_noise(table, 0.5, seed=3),
                            variant.mix_with_noise(table, 0.5, seed=4))


def test_the_text_variant_changes_only_the_text_and_verifies(variant, source, tmp_path):
  folder, before = source
  output = str(tmp_path / "weak")
  manifest = variant.make_variant(folder, output, text_mix=0.7)
  loaded = schema.load_manifest(output, verify_hashes=True)  # hashes match the files
  assert loaded == manifest
  text_file = before["files"]["text_embeddings"]
  for name, sha in before["file_hashes"].items():
    assert (loaded["file_hashes"][name] == sha) == (name != text_file), name
  assert loaded["content_hash"] != before["content_hash"]
  assert loaded["variant"]["text_mix"] == 0.7
  assert loaded["variant"]["source_content_hash"] == before["content_hash"]
  assert loaded["dataset_name"] == "synthetic_text_mix0.7"
  weakened = np.load(os.path.join(output, text_file))
  assert mean_cosine(weakened, np.load(os.path.join(folder, text_file))) < 0.9
  assert sorted(os.listdir(tmp_path)) == ["source", "weak"]  # no .partial left


def test_the_train_variant_keeps_a_share_of_training_sessions_only(variant, source, tmp_path):
  folder, before = source
  output = str(tmp_path / "half")
  manifest = variant.make_variant(folder, output, train_share=0.5, seed=1)
  assert schema.load_manifest(output, verify_hashes=True) == manifest
  for split in ("valid", "test"):
    assert sessions(output, manifest["files"][split]) == sessions(folder, before["files"][split])
  kept = sessions(output, manifest["files"]["train"])
  original = sessions(folder, before["files"]["train"])
  assert 0.3 * len(original) < len(kept) < 0.7 * len(original)
  positions = [original.index(record) for record in kept]
  assert positions == sorted(positions)  # a subsequence, in order
  assert manifest["num_sessions"]["train"] == len(kept)
  assert manifest["text_dim"] == before["text_dim"]
  assert manifest["dataset_name"] == "synthetic_train0.5"


def test_shard_counts_are_the_manifests_when_everything_is_kept(variant, tmp_path):
  folder = str(tmp_path / "loo")
  synthetic.write_dataset(folder, num_items=30, num_sessions=20, text_dim=0,
                          eval_protocol=schema.EVAL_LEAVE_ONE_OUT)
  name = schema.shard_name("test", 0, 1)
  counts = variant.subsample_shard(os.path.join(folder, name), str(tmp_path / "copy"), 1.0,
                                   np.random.default_rng(0))
  lengths = [len(tf.train.Example.FromString(r).features.feature["item_ids"].int64_list.value)
             for r in sessions(folder, [name])]
  assert counts == {"sessions": len(lengths), "interactions": sum(lengths),
                    "examples": len(lengths)}  # leave-one-out: one scored prefix each


def test_bad_requests_write_nothing(variant, source, tmp_path):
  folder, _ = source
  with pytest.raises(ValueError, match="text_mix must lie in"):
    variant.make_variant(folder, str(tmp_path / "out"), text_mix=1.5)
  with pytest.raises(ValueError, match="train_share must lie in"):
    variant.make_variant(folder, str(tmp_path / "out"), train_share=0.0)
  with pytest.raises(ValueError, match="nothing to change"):
    variant.make_variant(folder, str(tmp_path / "out"))
  with pytest.raises(FileExistsError, match="exists"):
    variant.make_variant(folder, folder, text_mix=0.5)
  with pytest.raises(ValueError, match="keeps no training session"):  # after the copy
    variant.make_variant(folder, str(tmp_path / "out"), train_share=1e-9)
  no_text = str(tmp_path / "no_text")
  synthetic.write_dataset(no_text, num_items=40, num_sessions=30, text_dim=0)
  with pytest.raises(ValueError, match="no text table"):
    variant.make_variant(no_text, str(tmp_path / "out"), text_mix=0.5)
  assert sorted(os.listdir(tmp_path)) == ["no_text", "source"]
