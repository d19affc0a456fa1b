"""Shared test fixtures: the real datasets in ../shared/datasets and small helpers."""

import os
import zlib

import numpy as np
import pytest

# Before any test imports TensorFlow: sets TF_USE_LEGACY_KERAS, which TFRS needs.
import alterrec_tf  # noqa: F401

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATASETS = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "datasets"))


def _require(path: str) -> str:
  if not os.path.exists(path):
    pytest.fail(f"{path} is missing: the real datasets must be at "
                "../shared/datasets (see its README.md)", pytrace=False)
  return path


@pytest.fixture(scope="session")
def online_retail_path() -> str:
  """The real UCI Online Retail parquet file."""
  return _require(os.path.join(SHARED_DATASETS, "online_retail",
                               "online_retail.parquet"))


@pytest.fixture(scope="session")
def amazon_m2_dir() -> str:
  """The folder of real Amazon-M2 task-2 test sessions and answers."""
  return _require(os.path.join(SHARED_DATASETS, "amazon_m2_task2_test"))


@pytest.fixture(scope="session")
def text_encoder():
  """The offline all-MiniLM-L6-v2 model, loaded once per test session."""
  from data_tools import embed
  return embed.load_encoder("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def read_prepared():
  """A function data_dir -> (manifest, sessions read back through tf.data)."""
  import tensorflow as tf

  from alterrec_tf.formats import schema

  def read(data_dir: str, parallel: bool = False):
    manifest = schema.load_manifest(data_dir, verify_hashes=True)
    vocab = schema.read_vocab(data_dir)
    rows = []
    for split in schema.SPLITS:
      files = schema.split_files(data_dir, manifest, split)
      if not files:
        continue
      dataset = tf.data.TFRecordDataset(files, num_parallel_reads=(
          len(files) if parallel else None)).batch(512).map(schema.parse_examples)
      for batch in dataset:
        for ids, session, user, time, start in zip(
            batch[schema.ITEM_IDS].to_list(), batch[schema.SESSION_ID].numpy(),
            batch[schema.USER_ID].numpy(), batch[schema.TIMESTAMP].numpy(),
            batch[schema.EVAL_START].numpy()):
          rows.append({"split": split, "session_id": session.decode(),
                       "user_id": user.decode(), "timestamp": int(time),
                       "eval_start": int(start),
                       "items": [vocab[i][0] for i in ids]})
    return manifest, rows

  return read


class FakeEncoder:
  """A deterministic stand-in for a sentence-transformers model (8-d)."""

  def encode(self, texts, **unused_kwargs):
    return np.stack([np.random.RandomState(zlib.crc32(t.encode())).rand(8)
                     for t in texts]).astype(np.float32)


@pytest.fixture
def fake_encoder() -> FakeEncoder:
  """A fast encoder for tests that check plumbing, not the model."""
  return FakeEncoder()


@pytest.fixture(scope="session")
def export_run(tmp_path_factory) -> dict:
  """A tiny trained two-tower run that the export tests share (trained once)."""
  from tests import export_fixture
  return export_fixture.train_tiny_run(str(tmp_path_factory.mktemp("export_data")),
                                       str(tmp_path_factory.mktemp("export_run")))
