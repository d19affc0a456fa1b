"""Baselines: NFRec's exact score split and one baseline trained through the
training CLI (every model goes through the experiments CLI in
test_experiments.py; the count-based floors are in test_floors.py)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from alterrec_tf.config import TrainConfig
from alterrec_tf.formats import schema
from alterrec_tf.models import baselines
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






@pytest.mark.parametrize("fusion", ["sum", "concat"])
def test_nfrec_id_and_text_parts_sum_exactly_to_its_score(dataset, fusion):
  data_dir, manifest = dataset
  config = tiny_config(data_dir, model=f"nfrec_{fusion}")
  text = schema.load_text_embeddings(data_dir, manifest)
  model = baselines.build_baseline(config, manifest["num_items"], text, None)
  # move off init
  model.train_step(synthetic.first_batch(data_dir, manifest, "train", config.max_len))
  batch = synthetic.first_batch(data_dir, manifest, "test", config.max_len)
  heads, _ = model.score_heads(batch)
  fused, id_part, text_part = (heads[h].numpy()[:, 1:] for h in ("fused", "id", "text"))
  scale = np.abs(fused).max()
  np.testing.assert_allclose(id_part + text_part, fused, rtol=0, atol=1e-5 * scale)

  # fused is the paper's y = Z_i^T q_s with q_s the mean of the prefix's Z rows
  x, h = (m.numpy() for m in model.item_parts(training=False))
  z = np.concatenate([x, h], axis=1) if fusion == "concat" else x + h
  assert z.shape[1] == (2 if fusion == "concat" else 1) * config.embedding_dim
  _, prefixes = synthetic.numpy_prefix_rows(batch)
  q = np.stack([z[p[p > 0]].mean(axis=0) for p in prefixes])
  np.testing.assert_allclose((q @ z.T)[:, 1:], fused, rtol=0, atol=1e-5 * scale)


def test_nfrec_train_step_logs_the_cross_entropy_of_each_part(dataset):
  data_dir, manifest = dataset
  config = tiny_config(data_dir, model="nfrec_concat")
  text = schema.load_text_embeddings(data_dir, manifest)
  model = baselines.build_baseline(config, manifest["num_items"], text, None)
  before = [v.numpy().copy() for v in model.trainable_variables]
  logs = model.train_step(synthetic.first_batch(data_dir, manifest, "train", config.max_len))
  assert set(logs) == {"loss", "id_loss", "text_loss"}
  assert all(math.isfinite(float(v)) and float(v) > 0 for v in logs.values())
  moved = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
  assert all(moved), "every weight of NFRec is trained by the one Adam"


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
