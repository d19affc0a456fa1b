"""benchmarks/weaken_text.py: a dataset copy whose item text carries less signal,
everything else byte for byte the same, verified like any prepared dataset."""

import os

import numpy as np
import pytest

from alterrec_tf.formats import schema
from tests import scripts, synthetic


@pytest.fixture(scope="module")
def weaken_text():
  return scripts.load_script("benchmarks/weaken_text.py")


def unit_rows(num_rows, dim, seed=1):
  rows = np.random.default_rng(seed).standard_normal((num_rows, dim))
  rows /= np.linalg.norm(rows, axis=1, keepdims=True)
  rows[0] = 0.0  # the padding row
  return rows.astype(np.float32)


def mean_cosine(a, b):
  a, b = a[1:].astype(np.float64), b[1:].astype(np.float64)
  return float(np.mean(np.sum(a * b, axis=1)
                       / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


@pytest.mark.parametrize("mix", [0.0, 0.5, 0.8, 1.0])
def test_the_mix_is_the_share_of_each_vectors_energy_that_is_noise(weaken_text, mix):
  table = unit_rows(400, 384)
  mixed = weaken_text.mix_with_noise(table, mix, seed=0)
  assert mixed.shape == table.shape and mixed.dtype == np.float32
  assert not mixed[0].any()  # padding stays zero
  # In 384 dimensions a random direction is nearly orthogonal to the row, so the
  # row keeps its norm and a cosine of sqrt(1 - mix) with the original.
  assert mean_cosine(mixed, table) == pytest.approx(np.sqrt(1 - mix), abs=0.01)
  np.testing.assert_allclose(np.linalg.norm(mixed[1:], axis=1), 1.0, atol=0.2)
  if mix == 0.0:
    np.testing.assert_array_equal(mixed, table)


def test_the_noise_is_fixed_by_its_seed(weaken_text):
  table = unit_rows(50, 32)
  np.testing.assert_array_equal(weaken_text.mix_with_noise(table, 0.5, seed=3),
                                weaken_text.mix_with_noise(table, 0.5, seed=3))
  assert not np.array_equal(weaken_text.mix_with_noise(table, 0.5, seed=3),
                            weaken_text.mix_with_noise(table, 0.5, seed=4))


def test_the_copy_changes_only_the_text_and_verifies(weaken_text, tmp_path):
  source, output = str(tmp_path / "source"), str(tmp_path / "weak")
  before = synthetic.write_dataset(source, num_items=40, num_sessions=30, text_dim=16)
  manifest = weaken_text.weaken(source, output, mix=0.7, seed=0)
  loaded = schema.load_manifest(output, verify_hashes=True)  # hashes match the files
  assert loaded == manifest
  text_file = before["files"]["text_embeddings"]
  for name, sha in before["file_hashes"].items():
    assert (loaded["file_hashes"][name] == sha) == (name != text_file), name
  assert loaded["content_hash"] != before["content_hash"]
  assert loaded["text_corruption"]["mix"] == 0.7
  assert loaded["text_corruption"]["source_content_hash"] == before["content_hash"]
  assert loaded["dataset_name"] == "synthetic_text_mix0.7"
  original = np.load(os.path.join(source, text_file))
  weakened = np.load(os.path.join(output, text_file))
  assert mean_cosine(weakened, original) < 0.9
  assert sorted(os.listdir(tmp_path)) == ["source", "weak"]  # no .partial left


def test_bad_requests_write_nothing(weaken_text, tmp_path):
  source = str(tmp_path / "source")
  synthetic.write_dataset(source, num_items=40, num_sessions=30, text_dim=16)
  with pytest.raises(ValueError, match="mix must lie in"):
    weaken_text.weaken(source, str(tmp_path / "bad_mix"), mix=1.5, seed=0)
  with pytest.raises(FileExistsError, match="exists"):
    weaken_text.weaken(source, source, mix=0.5, seed=0)
  no_text = str(tmp_path / "no_text")
  synthetic.write_dataset(no_text, num_items=40, num_sessions=30, text_dim=0)
  with pytest.raises(ValueError, match="no text table"):
    weaken_text.weaken(no_text, str(tmp_path / "out"), mix=0.5, seed=0)
  assert sorted(os.listdir(tmp_path)) == ["no_text", "source"]
