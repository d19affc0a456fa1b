"""Baselines: NFRec's exact score split, the count-based floors, and one
baseline trained through the training CLI (every model goes through the
experiments CLI in test_experiments.py)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from alterrec_tf.config import TrainConfig
from alterrec_tf.data import windows as alter_data
from alterrec_tf.formats import schema
from alterrec_tf.models import baselines
from alterrec_tf.models.baselines import floors
from alterrec_tf.training import evaluation
from tests import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("synthetic_baselines"))
  manifest = synthetic.write_dataset(folder, num_items=60, num_sessions=80,
                                     max_session_length=25)
  return folder, manifest


def tiny_config(data_dir, **changes):
  return TrainConfig(data_dir=data_dir, embedding_dim=16, max_len=10, train_window_stride=5,
                     num_layers=1, m_max=1, batch_size=16, eval_batch_size=32,
                     verbose=0).replace(**changes)


def first_batch(data_dir, manifest, split, max_len, batch_size=32):
  windows = alter_data.load_split(data_dir, manifest, split, max_len, 1)
  return next(iter(windows.batches(batch_size)))


def numpy_prefix_rows(batch):
  """(window, position) of every scored prefix and its context (items 0..t)."""
  positions = np.argwhere(batch[alter_data.TARGET_MASK].numpy())
  items = batch[alter_data.ITEM_IDS].numpy()
  return positions, [items[b, :t + 1] for b, t in positions]


def write_sessions(folder, sessions_by_split, num_items):
  """A prepared dataset (no text) holding exactly the given sessions."""
  os.makedirs(folder, exist_ok=True)
  files = {"vocab": schema.VOCAB_FILE, "text_embeddings": None}
  for split, sessions in sessions_by_split.items():
    name = schema.shard_name(split, 0, 1)
    with tf.io.TFRecordWriter(os.path.join(folder, name)) as writer:
      for i, items in enumerate(sessions):
        writer.write(schema.make_example(items, f"{split}-{i}"))
    files[split] = [name]
  with open(os.path.join(folder, schema.VOCAB_FILE), "w", encoding="utf-8") as f:
    f.write("index\traw_item_id\ttitle\n0\t[PAD]\t\n")
    for i in range(1, num_items):
      f.write(f"{i}\tI{i}\titem {i}\n")
  hashes = {n: schema.file_sha256(os.path.join(folder, n)) for n in os.listdir(folder)}
  manifest = {"format_version": schema.FORMAT_VERSION, "dataset_name": "handmade",
              "num_items": num_items, "text_dim": 0, "files": files, "file_hashes": hashes,
              "content_hash": schema.content_hash(hashes)}
  with open(os.path.join(folder, schema.MANIFEST_FILE), "w", encoding="utf-8") as f:
    json.dump(manifest, f)
  return manifest


@pytest.mark.parametrize("fusion", ["sum", "concat"])
def test_nfrec_id_and_text_parts_sum_exactly_to_its_score(dataset, fusion):
  data_dir, manifest = dataset
  config = tiny_config(data_dir, model=f"nfrec_{fusion}")
  text = schema.load_text_embeddings(data_dir, manifest)
  model = baselines.build_baseline(config, manifest["num_items"], text, None)
  model.train_step(first_batch(data_dir, manifest, "train", config.max_len))  # move off init
  batch = first_batch(data_dir, manifest, "test", config.max_len)
  heads, _ = model.score_heads(batch)
  fused, id_part, text_part = (heads[h].numpy()[:, 1:] for h in ("fused", "id", "text"))
  scale = np.abs(fused).max()
  np.testing.assert_allclose(id_part + text_part, fused, rtol=0, atol=1e-5 * scale)

  # fused is the paper's y = Z_i^T q_s with q_s the mean of the prefix's Z rows
  x, h = (m.numpy() for m in model.item_parts(training=False))
  z = np.concatenate([x, h], axis=1) if fusion == "concat" else x + h
  assert z.shape[1] == (2 if fusion == "concat" else 1) * config.embedding_dim
  _, prefixes = numpy_prefix_rows(batch)
  q = np.stack([z[p[p > 0]].mean(axis=0) for p in prefixes])
  np.testing.assert_allclose((q @ z.T)[:, 1:], fused, rtol=0, atol=1e-5 * scale)


def test_nfrec_train_step_logs_the_cross_entropy_of_each_part(dataset):
  data_dir, manifest = dataset
  config = tiny_config(data_dir, model="nfrec_concat")
  text = schema.load_text_embeddings(data_dir, manifest)
  model = baselines.build_baseline(config, manifest["num_items"], text, None)
  before = [v.numpy().copy() for v in model.trainable_variables]
  logs = model.train_step(first_batch(data_dir, manifest, "train", config.max_len))
  assert set(logs) == {"loss", "id_loss", "text_loss"}
  assert all(math.isfinite(float(v)) and float(v) > 0 for v in logs.values())
  moved = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
  assert all(moved), "every weight of NFRec is trained by the one Adam"


def training_item_counts(files, num_items):
  """Numpy reference: occurrences of each item in the sessions of `files`."""
  counts = np.zeros(num_items, np.int64)
  for record in tf.data.TFRecordDataset(files):
    example = tf.train.Example.FromString(record.numpy())
    np.add.at(counts, np.array(example.features.feature["item_ids"].int64_list.value), 1)
  return counts


def build_floor(dataset, name):
  """A count-based floor built from the synthetic training split: (model, V, files)."""
  data_dir, manifest = dataset
  train_files = schema.split_files(data_dir, manifest, "train")
  model = baselines.build_baseline(tiny_config(data_dir, model=name), manifest["num_items"],
                                   None, train_files)
  return model, manifest["num_items"], train_files


def test_most_popular_ranks_every_prefix_by_training_counts(dataset):
  data_dir, manifest = dataset
  model, num_items, train_files = build_floor(dataset, "most_popular")
  assert not model.trainable_variables
  counts = training_item_counts(train_files, num_items)
  np.testing.assert_array_equal(model.counts.numpy(), counts.astype(np.float32))

  split = alter_data.load_split(data_dir, manifest, "test", 10, 1)
  _, ranks = evaluation.Evaluator(model)(split.batches(32), keep_ranks=True)
  targets = ranks["targets"]
  scores = np.tile(counts.astype(np.float64), (len(targets), 1))
  scores[:, 0] = -1e9
  expected = np.minimum(evaluation.full_ranking_ranks(scores, targets), 21)
  np.testing.assert_array_equal(ranks["fused"], expected)


def test_session_knn_counts_training_sessions_only(tmp_path):
  # items 5 and 6 both occur in training, but together only in valid and test
  sessions = {
      "train": [[1, 2, 3], [2, 3, 4], [1, 4, 2], [5, 1, 2], [6, 3, 4], [1, 2]],
      "valid": [[5, 6], [6, 5, 1]],
      "test": [[5, 6], [6, 5], [1, 2, 3]],
  }
  manifest = write_sessions(str(tmp_path), sessions, num_items=8)
  train_files = schema.split_files(str(tmp_path), manifest, "train")
  model = baselines.build_baseline(
      tiny_config(str(tmp_path), model="session_knn", max_len=4), 8, None, train_files)
  neighbours = model.neighbours.numpy()
  assert neighbours[5, 6] == 0.0 and neighbours[6, 5] == 0.0

  # brute force: j at distance d = 1..window after i weighs 1/d, rows normalised
  expected = np.zeros((8, 8))
  for items in sessions["train"]:
    for a, i in enumerate(items):
      for b, j in enumerate(items):
        if 0 < b - a <= 4:
          expected[i, j] += 1.0 / (b - a)
  expected /= np.maximum(expected.sum(axis=1, keepdims=True), 1e-12)
  np.testing.assert_allclose(neighbours, expected, rtol=1e-6, atol=1e-7)

  # prefix [5] -> 6: no vote, only the popularity tie-break
  batch = first_batch(str(tmp_path), manifest, "test", 4)
  heads, targets = model.score_heads(batch)
  counts = training_item_counts(train_files, 8)
  first = heads["fused"].numpy()[0]
  assert targets.numpy()[0] == 6
  np.testing.assert_allclose(first[6], floors.TIE_BREAK * counts[6] / counts.max(), rtol=1e-5)


def test_session_knn_scores_are_recency_weighted_votes(dataset):
  data_dir, manifest = dataset
  model, num_items, train_files = build_floor(dataset, "session_knn")
  neighbours = model.neighbours.numpy().astype(np.float64)
  popularity = model.popularity.numpy().astype(np.float64)
  batch = first_batch(data_dir, manifest, "test", 10)
  heads, _ = model.score_heads(batch)
  _, prefixes = numpy_prefix_rows(batch)
  expected = []
  for prefix in prefixes:
    weights = 1.0 / np.arange(len(prefix), 0, -1)  # oldest 1/t ... last 1
    expected.append(weights @ neighbours[prefix] + popularity)
  np.testing.assert_allclose(heads["fused"].numpy()[:, 1:], np.array(expected)[:, 1:],
                             rtol=1e-4, atol=1e-7)


def test_nfrec_trains_one_epoch_through_the_training_cli(dataset, tmp_path):
  data_dir, _ = dataset
  run_dir = tmp_path / "nfrec"
  command = [sys.executable, "-m", "alterrec_tf.train", f"--data_dir={data_dir}",
             f"--run_dir={run_dir}", "--model=nfrec_concat", "--m_max=1",
             "--embedding_dim=16", "--max_len=10", "--batch_size=16", "--verbose=0"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads((run_dir / "results.json").read_text())
  history = json.loads((run_dir / "history.json").read_text())
  assert len(history) == 1 and results["best_epoch"] == 1
  for key in ("train/loss", "train/id_loss", "train/text_loss", "test/id/hits@20",
              "test/text/hits@20", "test/fused/hits@20", "train_examples_per_second"):
    assert math.isfinite(history[0][key]), key
  assert "train/phase" not in history[0]
  for head in ("fused", "id", "text"):
    assert 0.0 <= results["test"][head]["hits@20"] <= 1.0
