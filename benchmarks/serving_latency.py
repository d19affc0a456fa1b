"""Serving latency and throughput of an exported SavedModel on this machine's CPU.

  python benchmarks/serving_latency.py --export_dir=models/alterrec \\
      [--single_calls=500] [--batch_size=256] [--batches=20] \\
      [--output=benchmarks/results/serving_latency.json]

Loads the SavedModel with tf.saved_model.load (what a model server runs, minus
the RPC), warms it up, then times
  - latency: `single_calls` calls of serving_default with one session each
    (p50, p90, p99, mean in milliseconds);
  - throughput: `batches` calls with `batch_size` sessions each (sessions/s).
Sessions are prefixes of real test sessions with --data_dir (a random cut of a
random session, as evaluation scores every prefix; the last max_len items),
else random items with lengths uniform in [1, max_len]; seed fixed;
right-padded to max_len. A timed call includes
feeding the request and reading the outputs back as numpy (the work a server's
predict call does), not the network. TensorFlow uses its default thread pools
(all cores); the machine's other load is not controlled.
"""

import json
import os
import platform
import sys
import time

from absl import app, flags

flags.DEFINE_string("export_dir", None, "A version folder, or its parent (highest version).")
flags.DEFINE_integer("single_calls", 500, "Timed calls with one session.")
flags.DEFINE_integer("batch_size", 256, "Sessions per throughput call.")
flags.DEFINE_integer("batches", 20, "Timed throughput calls.")
flags.DEFINE_integer("warmup_calls", 20, "Untimed calls first (each shape).")
flags.DEFINE_integer("seed", 0, "Seed of the random sessions.")
flags.DEFINE_string("data_dir", None, "Prepared dataset whose test-session prefixes are "
                    "the requests (default: random sessions).")
flags.DEFINE_string("output", "benchmarks/results/serving_latency.json", "JSON results file.")


def random_sessions(rng, count, num_items, max_len):
  import numpy as np
  ids = np.zeros([count, max_len], np.int64)
  lengths = rng.integers(1, max_len + 1, count)
  for row, length in enumerate(lengths):
    ids[row, :length] = rng.integers(1, num_items, length)
  return ids


def prefix_sessions(rng, count, data_dir, max_len):
  """Random prefixes (>= 1 item, last max_len kept) of the test split's sessions."""
  import numpy as np
  import tensorflow as tf

  from alterrec_tf.formats import schema
  manifest = schema.load_manifest(data_dir)
  files = schema.split_files(data_dir, manifest, "test") or schema.split_files(
      data_dir, manifest, "train")
  sessions = []
  for batch in tf.data.TFRecordDataset(files).batch(1024).map(schema.parse_examples):
    sessions += batch[schema.ITEM_IDS].to_list()
  ids = np.zeros([count, max_len], np.int64)
  for row, index in enumerate(rng.integers(0, len(sessions), count)):
    session = sessions[index]
    cut = int(rng.integers(1, len(session)))  # the prefix before target `cut`
    prefix = session[:cut][-max_len:]
    ids[row, :len(prefix)] = prefix
  return ids


def percentile_ms(values, q):
  import numpy as np
  return float(np.percentile(np.asarray(values) * 1e3, q))


def benchmark(version_dir, single_calls=500, batch_size=256, batches=20, warmup_calls=20,
              seed=0, data_dir=None, signature="serving_default"):
  import numpy as np
  import tensorflow as tf
  import tensorflow_text  # noqa: F401  (registers the ops of the export's text signatures)
  info_path = os.path.join(version_dir, "assets.extra", "alterrec_export.json")
  with open(info_path, encoding="utf-8") as f:
    info = json.load(f)
  load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  start = time.perf_counter()
  module = tf.saved_model.load(version_dir)
  load_seconds = time.perf_counter() - start
  function = module.signatures[signature]
  rng = np.random.default_rng(seed)
  max_len, num_items = info["max_len"], info["num_items"]

  def call(ids):
    out = function(item_ids=tf.constant(ids))
    return {name: value.numpy() for name, value in out.items()}

  def sessions(count):
    if data_dir:
      return prefix_sessions(rng, count, data_dir, max_len)
    return random_sessions(rng, count, num_items, max_len)

  singles = sessions(single_calls + warmup_calls)
  batch = sessions(batch_size * (batches + 1))
  mean_length = float((batch != 0).sum(axis=1).mean())
  for i in range(warmup_calls):
    call(singles[i:i + 1])
  call(batch[:batch_size])
  latencies = []
  for i in range(warmup_calls, warmup_calls + single_calls):
    start = time.perf_counter()
    call(singles[i:i + 1])
    latencies.append(time.perf_counter() - start)
  batch_times = []
  for b in range(1, batches + 1):
    ids = batch[b * batch_size:(b + 1) * batch_size]
    start = time.perf_counter()
    call(ids)
    batch_times.append(time.perf_counter() - start)
  return {
      "export": os.path.abspath(version_dir), "signature": signature,
      "model": info.get("model"), "towers": info.get("towers"),
      "num_items": num_items, "embedding_dim": info.get("embedding_dim"),
      "max_len": max_len, "k": info.get("k"),
      "exclude_session_items": info.get("exclude_session_items"),
      "load_seconds": load_seconds,
      "sessions": f"test prefixes of {data_dir}" if data_dir else "random, length U[1, max_len]",
      "mean_session_length": mean_length,
      "load_average_before": load_before,
      "load_average_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
      "single_session": {
          "calls": single_calls, "p50_ms": percentile_ms(latencies, 50),
          "p90_ms": percentile_ms(latencies, 90), "p99_ms": percentile_ms(latencies, 99),
          "mean_ms": float(np.mean(latencies) * 1e3)},
      "batch": {
          "batch_size": batch_size, "calls": batches,
          "p50_ms": percentile_ms(batch_times, 50), "p99_ms": percentile_ms(batch_times, 99),
          "sessions_per_second": batch_size * batches / float(np.sum(batch_times))},
      "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                  "python": platform.python_version(), "tensorflow": tf.__version__},
  }


def format_table(result) -> str:
  single, batch = result["single_session"], result["batch"]
  return "\n".join([
      f"sessions: {result['sessions']}, mean length {result['mean_session_length']:.1f}; "
      f"1-min load average {result['load_average_before']:.1f} before, "
      f"{result['load_average_after']:.1f} after",
      f"{result['model']} ({'+'.join(result['towers'] or [])}), {result['num_items']} items, "
      f"d={result['embedding_dim']}, max_len={result['max_len']}, k={result['k']}, "
      f"{result['machine']['cpus']} CPUs, TF {result['machine']['tensorflow']}",
      "| measure | value |",
      "|---|---|",
      f"| one session: p50 latency | {single['p50_ms']:.2f} ms |",
      f"| one session: p99 latency | {single['p99_ms']:.2f} ms |",
      f"| one session: mean latency ({single['calls']} calls) | {single['mean_ms']:.2f} ms |",
      f"| batch of {batch['batch_size']}: p50 latency | {batch['p50_ms']:.1f} ms |",
      f"| batch of {batch['batch_size']}: throughput ({batch['calls']} calls) | "
      f"{batch['sessions_per_second']:.0f} sessions/s |",
  ])


def main(argv):
  del argv
  values = flags.FLAGS
  if not values.export_dir:
    raise SystemExit("error: --export_dir is required")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from alterrec_tf import recommend
  version_dir = recommend.resolve_version_dir(values.export_dir)
  result = benchmark(version_dir, values.single_calls, values.batch_size, values.batches,
                     values.warmup_calls, values.seed, values.data_dir)
  print(format_table(result))
  if values.output:
    os.makedirs(os.path.dirname(os.path.abspath(values.output)), exist_ok=True)
    with open(values.output, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2, sort_keys=True)
    print(f"results: {values.output}")


if __name__ == "__main__":
  app.run(main)
