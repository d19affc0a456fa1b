"""Training speed of 2 local workers (`--distribution=multi_worker`) vs 1 process.

  python benchmarks/distributed_speed.py [--data_dir=data/online_retail] \
      [training flags, e.g. --flagfile=configs/online_retail.flags] \
      [--output=benchmarks/results/distributed_speed.json]

Runs `python -m alterrec_tf.train` twice on the same data and flags: once as
one process (`--distribution=none`, cpu_count TF threads), then as two
MultiWorkerMirroredStrategy workers on localhost (TF_CONFIG with two free
ports, cpu_count / 2 threads each), so both use the whole machine. The global
batch (--batch_size windows) is the same in both; each worker trains half of
every batch and the gradients are all-reduced over gRPC (ring).

Measured: the training prefixes per second of each epoch (history.json:
scored prefixes / seconds of the epoch's steps; evaluation excluded), the
steady rate being the mean over the epochs after the first two (the first
epoch of each tower traces its step), and the wall time of each run (start-up,
tracing and the per-epoch validation that every worker does whole included).
Without --data_dir: a synthetic dataset (`--synthetic_items`,
`--synthetic_sessions`, 64-d text), written to a temporary folder. Default
schedule: 6 epochs (ID and text with random negatives, then hard negatives
alternating every epoch), d=64, k2=200, the test split ranked only at the end.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

from alterrec_tf import config as alter_config
from alterrec_tf import flagfiles
from alterrec_tf import runs as alter_runs
from alterrec_tf.training import cluster
from benchmarks import common

flags.DEFINE_integer("synthetic_items", 1500, "Catalogue of the synthetic dataset.")
flags.DEFINE_integer("synthetic_sessions", 4000, "Training sessions of the synthetic dataset.")
flags.DEFINE_integer("timeout_s", 1800, "Limit of each run (seconds).")
flags.DEFINE_string("output", os.path.join(common.RESULTS_DIR, "distributed_speed.json"),
                    "JSON results file.")

FLAGS = flags.FLAGS
# Defaults of this benchmark where the command line does not set the flag.
BENCH_DEFAULTS = {"m_random": 1, "m_gap": 1, "m_max": 6, "embedding_dim": 64, "k1": 6,
                  "k2": 200, "test_every_epoch": False, "verbose": 0,
                  "id_encoder": "transformer"}
STEADY_FROM_EPOCH = 3  # 1-based: epochs 1 and 2 trace the ID and the text step


def train_command(config):
  """`config` as an alterrec_tf.train command line (flags off their defaults)."""
  return [sys.executable, "-m", "alterrec_tf.train", "--noverify_data"] + config.to_flags()


def thread_env(threads, **extra):
  return dict(os.environ, TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS="1",
              OMP_NUM_THREADS=str(threads), TF_CPP_MIN_LOG_LEVEL="3", **extra)


def run_processes(commands_and_envs, timeout):
  """Runs the commands at once; returns the wall seconds until all ended."""
  start = time.perf_counter()
  processes = [subprocess.Popen(command, env=env, cwd=common.REPO_ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for command, env in commands_and_envs]
  try:
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.communicate()
  for p, output in zip(processes, outputs):
    if p.returncode:
      raise SystemExit(f"a training process failed (status {p.returncode}):\n{output[-3000:]}")
  return time.perf_counter() - start


def summarise(run_dir, wall_seconds, processes, threads):
  history = alter_runs.read_json(os.path.join(run_dir, alter_runs.HISTORY_FILE))
  rates = [h["train_examples_per_second"] for h in history]
  steady = rates[STEADY_FROM_EPOCH - 1:] or rates
  return {"processes": processes, "threads_each": threads, "wall_seconds": wall_seconds,
          "prefixes_per_second_by_epoch": rates,
          "steady_prefixes_per_second": sum(steady) / len(steady),
          "train_seconds": sum(h["train_seconds"] for h in history),
          "valid_fused_hits@20_last": history[-1].get("valid/fused/hits@20")}


def measure(config, scratch):
  cpus = os.cpu_count() or 1
  one_dir = os.path.join(scratch, "one")
  single = config.replace(run_dir=one_dir, distribution="none")
  wall = run_processes([(train_command(single), thread_env(cpus))], FLAGS.timeout_s)
  one = summarise(one_dir, wall, 1, cpus)
  two_dir = os.path.join(scratch, "two")
  command = train_command(config.replace(run_dir=two_dir, distribution="multi_worker"))
  threads = max(1, cpus // 2)
  runs = [(command, thread_env(threads, TF_CONFIG=tf_config))
          for tf_config in cluster.local_tf_configs(2)]
  two = summarise(two_dir, run_processes(runs, FLAGS.timeout_s), 2, threads)
  return one, two


def dataset(config, scratch):
  if config.data_dir:
    return config
  from tests import synthetic
  data_dir = os.path.join(scratch, "synthetic")
  synthetic.write_dataset(data_dir, num_items=FLAGS.synthetic_items,
                          num_sessions=FLAGS.synthetic_sessions, text_dim=64,
                          num_clusters=40, max_session_length=48)
  return config.replace(data_dir=data_dir)


def main(argv):
  del argv
  config = alter_config.TrainConfig.from_flags()
  config = config.replace(**{name: value for name, value in BENCH_DEFAULTS.items()
                             if not FLAGS[name].present})
  machine = common.machine_info()
  scratch = tempfile.mkdtemp(prefix="alterrec_dist_bench_")
  try:
    config = dataset(config, scratch)
    one, two = measure(config, scratch)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  ratio = two["steady_prefixes_per_second"] / one["steady_prefixes_per_second"]
  print(common.machine_line(machine))
  print(common.table(
      ["run", "processes x TF threads", f"prefixes/s (epochs {STEADY_FROM_EPOCH}+)",
       "prefixes/s by epoch", "train s", "wall s"],
      [[name, f"{r['processes']} x {r['threads_each']}",
        common.fmt_rate(r["steady_prefixes_per_second"]),
        ", ".join(common.fmt_rate(x) for x in r["prefixes_per_second_by_epoch"]),
        f"{r['train_seconds']:.1f}", f"{r['wall_seconds']:.1f}"]
       for name, r in (("1 process", one), ("2 local workers", two))]))
  print(f"2 workers / 1 process: x{ratio:.2f} (steady training prefixes/s)")
  result = {"command": common.command_line(), "machine": machine,
            "config": json.loads(config.to_json()), "one_process": one, "two_workers": two,
            "speedup": ratio}
  print(f"written: {common.write_json(FLAGS.output, result)}")


if __name__ == "__main__":
  app.run(main, flags_parser=flagfiles.make_parser(flagfiles.PREPARE_FLAG_NAMES))
