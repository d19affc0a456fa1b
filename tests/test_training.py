"""The training run: CLI end to end, resume after interruption, data checks."""

import json
import math
import os
import subprocess
import sys

import pytest

from alterrec_tf import config as alter_config
from alterrec_tf import runs as alter_runs
from alterrec_tf.config import TrainConfig
from alterrec_tf.formats import schema
from alterrec_tf.training import callbacks as alter_callbacks
from alterrec_tf.training.trainer import train
from tests import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  folder = tmp_path_factory.mktemp("synthetic")
  synthetic.write_dataset(str(folder), num_items=80, num_sessions=120, max_session_length=30)
  return str(folder)


def tiny_config(data_dir, run_dir, **changes):
  return TrainConfig(data_dir=data_dir, run_dir=run_dir, embedding_dim=16, max_len=10,
                     train_window_stride=5, k1=2, k2=20, m_random=1, m_gap=1, m_max=4,
                     batch_size=16, eval_batch_size=64, verbose=0,
                     text_encoder="transformer", id_encoder="mean").replace(**changes)


def test_two_epoch_cli_run_writes_results_history_and_tensorboard(dataset, tmp_path):
  run_dir = tmp_path / "run"
  command = [sys.executable, "-m", "alterrec_tf.train", f"--data_dir={dataset}",
             f"--run_dir={run_dir}", "--m_max=2", "--m_random=1", "--embedding_dim=16",
             "--max_len=10", "--k1=2", "--k2=20", "--batch_size=16",
             "--floors=most_popular,transition"]
  # the default output, as a user sees it: no TensorFlow start-up lines, one line
  # per epoch, the table with the floors of the same split
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  for chatter in ("cuInit", "cuda", "absl::InitializeLog", "I0000", "E0000", "oneDNN"):
    assert chatter not in out.stderr + out.stdout, chatter
  epoch_lines = [line for line in out.stdout.splitlines() if line.startswith("epoch ")]
  assert len(epoch_lines) == 2, out.stdout
  assert epoch_lines[0].startswith("epoch 1/2 | id network, uniform negatives | valid H@20")
  assert epoch_lines[1].startswith("epoch 2/2 | text network, uniform negatives | valid H@20")
  assert all("fused " in line and "id " in line and "text " in line and " s eval" in line
             for line in epoch_lines)
  for head in ("fused", "id", "text"):
    assert f"| AlterRec | {head} |" in out.stdout
  assert "| MostPopular (floor) | - |" in out.stdout
  assert "| Transitions (1st order) (floor) | - |" in out.stdout
  floor = json.loads((run_dir / "floors" / "transition" / "results.json").read_text())
  assert floor["model"] == "transition" and floor["test"]["fused"]["hits@20"] > 0.0
  results = json.loads((run_dir / "results.json").read_text())
  history = json.loads((run_dir / "history.json").read_text())
  assert len(history) == 2 and results["best_epoch"] in (1, 2)
  for head in ("fused", "id", "text"):
    for metric in ("hits@10", "hits@20", "ndcg@10", "ndcg@20", "mrr@20"):
      value = results["test"][head][metric]
      assert math.isfinite(value) and 0.0 <= value <= 1.0
  assert results["test"]["fused"]["hits@20"] >= results["test"]["fused"]["hits@10"]
  assert history[0]["train/phase"] == 0.0 and history[1]["train/phase"] == 1.0
  assert (run_dir / alter_runs.BEST_WEIGHTS_FILE).exists()
  events = [f for _, _, files in os.walk(run_dir / "tb") for f in files if "tfevents" in f]
  assert events
  assert not (run_dir / alter_runs.BACKUP_DIR).exists()  # finished: backup removed


@pytest.mark.slow  # a minute or more on 2 cores: `make test-slow` (CI runs it)
def test_killed_run_resumes_and_ends_like_an_uninterrupted_one(dataset, tmp_path, monkeypatch):
  config = tiny_config(dataset, str(tmp_path / "full"))
  uninterrupted = train(config)

  original = alter_callbacks.DropoutReseed.on_epoch_begin

  def die_at_epoch_3(self, epoch, logs=None):
    if epoch == 2:
      raise KeyboardInterrupt("simulated kill")
    return original(self, epoch, logs)

  interrupted_dir = str(tmp_path / "killed")
  monkeypatch.setattr(alter_callbacks.DropoutReseed, "on_epoch_begin", die_at_epoch_3)
  with pytest.raises(KeyboardInterrupt):
    train(config.replace(run_dir=interrupted_dir))
  assert os.path.exists(os.path.join(interrupted_dir, alter_runs.BACKUP_DIR))
  monkeypatch.setattr(alter_callbacks.DropoutReseed, "on_epoch_begin", original)
  resumed = train(config.replace(run_dir=interrupted_dir))
  assert resumed["epochs_run"] == uninterrupted["epochs_run"] == 4
  assert resumed["best_epoch"] == uninterrupted["best_epoch"]
  assert resumed["test"] == uninterrupted["test"]
  assert resumed["valid"] == uninterrupted["valid"]


@pytest.mark.slow  # a minute or more on 2 cores: `make test-slow` (CI runs it)
def test_test_split_ranked_once_at_the_selected_epoch_matches_per_epoch_ranking(
    dataset, tmp_path):
  import numpy as np

  from alterrec_tf.training import evaluation
  every_epoch = train(tiny_config(dataset, str(tmp_path / "every")))
  once_dir = tmp_path / "once"
  once = train(tiny_config(dataset, str(once_dir), test_every_epoch=False),
               save_test_ranks=True)
  history = json.loads((once_dir / "history.json").read_text())
  assert not any(key.startswith("test/") for record in history for key in record)
  assert once["best_epoch"] == every_epoch["best_epoch"]
  assert once["valid"] == every_epoch["valid"]
  for head, metrics in every_epoch["test"].items():
    for metric, value in metrics.items():
      assert once["test"][head][metric] == pytest.approx(value, abs=1e-6), (head, metric)
  ranks = np.load(once_dir / "test_ranks.npz")
  assert set(ranks.files) == {"targets", "target_train_counts", "fused", "id", "text"}
  assert (ranks["target_train_counts"] >= 0).all()
  from_ranks = evaluation.metrics_from_ranks(ranks["fused"])
  assert from_ranks["hits@20"] == pytest.approx(once["test"]["fused"]["hits@20"], abs=1e-6)


def test_rerun_shows_a_finished_run_refuses_other_flags_and_overwrite_retrains(
    dataset, tmp_path):
  from alterrec_tf import config as alter_config
  config = tiny_config(dataset, str(tmp_path / "run"), m_max=2)
  first = train(config)
  history = tmp_path / "run" / "history.json"
  written = history.stat().st_mtime_ns
  again = train(config.replace(verbose=1, eval_batch_size=32))  # neutral settings only
  assert again == first and history.stat().st_mtime_ns == written  # nothing retrained
  with pytest.raises(alter_config.ConfigError, match=r"--embedding_dim=16 \(now 32\)"):
    train(config.replace(embedding_dim=32))
  replaced = train(config.replace(embedding_dim=32, m_max=1, overwrite=True))
  assert replaced["epochs_run"] == 1
  assert json.loads((tmp_path / "run" / "config.json").read_text())["embedding_dim"] == 32


def test_missing_data_is_a_one_line_error_that_says_how_to_prepare(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-m", "alterrec_tf.train",
                        f"--data_dir={tmp_path / 'nothing'}", f"--run_dir={tmp_path / 'r'}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert "data_tools.prepare" in out.stderr and "Traceback" not in out.stderr


def test_mismatched_data_is_refused(dataset, tmp_path):
  broken = tmp_path / "broken"
  synthetic.write_dataset(str(broken), num_items=40, num_sessions=20)
  manifest = json.loads((broken / schema.MANIFEST_FILE).read_text())
  manifest["format_version"] = schema.FORMAT_VERSION + 1
  (broken / schema.MANIFEST_FILE).write_text(json.dumps(manifest))
  with pytest.raises(schema.DataError, match="format_version"):
    train(tiny_config(str(broken), str(tmp_path / "r")))
  with pytest.raises(alter_config.ConfigError, match="k2"):
    train(tiny_config(dataset, str(tmp_path / "r2"), k2=500))
