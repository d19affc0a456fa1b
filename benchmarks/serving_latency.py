"""Serving latency, throughput and memory of exported SavedModels on this machine's CPU.

  python benchmarks/serving_latency.py --export_dir=models/alterrec[,OTHER] \\
      [--data_dir=data/online_retail] [--repetitions=5] [--single_calls=300] \\
      [--throughput_batch_size=256] [--batches=5] [--output=benchmarks/results/serving_latency.json]
  python benchmarks/serving_latency.py --flagfile=configs/online_retail.flags \\
      --synthetic_items=3431,40000,1000000 [--serving_chunk_size=65536]

Loads each SavedModel with tf.saved_model.load (what a model server runs,
minus the RPC; `import tensorflow_text` first, so exports with text signatures
load), warms it up (every request shape), then times, in each of
`repetitions` rounds:
  - latency: `single_calls` calls of serving_default with one session each;
  - throughput: `batches` calls with `batch_size` sessions each (sessions/s).
A round stops early after --repetition_seconds (at least --min_calls calls),
so a million-item catalogue finishes. Reported: the median over rounds of each
round's p50 (and the rounds' range: the run-to-run spread), p99 over all
calls of all rounds, the median round's throughput. Several exports given
(comma-separated) are loaded in one process and called in turn, call by call
(old and new see the same moments of the machine's load); their memory is
then the process's, shared.
Memory: the process's RSS after loading and warming up, and the peak RSS
(sampled every 2 ms) during --memory_batches further batch calls, after the
timed rounds: the peak minus the loaded RSS is what requests add.

Requests: prefixes of the test sessions of --data_dir (a random cut of a
random session, as evaluation scores every prefix; the last max_len items),
else random items with lengths uniform in [1, max_len]; seed --seed;
right-padded to max_len. A timed call includes feeding the request and
reading the outputs back as numpy (the work of a server's predict call), not
the network. TensorFlow uses its default thread pools (all cores); the
machine's other load is not controlled: the 1-minute load average is printed
with every figure.

--synthetic_items: catalogues of these many items (padding not counted), each
exported from an untrained model of the training flags' shape (towers, d,
session encoders, max_len, alpha, temperatures: --flagfile) with a random
item matrix [V, D], Zipf popularity and ids item1..itemN, with
--serving_chunk_size (the export's default unless given), by a child process,
then measured in a child process of its own (its RSS is the catalogue's).
The requests are the --data_dir prefixes (the flagfile's dataset: real ids
are valid ids of a bigger catalogue), so every size serves the same sessions.
The exports are kept under --synthetic_dir for the next run.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from alterrec_tf import config as alter_config  # noqa: E402  (the training flags)
from alterrec_tf import flagfiles  # noqa: E402
from benchmarks import common, serving_requests  # noqa: E402

flags.DEFINE_list("export_dir", [], "Version folders, or their parents (highest version); "
                  "several are measured round-robin in one process.")
flags.DEFINE_list("synthetic_items", [], "Catalogue sizes to export from an untrained "
                  "model of the training flags' shape and measure (e.g. 3431,40000,1000000).")
flags.DEFINE_integer("serving_chunk_size", None, "Chunk size of the synthetic exports "
                     "(default: the exporter's).")
flags.DEFINE_integer("k", 20, "List length of the synthetic exports.")
flags.DEFINE_string("synthetic_dir", os.path.join(tempfile.gettempdir(), "alterrec_benchmarks",
                                                  "serving"),
                    "Where the synthetic exports are written and kept.")
flags.DEFINE_integer("repetitions", 5, "Timed rounds.")
flags.DEFINE_integer("single_calls", 300, "Timed calls with one session per round.")
flags.DEFINE_integer("throughput_batch_size", 256, "Sessions per throughput call.")
flags.DEFINE_integer("batches", 5, "Timed throughput calls per round.")
flags.DEFINE_float("repetition_seconds", 20.0, "A round's single-session calls (and, "
                   "separately, its batch calls) stop after this long, at --min_calls.")
flags.DEFINE_integer("min_calls", 10, "Calls per round at least.")
flags.DEFINE_integer("warmup_calls", 20, "Untimed one-session calls first.")
flags.DEFINE_integer("memory_batches", 3, "Batch calls after the rounds, with RSS sampled.")
flags.DEFINE_string("output", os.path.join(common.RESULTS_DIR, "serving_latency.json"),
                    "JSON results file ('' = none).")
flags.DEFINE_string("measure", "", "Internal: measure these exports here (child process).")
flags.DEFINE_string("build", "", "Internal: ITEMS,FOLDER: write a synthetic export.")
flags.DEFINE_string("child_output", "", "Internal: JSON file of a child's result.")

FLAGS = flags.FLAGS


# --- measuring --------------------------------------------------------------------
def percentile_ms(values, q):
  import numpy as np
  return float(np.percentile(np.asarray(values) * 1e3, q))


def load_average() -> float:
  return round(os.getloadavg()[0], 2)


def timed_calls(calls, requests, max_calls, seconds, min_calls):
  """Seconds of each call of each `calls[j](request)` over `requests` (cycled),
  at most `max_calls` each, stopping after `seconds` once `min_calls` are done:
  [[seconds] per caller]. The callers take turns call by call, so that each
  sees the same moments of the machine's other load."""
  times = [[] for _ in calls]
  start = time.perf_counter()
  for index in range(max_calls):
    request = requests[index % len(requests)]
    for call, seconds_of in zip(calls, times):
      before = time.perf_counter()
      call(request)
      seconds_of.append(time.perf_counter() - before)
    if index + 1 >= min_calls and time.perf_counter() - start > seconds * len(calls):
      break
  return times


def measure(version_dirs, data_dir=None, repetitions=5, single_calls=300, batch_size=256,
            batches=5, repetition_seconds=20.0, min_calls=10, warmup_calls=20,
            memory_batches=3, seed=0) -> dict:
  """Latency, throughput and memory of the serving_default of each export.

  Returns:
    {"exports": [per export: info, rounds, summary], "memory": {...}, "machine": ...}.
  """
  import numpy as np
  import tensorflow as tf
  import tensorflow_text  # noqa: F401  (registers the ops of the export's text signatures)
  start_rss = common.rss_bytes()
  exports = []
  for version_dir in version_dirs:
    with open(os.path.join(version_dir, "assets.extra", "alterrec_export.json"),
              encoding="utf-8") as f:
      info = json.load(f)
    start = time.perf_counter()
    function = tf.saved_model.load(version_dir).signatures["serving_default"]
    exports.append({"export": os.path.abspath(version_dir), "info": info,
                    "function": function, "load_seconds": time.perf_counter() - start,
                    "rounds": []})
  max_len = max(e["info"]["max_len"] for e in exports)
  num_items = min(e["info"]["num_items"] for e in exports)
  rng = np.random.default_rng(seed)
  singles = serving_requests.sessions(rng, single_calls, num_items, max_len, data_dir)
  batch = serving_requests.sessions(rng, batch_size * max(batches, memory_batches), num_items,
                                    max_len, data_dir)
  single_requests = [tf.constant(singles[i:i + 1]) for i in range(len(singles))]
  batch_requests = [tf.constant(batch[i * batch_size:(i + 1) * batch_size])
                    for i in range(len(batch) // batch_size)]

  def caller(function):
    def call(request):
      return {name: value.numpy() for name, value in function(item_ids=request).items()}
    return call

  for export in exports:
    call = caller(export["function"])
    for i in range(warmup_calls):
      call(single_requests[i % len(single_requests)])
    call(batch_requests[0])
  loaded_rss = common.rss_bytes()
  callers = [caller(export["function"]) for export in exports]
  for repetition in range(repetitions):
    load_before = load_average()
    latencies = timed_calls(callers, single_requests, single_calls, repetition_seconds,
                            min_calls)
    batch_times = timed_calls(callers, batch_requests, batches, repetition_seconds,
                              min(min_calls, batches))
    load_after = load_average()
    for export, single, batched in zip(exports, latencies, batch_times):
      export["rounds"].append({
          "calls": len(single), "p50_ms": percentile_ms(single, 50),
          "p90_ms": percentile_ms(single, 90), "p99_ms": percentile_ms(single, 99),
          "mean_ms": float(np.mean(single) * 1e3), "latencies_s": single,
          "batch_calls": len(batched), "batch_p50_ms": percentile_ms(batched, 50),
          "sessions_per_second": batch_size * len(batched) / float(np.sum(batched)),
          "load_average_1min": [load_before, load_after]})
      print(f"  round {repetition + 1}/{repetitions} {export['info']['num_items'] - 1} items "
            f"({'/'.join(export['export'].rstrip('/').split('/')[-2:])}): p50 "
            f"{export['rounds'][-1]['p50_ms']:.2f} ms over {len(single)} calls, "
            f"{export['rounds'][-1]['sessions_per_second']:.0f} sessions/s; load "
            f"{load_before:.2f}", flush=True)
  memory = {}
  if memory_batches:
    with common.PeakMemory() as peak:
      for export in exports:
        call = caller(export["function"])
        for request in batch_requests[:memory_batches]:
          call(request)
    memory = {"start_rss_bytes": start_rss, "loaded_rss_bytes": loaded_rss,
              "peak_rss_during_batches_bytes": peak.peak_rss,
              "request_rss_bytes": peak.peak_rss - loaded_rss,
              "max_rss_bytes": common.max_rss_bytes()}
  for export in exports:
    del export["function"]
    export["summary"] = summarize(export["rounds"])
  return {"exports": exports, "memory": memory, "batch_size": batch_size,
          "sessions": (f"test prefixes of {data_dir}" if data_dir
                       else "random, length U[1, max_len]"),
          "mean_session_length": float((singles != 0).sum(axis=1).mean()),
          "mean_batch_session_length": float((batch != 0).sum(axis=1).mean()),
          "machine": common.machine_info()}


def summarize(rounds) -> dict:
  """Median of the rounds' p50 and its range, p99 of all calls, median throughput."""
  p50s = [r["p50_ms"] for r in rounds]
  latencies = [t for r in rounds for t in r["latencies_s"]]
  rates = [r["sessions_per_second"] for r in rounds]
  loads = [x for r in rounds for x in r["load_average_1min"]]
  return {"p50_ms": common.median(p50s), "p50_ms_min": min(p50s), "p50_ms_max": max(p50s),
          "p99_ms": percentile_ms(latencies, 99), "calls": len(latencies),
          "p99_ms_of_rounds": [r["p99_ms"] for r in rounds],
          "sessions_per_second": common.median(rates),
          "sessions_per_second_min": min(rates), "sessions_per_second_max": max(rates),
          "load_average_1min_range": [min(loads), max(loads)]}


# --- synthetic catalogues -----------------------------------------------------------
def build_synthetic_export(num_items: int, folder: str, config, k: int,
                           chunk_size=None) -> str:
  """Writes an export of `num_items` items (+ padding) from an untrained model of
  `config`'s shape to `folder`/1; returns the version folder."""
  import keras
  import numpy as np

  from alterrec_tf.models import registry
  from alterrec_tf.serving import build as serving_build
  from alterrec_tf.serving import module as serving
  from alterrec_tf.serving import pipeline
  keras.utils.set_random_seed(config.seed)
  rng = np.random.default_rng(config.seed)
  small = 64  # the model's own catalogue: only its session encoders are kept
  manifest = {"num_items": small, "sessions_deduplicated": True}
  config = alter_config.resolve_seen_items(config, manifest)
  model = registry.build_model(config, manifest, rng.standard_normal((small, 32), np.float32))
  _, parts = serving_build.serving_parts(model, config, small)
  size = num_items + 1
  parts = [serving.TowerPart(p.name, p.session_encoder, p.dim, p.scale, size) for p in parts]
  matrix = rng.standard_normal((size, sum(p.dim for p in parts)), np.float32)
  matrix[0] = 0.0
  # Zipf popularity over shuffled items
  popularity = np.zeros([size], np.float32)
  popularity[rng.permutation(num_items) + 1] = 1e5 / np.arange(1, num_items + 1)
  rows = [(serving_build.schema.PADDING_TOKEN, "")] + [(f"item{i}", "")
                                                       for i in range(1, size)]
  if chunk_size is None:
    chunk_size = serving_build.DEFAULT_SERVING_CHUNK_SIZE
  final = os.path.join(folder, "1")
  staging = f"{folder}.partial-{os.getpid()}"
  scratch = os.path.join(staging, "scratch")
  os.makedirs(scratch)
  vocab = os.path.join(scratch, serving.VOCAB_ASSET)
  serving_build.write_vocab(vocab, rows)
  exclude = config.seen_items == "exclude"
  module = serving.ServingModule(matrix, parts, popularity, vocab, config.max_len, k, exclude,
                                 chunk_size=chunk_size)
  del matrix
  target = os.path.join(staging, "1")
  pipeline.save_module(module, target, "synthetic", rows, config.max_len, k, warmup=False)
  info = {"model": config.model, "towers": list(model.tower_names), "synthetic": True,
          "num_items": size, "embedding_dim": config.embedding_dim, "max_len": config.max_len,
          "k": k, "exclude_session_items": exclude, "serving_chunk_size": chunk_size,
          "chunked_scoring": 0 < chunk_size < size, "alpha": config.alpha,
          "text_temperature": config.text_temperature}
  os.makedirs(os.path.join(target, pipeline.ASSETS_EXTRA), exist_ok=True)
  with open(os.path.join(target, pipeline.ASSETS_EXTRA, pipeline.EXPORT_INFO_FILE), "w",
            encoding="utf-8") as f:
    json.dump(info, f, indent=2)
  import shutil
  shutil.rmtree(scratch)
  os.makedirs(folder, exist_ok=True)
  os.replace(target, final)
  os.rmdir(staging)
  return final


def synthetic_folder(num_items: int, config, k: int, chunk_size) -> str:
  """The cache folder of a synthetic export: every parameter that shapes it,
  and a hash of the serving graph's source (a changed graph is exported anew)."""
  import hashlib

  from alterrec_tf.serving import build as serving_build
  chunk = serving_build.DEFAULT_SERVING_CHUNK_SIZE if chunk_size is None else chunk_size
  digest = hashlib.sha256()
  for name in ("module.py", "encoders.py", "build.py"):
    with open(os.path.join(common.REPO_ROOT, "alterrec_tf", "serving", name), "rb") as f:
      digest.update(f.read())
  graph = digest.hexdigest()[:8]
  return os.path.join(FLAGS.synthetic_dir, (
      f"{graph}_items{num_items}_{config.model}_d{config.embedding_dim}_{config.id_encoder}-"
      f"{config.text_encoder}_l{config.num_layers}h{config.num_heads}_len{config.max_len}"
      f"_k{k}_chunk{chunk}_seed{config.seed}"))


def run_child(arguments, what: str) -> dict:
  """Runs this script with `arguments` added; the child's JSON result."""
  with tempfile.TemporaryDirectory(prefix="alterrec_serving_") as scratch:
    path = os.path.join(scratch, "child.json")
    command = [sys.executable, os.path.abspath(__file__)] + sys.argv[1:] + arguments + [
        f"--child_output={path}"]
    code = subprocess.call(command)
    if code != 0 or not os.path.exists(path):
      raise SystemExit(f"error: {what} failed (exit status {code})")
    with open(path, encoding="utf-8") as f:
      return json.load(f)


def measure_synthetic(config) -> list:
  """[measure() result of each --synthetic_items catalogue], each in a child."""
  results = []
  for items in (int(n) for n in FLAGS.synthetic_items):
    folder = synthetic_folder(items, config, FLAGS.k, FLAGS.serving_chunk_size)
    if not os.path.isdir(os.path.join(folder, "1")):
      start = time.perf_counter()
      run_child([f"--build={items},{folder}"], f"exporting {items} items")
      print(f"exported {items:,} items to {folder} in {time.perf_counter() - start:.0f} s",
            flush=True)
    results.append(run_child([f"--measure={os.path.join(folder, '1')}"],
                             f"measuring {items} items"))
  return results


# --- tables ---------------------------------------------------------------------------
def format_table(results) -> str:
  lines = ["| export | items | scoring | one session p50 (rounds' range) | p99 (calls) | "
           "batch of 256: sessions/s (range) | RSS loaded | peak RSS in batches | "
           "1-min load |", "|---|---:|---|---|---|---|---:|---:|---|"]
  for result in results:
    memory = result["memory"]
    for export in result["exports"]:
      info, summary = export["info"], export["summary"]
      chunk = (f"chunks of {info['serving_chunk_size']:,}" if info.get("chunked_scoring")
               else "one matmul")
      name = ("synthetic" if info.get("synthetic") else
              "/".join(export["export"].rstrip("/").split("/")[-2:]))
      loads = summary["load_average_1min_range"]
      lines.append(
          f"| {name} | {info['num_items'] - 1:,} | {chunk} | {summary['p50_ms']:.2f} ms "
          f"({summary['p50_ms_min']:.2f}-{summary['p50_ms_max']:.2f}) | "
          f"{summary['p99_ms']:.2f} ms ({summary['calls']}) | "
          f"{summary['sessions_per_second']:.0f} ({summary['sessions_per_second_min']:.0f}-"
          f"{summary['sessions_per_second_max']:.0f}) | "
          f"{common.mib(memory.get('loaded_rss_bytes'))} | "
          f"{common.mib(memory.get('peak_rss_during_batches_bytes'))} | "
          f"{loads[0]:.1f}-{loads[1]:.1f} |")
  first = results[0]
  lines.append(f"sessions: {first['sessions']}, mean length {first['mean_session_length']:.1f} "
               f"(batches {first['mean_batch_session_length']:.1f}); "
               + common.machine_line(first["machine"]))
  return "\n".join(lines)


def main(argv):
  del argv
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  config = alter_config.TrainConfig.from_flags()
  if FLAGS.build:
    items, folder = FLAGS.build.split(",", 1)
    path = build_synthetic_export(int(items), folder, config, FLAGS.k, FLAGS.serving_chunk_size)
    common.write_json(FLAGS.child_output, {"path": path})
    return
  measured = dict(data_dir=config.data_dir or None, repetitions=FLAGS.repetitions,
                  single_calls=FLAGS.single_calls, batch_size=FLAGS.throughput_batch_size,
                  batches=FLAGS.batches, repetition_seconds=FLAGS.repetition_seconds,
                  min_calls=FLAGS.min_calls, warmup_calls=FLAGS.warmup_calls,
                  memory_batches=FLAGS.memory_batches, seed=config.seed)
  if FLAGS.measure:
    common.write_json(FLAGS.child_output, measure(FLAGS.measure.split(","), **measured))
    return
  if not FLAGS.export_dir and not FLAGS.synthetic_items:
    raise SystemExit("error: give --export_dir or --synthetic_items")
  results = []
  if FLAGS.export_dir:
    from alterrec_tf import recommend
    results.append(measure([recommend.resolve_version_dir(d) for d in FLAGS.export_dir],
                           **measured))
  if FLAGS.synthetic_items:
    results += measure_synthetic(config)
  print(format_table(results))
  if FLAGS.output:
    output = {"command": common.command_line(), "results": results}
    print(f"results: {common.write_json(FLAGS.output, output)}")


if __name__ == "__main__":
  app.run(main, flags_parser=flagfiles.make_parser(flagfiles.PREPARE_FLAG_NAMES))
