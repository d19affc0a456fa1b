"""Local `data_tools.prepare` vs the Apache Beam pipeline `data_tools.beam_prepare`
on the whole of a raw dataset: wall time of each command, then whether they wrote the
same dataset (`data_tools.compare`).

  python benchmarks/beam_prepare.py [--config=configs/online_retail.flags] \
      [--raw_path=../shared/datasets/online_retail/online_retail.parquet] \
      [--beam_args=--direct_num_workers=2,--direct_running_mode=multi_processing] \
      [--extra_flags=--text_fields=] [--work_dir=DIR] [--atol=1e-6]

Both commands run as a user runs them, one after the other, each in its own
process with the same flagfile (the flagfile's text model: SBERT embeddings
included) and the same --extra_flags; wall times include the process start-up
(Python, TensorFlow, Beam imports, model load). The Beam command gets
--beam_args (default: none, i.e. --runner=DirectRunner in memory). The outputs go
to --work_dir (kept) or to a temporary folder (deleted). Comparison: sessions per
split as multisets, the vocabulary as a set, each item's text vector within --atol,
the manifests but for file hashes and --output_dir.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

from benchmarks import common

flags.DEFINE_string("config", "configs/online_retail.flags", "Flagfile of both commands.")
flags.DEFINE_string("raw_path", os.path.join(common.REPO_ROOT, "..", "shared", "datasets",
                                             "online_retail", "online_retail.parquet"),
                    "Raw data (--raw_path of both commands).")
flags.DEFINE_list("beam_args", [], "Pipeline options for the Beam command.")
flags.DEFINE_list("extra_flags", [], "Prepare flags added to both commands.")
flags.DEFINE_string("work_dir", "", "Keep both outputs and logs here (default: a "
                    "temporary folder, deleted).")
flags.DEFINE_float("atol", 1e-6, "Largest absolute difference allowed per embedding value.")
flags.DEFINE_string("output", os.path.join(common.RESULTS_DIR, "beam_prepare.json"),
                    "JSON results file.")
FLAGS = flags.FLAGS

COMMANDS = {"local": "data_tools.prepare", "beam": "data_tools.beam_prepare"}


def run_command(name: str, folder: str) -> dict:
  """Runs one prepare command into `folder`/`name`; returns its wall time."""
  args = [sys.executable, "-m", COMMANDS[name], f"--flagfile={FLAGS.config}",
          f"--raw_path={os.path.abspath(FLAGS.raw_path)}",
          f"--output_dir={os.path.join(folder, name)}", *FLAGS.extra_flags]
  if name == "beam":
    args += FLAGS.beam_args
  log_path = os.path.join(folder, f"{name}.log")
  print(f"running {' '.join(args[1:])} (log: {log_path})", flush=True)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TQDM_DISABLE="1")
  start = time.perf_counter()
  with open(log_path, "w", encoding="utf-8") as log:
    code = subprocess.run(args, cwd=common.REPO_ROOT, env=env, stdout=log,
                          stderr=subprocess.STDOUT, check=False).returncode
  seconds = time.perf_counter() - start
  if code:
    with open(log_path, encoding="utf-8") as log:
      print(log.read()[-3000:], file=sys.stderr)
    raise SystemExit(f"error: {COMMANDS[name]} exited with status {code}")
  print(f"{COMMANDS[name]}: {seconds:.1f} s", flush=True)
  return {"command": " ".join(["python"] + args[1:]), "seconds": seconds}


def run(folder: str) -> dict:
  from data_tools import compare
  machine = common.machine_info()
  print(common.machine_line(machine), flush=True)
  result = {"command": common.command_line(), "machine": machine,
            "raw_path": os.path.abspath(FLAGS.raw_path)}
  for name in COMMANDS:
    result[name] = run_command(name, folder)
  comparison = compare.compare(os.path.join(folder, "local"), os.path.join(folder, "beam"),
                               atol=FLAGS.atol)
  result["comparison"] = {"equal": comparison.equal, "differences": comparison.differences,
                          "sessions_per_split": comparison.sessions_per_split,
                          "num_items": comparison.num_items,
                          "max_embedding_difference": comparison.max_embedding_difference,
                          "byte_identical": comparison.byte_identical, "atol": FLAGS.atol}
  rows = [[COMMANDS[name], f"{result[name]['seconds']:.1f} s"] for name in COMMANDS]
  print(f"\nLocal vs Beam preparation of {os.path.basename(FLAGS.raw_path)}; "
        f"{common.machine_line(machine)}")
  print(common.table(["command", "wall time"], rows))
  print(f"Beam / local: {result['beam']['seconds'] / result['local']['seconds']:.2f}x")
  print(f"comparison (atol {FLAGS.atol:g}): {comparison.describe()}")
  print(f"results: {common.write_json(FLAGS.output, result)}")
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  folder = FLAGS.work_dir or tempfile.mkdtemp(prefix="alterrec_beam_bench_")
  os.makedirs(folder, exist_ok=True)
  try:
    result = run(folder)
  finally:
    if not FLAGS.work_dir:
      shutil.rmtree(folder, ignore_errors=True)
  if not result["comparison"]["equal"]:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
