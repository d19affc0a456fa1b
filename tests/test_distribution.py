"""Training under tf.distribute (`--distribution`): two worker processes, two
replicas in one process, and one mirrored device, each against the
single-process run with the same global batch.

Why the runs can be compared number for number: under a strategy every replica
trains on its rows of the same global batch (`training.distribution`) and the
optimizer sums the replicas' gradients, so the applied gradient is the
single-process one up to the order of float sums, wherever a step is a
deterministic function of the global batch. Uniform random negatives are not:
they are drawn per row from a stateless seed of (seed, step)
(`negatives.uniform_negatives`), so a replica's rows get other draws than the
same rows in the single-process batch; dropout masks likewise. `exact_config`
therefore has dropout 0 and no random-negative epoch: m_random=0, so every
AlterRec epoch takes the partner's hard negatives (its ranks k1..k2, a
deterministic top-k) with random_negative_share=0; SASRec's full softmax
samples nothing. An odd batch size (15) makes the replicas' shares unequal (one
is padded with an empty window). Tolerances: 1e-5 relative on losses (sums in
another order), 1e-6 on ranking metrics, and on weights 1e-5 relative plus 1e-4
absolute: a weight whose true gradient is zero (the attention key bias: softmax
ignores a shift shared by all keys) gets float noise as gradient, which Adam
turns into steps of ~1e-5 that differ with the order of the sums (measured:
1.7e-5 there, below 1.2e-7 on every other weight).

Adam hardly sees a gradient's scale, so equal weights would not reveal a wrong
loss scaling (e.g. replicas' gradients averaged instead of summed);
`two_replicas.gradient_check` compares the applied gradient itself (plain SGD).

Time: 271 s on the 2-core development machine while a training grid and another
benchmark shared it (load 4-5; 2.3 min of CPU), 129 s of it the two-worker run
(limit `WORKERS_TIMEOUT_S`).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from alterrec_tf import config as alter_config
from alterrec_tf import runs as alter_runs
from alterrec_tf.config import TrainConfig
from alterrec_tf.data import windows as alter_data
from alterrec_tf.training import cluster, distribution
from alterrec_tf.training.trainer import train
from tests import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS_TIMEOUT_S = 240  # both workers of the two-worker run, together
TIMINGS = ("train_seconds", "eval_seconds", "train_examples_per_second")


def exact_config(data_dir, run_dir, **changes):
  """A tiny run whose steps are deterministic functions of the global batch
  (module docstring): two epochs, ID then text tower, hard negatives, no dropout."""
  return TrainConfig(data_dir=data_dir, run_dir=run_dir, embedding_dim=16, max_len=10,
                     train_window_stride=5, k1=2, k2=20, m_random=0, m_gap=1, m_max=2,
                     random_negative_share=0.0, dropout=0.0, batch_size=15,
                     eval_batch_size=64, test_every_epoch=False, verbose=0,
                     text_encoder="transformer", id_encoder="mean").replace(**changes)


def read_run(run_dir):
  """(results, history, best weights {name: array}) of a finished run folder."""
  import h5py
  results = alter_runs.load_results(run_dir)
  history = alter_runs.read_json(os.path.join(run_dir, alter_runs.HISTORY_FILE))
  weights = {}
  with h5py.File(os.path.join(run_dir, alter_runs.BEST_WEIGHTS_FILE), "r") as f:
    f.visititems(lambda name, item: weights.__setitem__(name, np.asarray(item))
                 if isinstance(item, h5py.Dataset) else None)
  return results, history, weights


def assert_same_training(got, want):
  """Two (results, history, weights) agree within float tolerance."""
  (got_results, got_history, got_weights), (results, history, weights) = got, want
  assert len(got_history) == len(history)
  for got_record, record in zip(got_history, history):
    assert set(got_record) == set(record)
    for key, value in record.items():
      if key not in TIMINGS:
        assert got_record[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (record["epoch"], key)
  assert got_results["best_epoch"] == results["best_epoch"]
  for head, metrics in results["test"].items():
    for metric, value in metrics.items():
      assert got_results["test"][head][metric] == pytest.approx(value, abs=1e-6), (head, metric)
  assert set(got_weights) == set(weights)
  for name, value in weights.items():
    np.testing.assert_allclose(np.asarray(got_weights[name]), value, rtol=1e-5, atol=1e-4,
                               err_msg=name)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  folder = tmp_path_factory.mktemp("synthetic")
  synthetic.write_dataset(str(folder), num_items=80, num_sessions=120, max_session_length=30)
  return str(folder)


@pytest.fixture(scope="module")
def single_process(dataset, tmp_path_factory):
  """AlterRec without a strategy: (results, history, best weights)."""
  run_dir = str(tmp_path_factory.mktemp("none"))
  train(exact_config(dataset, run_dir))
  return read_run(run_dir)


@pytest.mark.slow  # a minute or more on 2 cores: `make test-slow` (CI runs it)
def test_two_workers_train_like_one_process_and_only_the_chief_writes(
    dataset, single_process, tmp_path):
  run_dir = tmp_path / "run"
  command = [sys.executable, "-m", "alterrec_tf.train"] + exact_config(
      dataset, str(run_dir), distribution="multi_worker").to_flags()
  workers = []
  for tf_config in cluster.local_tf_configs(2):
    env = dict(os.environ, TF_CONFIG=tf_config, TF_CPP_MIN_LOG_LEVEL="3")
    workers.append(subprocess.Popen(command, cwd=REPO, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
  try:
    outputs = [worker.communicate(timeout=WORKERS_TIMEOUT_S)[0] for worker in workers]
  finally:
    for worker in workers:  # (after a timeout: neither is left running)
      if worker.poll() is None:
        worker.kill()
        worker.communicate()
  for worker, output in zip(workers, outputs):
    assert worker.returncode == 0, output[-3000:]
    assert "| fused |" in output
  assert_same_training(read_run(str(run_dir)), single_process)
  assert sorted(os.listdir(run_dir)) == sorted([  # the chief's files, nobody else's
      alter_runs.CONFIG_FILE, alter_runs.HISTORY_FILE, alter_runs.BEST_WEIGHTS_FILE,
      alter_runs.RESULTS_FILE, alter_runs.HASHES_FILE, alter_runs.TENSORBOARD_DIR])
  assert alter_runs.load_config(str(run_dir)).distribution == "multi_worker"


def test_mirrored_on_one_device_trains_like_no_strategy(dataset, single_process, tmp_path):
  run_dir = str(tmp_path / "mirrored")
  train(exact_config(dataset, run_dir, distribution="mirrored"))
  assert_same_training(read_run(run_dir), single_process)


@pytest.mark.slow  # a minute or more on 2 cores: `make test-slow` (CI runs it)
def test_two_replicas_sum_to_the_one_process_step_and_the_frozen_tower_stays_bit_identical(
    dataset, tmp_path):
  out = tmp_path / "two_replicas.json"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  done = subprocess.run([sys.executable, "-m", "tests.two_replicas", dataset, str(out)],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=WORKERS_TIMEOUT_S)
  assert done.returncode == 0, done.stderr[-3000:]
  checks = json.loads(out.read_text())
  assert checks["replicas"] == 2
  gradient = checks["gradient"]  # the replicas' summed gradient is the single-process one
  assert gradient["loss"][1] == pytest.approx(gradient["loss"][0], rel=1e-6)
  assert gradient["largest_difference"] <= 1e-5 * gradient["largest_gradient"], gradient
  assert [step["trained"] for step in checks["towers"]] == ["id", "text"]
  for step in checks["towers"]:
    assert step["trained_moved"] and step["copies_equal"], step
    assert step["frozen_unchanged"], step  # weights and Adam state, every copy, bit for bit
  sasrec = checks["sasrec"]  # a full-softmax baseline, Keras train steps
  np.testing.assert_allclose(sasrec["loss"]["mirrored"], sasrec["loss"]["none"], rtol=1e-5)
  assert sasrec["largest_difference"] <= 1e-4, sasrec


def test_replica_slices_cover_the_global_batch_with_empty_windows_as_padding():
  rows = np.arange(1, 6)[:, None] * np.ones([1, 4], np.int32)  # 5 windows of 4 items
  batch = {alter_data.ITEM_IDS: tf.constant(rows, tf.int32),
           alter_data.TARGET_IDS: tf.constant(rows + 1, tf.int32),
           alter_data.TARGET_MASK: tf.ones([5, 4], tf.bool)}
  slices = [distribution.replica_slice(batch, r, 2) for r in range(2)]
  assert [s[alter_data.ITEM_IDS].shape.as_list() for s in slices] == [[3, 4], [3, 4]]
  joined = {key: tf.concat([s[key] for s in slices], 0).numpy() for key in batch}
  np.testing.assert_array_equal(joined[alter_data.ITEM_IDS][:5], rows)
  np.testing.assert_array_equal(joined[alter_data.ITEM_IDS][5], 0)  # padding window:
  assert not joined[alter_data.TARGET_MASK][5].any()  # nothing scored
  last = distribution.replica_slice(batch, 2, 3)[alter_data.ITEM_IDS].numpy()  # 3 replicas
  np.testing.assert_array_equal(last, [rows[4], np.zeros(4)])  # rows 5-6 of 5: one padded


def test_multi_worker_needs_a_valid_tf_config():
  with pytest.raises(alter_config.ConfigError, match="TF_CONFIG.*not set"):
    cluster.is_chief("multi_worker", environ={})
  with pytest.raises(alter_config.ConfigError, match="not JSON"):
    cluster.is_chief("multi_worker", environ={"TF_CONFIG": "{cluster"})
  workers = {"worker": ["localhost:1", "localhost:2"]}
  with pytest.raises(alter_config.ConfigError, match="task index 2"):
    cluster.is_chief("multi_worker", environ={"TF_CONFIG": json.dumps(
        {"cluster": workers, "task": {"type": "worker", "index": 2}})})
  for index, chief in ((0, True), (1, False)):
    environ = {"TF_CONFIG": json.dumps({"cluster": workers,
                                        "task": {"type": "worker", "index": index}})}
    assert cluster.is_chief("multi_worker", environ=environ) is chief
  assert cluster.is_chief("none", environ={})
  with pytest.raises(alter_config.ConfigError, match="loss_weighting=prefix"):
    alter_config.check_flags(TrainConfig(distribution="mirrored", loss_weighting="batch"))


def test_multi_worker_without_tf_config_is_a_one_line_error(dataset, tmp_path):
  env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
  out = subprocess.run([sys.executable, "-m", "alterrec_tf.train", f"--data_dir={dataset}",
                        f"--run_dir={tmp_path / 'r'}", "--distribution=multi_worker"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1
  assert "TF_CONFIG" in out.stderr and "Traceback" not in out.stderr


# --- cluster start-up (--cluster_timeout_s) -------------------------------------------
def start_worker(dataset, run_dir, workers, index=0, *flags):
  """`alterrec_tf.train` as worker `index` of a cluster of `workers` ("host:port")."""
  tf_config = json.dumps({"cluster": {"worker": workers},
                          "task": {"type": "worker", "index": index}})
  env = dict(os.environ, TF_CONFIG=tf_config, TF_CPP_MIN_LOG_LEVEL="3")
  command = [sys.executable, "-m", "alterrec_tf.train"] + exact_config(
      dataset, str(run_dir), distribution="multi_worker").to_flags()
  return subprocess.Popen(command + list(flags), cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def error_lines(stderr):
  """stderr's lines, without TensorFlow's C++ start-up log."""
  return [line for line in stderr.splitlines()
          if line and not line.startswith(("WARNING: All log", "I0000", "E0000", "W0000"))]


def wait_until_waiting(worker):
  """Reads the worker's stdout up to its "waiting ..." line; returns that line."""
  for line in worker.stdout:
    if line.startswith("waiting up to"):
      return line
  raise AssertionError(worker.communicate(timeout=30)[1][-3000:])


def finish(worker, timeout):
  try:
    return worker.communicate(timeout=timeout)
  finally:
    if worker.poll() is None:
      worker.kill()
      worker.communicate()


def test_an_unresolvable_worker_is_refused_before_tensorflow_starts(dataset, tmp_path):
  run_dir = tmp_path / "run"
  worker = start_worker(dataset, run_dir, [f"localhost:{free_port()}", "nohost.invalid:2222"])
  _, stderr = finish(worker, 120)
  assert worker.returncode == 1
  assert len(error_lines(stderr)) == 1, stderr
  assert "worker 1 (nohost.invalid:2222)" in stderr and "does not resolve" in stderr
  assert "Traceback" not in stderr and not run_dir.exists()


def test_a_busy_own_port_is_refused(dataset, tmp_path):
  run_dir = tmp_path / "run"
  with socket.socket() as busy:
    busy.bind(("", 0))
    busy.listen()
    port = busy.getsockname()[1]
    worker = start_worker(dataset, run_dir, [f"localhost:{port}", f"localhost:{free_port()}"])
    _, stderr = finish(worker, 120)
  assert worker.returncode == 1
  assert len(error_lines(stderr)) == 1, stderr
  assert f"worker 0 (localhost:{port}) is this process" in stderr
  assert "cannot be bound" in stderr and not run_dir.exists()


def test_a_worker_whose_peer_never_starts_ends_at_the_timeout(dataset, tmp_path):
  run_dir = tmp_path / "run"
  peer = f"localhost:{free_port()}"
  worker = start_worker(dataset, run_dir, [f"localhost:{free_port()}", peer], 0,
                        "--cluster_timeout_s=15")
  assert peer in wait_until_waiting(worker)
  waited = time.monotonic()
  _, stderr = finish(worker, 60)
  waited = time.monotonic() - waited
  assert worker.returncode == 1, stderr
  assert error_lines(stderr) == [
      "error: the cluster of TF_CONFIG did not start within --cluster_timeout_s=15: not "
      f"reached: worker 1 ({peer}); start every worker (one process each, the same TF_CONFIG "
      "cluster), check that their ports are open between the machines, or raise "
      "--cluster_timeout_s"], stderr
  assert 13 < waited < 25, waited
  assert not run_dir.exists()  # the empty run folder the command made is gone


def test_sigterm_ends_the_wait_for_the_cluster(dataset, tmp_path):
  run_dir = tmp_path / "run"
  peer = f"localhost:{free_port()}"
  worker = start_worker(dataset, run_dir, [f"localhost:{free_port()}", peer])
  wait_until_waiting(worker)
  worker.send_signal(signal.SIGTERM)
  stopped = time.monotonic()
  _, stderr = finish(worker, 30)
  assert time.monotonic() - stopped < 8  # measured 3.5 s at load 9 (exit with TF loaded)
  assert worker.returncode == 1
  lines = error_lines(stderr)
  assert len(lines) == 1 and lines[0].startswith("error: stopped by SIGTERM"), stderr
  assert f"not reached: worker 1 ({peer})" in lines[0] and not run_dir.exists()


def test_a_peer_that_answers_but_never_joins_is_ended_by_the_watchdog(dataset, tmp_path):
  run_dir = tmp_path / "run"
  with socket.socket() as peer:  # answers on the port, speaks no gRPC
    peer.bind(("localhost", 0))
    peer.listen(64)
    worker = start_worker(dataset, run_dir, [f"localhost:{free_port()}",
                                             f"localhost:{peer.getsockname()[1]}"],
                          0, "--cluster_timeout_s=15")
    _, stderr = finish(worker, 120)
  assert worker.returncode == -signal.SIGKILL, stderr
  lines = error_lines(stderr)
  assert len(lines) == 1 and "collective start-up did not finish within " \
      "--cluster_timeout_s=15" in lines[0], stderr
  assert not run_dir.exists()


def test_cluster_checks_without_tensorflow(tmp_path):
  workers = {"worker": [f"localhost:{free_port()}", "localhost:x"]}
  environ = {"TF_CONFIG": json.dumps({"cluster": workers, "task": {"type": "worker", "index": 0}})}
  with pytest.raises(alter_config.ConfigError, match=r"worker 1 \(localhost:x\) has no port"):
    cluster.check_cluster("multi_worker", str(tmp_path / "r"), environ)
  assert cluster.check_cluster("none", str(tmp_path / "r"), {})
  with pytest.raises(alter_config.ConfigError, match="cluster_timeout_s=0"):
    alter_config.check_flags(TrainConfig(cluster_timeout_s=0))
