"""How the cost of AlterRec grows with the catalogue and with the data (issue 16).

  python benchmarks/scale.py [--items=10000,100000,1000000] [--sessions=10000,100000] \
      [--base_items=10000] [--base_sessions=10000] [--train_steps=2] \
      [--eval_prefixes=6000] [--max_train_items=100000] \
      [--output=benchmarks/results/scale.json]

Grid: every --items catalogue with --base_sessions training sessions, and every
--sessions count with --base_items items (the point both axes share is
measured once). Data: synthetic, Zipf item popularity and Online-Retail-like
session lengths, random --text_dim text (benchmarks/scale_data.py), written
once per size under --cache_dir and reused by later runs.

Each point runs in a process of its own (its peak RSS is its own) with the
model `alterrec_tf.train` builds from the training flags, which this script
accepts (defaults here: AlterRec, d=128, ID mean encoder, text Transformer 2x2,
k1=6, k2=2000, lowered to items-2 on smaller catalogues, 64 windows per batch,
--score_chunk_size=65536), and measures:

  evaluation  `training.evaluation.Evaluator` (ranked in item chunks when the
              catalogue is larger than --score_chunk_size; TFRS metrics off so
              every point does the same work) over the test split's first
              batches of --eval_batch_size windows, until --eval_prefixes
              prefixes (at most --eval_prefix_items / items; the last batch
              cut to the windows that reach it) or --eval_max_seconds, after
              tracing on a one-window batch (untimed).
  training    Keras' compiled train_function on --train_steps batches of
              epoch 0 (`train_steps.sample_batches`) held in memory, per phase
              of Algorithm 1 (ID / text tower, random / hard negatives: the
              partner's ranks k1..k2), after --warmup untimed steps (the trace)
              before the first phase. Catalogues above --max_train_items are
              evaluated only.
  memory      peak RSS of the point's process (getrusage) after evaluation
              (TF, dataset, model and the evaluation; nothing trained yet) and
              at the end (with training); the JSON adds the peaks sampled
              every 2 ms during each timed section (`common.PeakMemory`) and,
              on a GPU, the peak GPU memory.

The point with --base_sessions sessions and a catalogue of 4k-40k items
(closest to 10k) also gets the hard vs random comparison at k2 (acceptance of
issue 16 item 4: hard-phase prefixes/s within 1.5x of the random phase's) and
a breakdown of a hard-negative step (`step_pieces.breakdown`, plus top_k
unsorted as the model calls it).

Cost ratio per doubling, between consecutive points of one axis a -> b:
(t_b / t_a) ** (1 / log2(n_b / n_a)), t = seconds per prefix (or bytes of peak
RSS), n = items or sessions: the factor the cost is multiplied by each time
the size doubles; 1.0 = does not grow, 2.0 = grows in proportion. The tables
are printed by benchmarks/scale_tables.py, from the saved result alone.
"""

import json
import math
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

from alterrec_tf import config as alter_config
from alterrec_tf import flagfiles
from benchmarks import common, scale_data, scale_tables, train_steps

flags.DEFINE_list("items", ["10000", "100000", "1000000"],
                  "Catalogue sizes (items, padding not counted), with --base_sessions.")
flags.DEFINE_list("sessions", ["10000", "100000"],
                  "Training sessions, with --base_items items.")
flags.DEFINE_integer("base_items", 10000, "Items of the points of the sessions axis.")
flags.DEFINE_integer("base_sessions", 10000, "Sessions of the points of the items axis.")
flags.DEFINE_float("zipf_exponent", 1.0, "Exponent of the Zipf item popularity.")
flags.DEFINE_integer("text_dim", 32, "Width of the random item text table.")
flags.DEFINE_integer("max_session_length", 200, "Longest synthetic session.")
flags.DEFINE_integer("test_sessions", 2000, "Synthetic test sessions (evaluation).")
flags.DEFINE_integer("data_seed", 0, "Seed of the synthetic data.")
flags.DEFINE_string("cache_dir", scale_data.default_cache_root(),
                    "Where the generated datasets are kept, one folder per size.")
flags.DEFINE_integer("train_steps", 2, "Timed steps per training phase (distinct batches).")
flags.DEFINE_integer("reference_train_steps", 6,
                     "Timed steps per phase at the hard-vs-random point (4k-40k items).")
flags.DEFINE_integer("warmup", 1,
                     "Untimed steps before the first phase (the trace; one graph serves "
                     "every phase).")
flags.DEFINE_integer("max_train_items", 100000,
                     "Train only on catalogues of at most this many items.")
flags.DEFINE_integer("eval_prefixes", 6000, "Test prefixes ranked per point (at most).")
flags.DEFINE_float("eval_prefix_items", 6e8,
                   "At most this / items test prefixes per point (0: no such cap): "
                   "600 prefixes at 1M items.")
flags.DEFINE_float("eval_max_seconds", 120.0,
                   "Stop a point's evaluation after the batch that passes this (0: never).")
flags.DEFINE_boolean("breakdown", True, "Time the pieces of a hard step at the 4k-40k point.")
flags.DEFINE_string("output", os.path.join(common.RESULTS_DIR, "scale.json"),
                    "JSON results file.")
flags.DEFINE_string("from_json", "", "Print the tables of this saved result; measure nothing.")
flags.DEFINE_string("point", "", "Internal: ITEMS,SESSIONS, measure that point here.")
flags.DEFINE_string("point_output", "", "Internal: JSON file of --point's results.")

FLAGS = flags.FLAGS
PHASES = (("id", False), ("text", False), ("id", True), ("text", True))
SCRIPT_DEFAULTS = {"embedding_dim": 128, "score_chunk_size": 65536}


# --- the grid -------------------------------------------------------------------
def grid_points():
  """[(items, sessions)] of the grid, sorted, each once."""
  points = {(int(n), FLAGS.base_sessions) for n in FLAGS.items}
  points |= {(FLAGS.base_items, int(n)) for n in FLAGS.sessions}
  return sorted(points)


def reference_point(points):
  """The hard-vs-random point: --base_sessions and 4k-40k items, closest to 10k."""
  candidates = [p for p in points if p[1] == FLAGS.base_sessions and 4000 <= p[0] <= 40000]
  return min(candidates, key=lambda p: abs(math.log(p[0] / 10000)), default=None)


def data_params() -> dict:
  return {"exponent": FLAGS.zipf_exponent, "text_dim": FLAGS.text_dim,
          "max_length": FLAGS.max_session_length, "test_sessions": FLAGS.test_sessions,
          "seed": FLAGS.data_seed}


# --- one point (its own process) ---------------------------------------------------
def eval_budget(num_items: int) -> int:
  """Test prefixes to rank at a catalogue of `num_items`: --eval_prefixes, at
  most --eval_prefix_items / num_items (so big catalogues stay bounded)."""
  if not FLAGS.eval_prefix_items:
    return FLAGS.eval_prefixes
  return max(1, min(FLAGS.eval_prefixes, int(FLAGS.eval_prefix_items // num_items)))


def budgeted(batches, max_prefixes, max_seconds, seen):
  """Yields batches until `max_prefixes` prefixes (the last batch cut to the
  windows that reach it) or until `max_seconds` have passed."""
  import numpy as np
  start = time.perf_counter()
  for batch in batches:
    if seen["prefixes"] >= max_prefixes or (
        max_seconds and time.perf_counter() - start > max_seconds):
      return
    per_window = batch["target_mask"].numpy().sum(axis=1)
    keep = int(np.searchsorted(np.cumsum(per_window), max_prefixes - seen["prefixes"])) + 1
    if keep < len(per_window):
      batch, per_window = {k: v[:keep] for k, v in batch.items()}, per_window[:keep]
    seen["batches"] += 1
    seen["windows"] += len(per_window)
    seen["prefixes"] += int(per_window.sum())
    yield batch


def load_split(data_dir, manifest, split_name, max_len, stride):
  """The windows of a split (`windows.SplitData`); exits if the dataset lacks it."""
  from alterrec_tf.data import windows
  split = windows.load_split(data_dir, manifest, split_name, max_len, stride)
  if split is None:
    raise SystemExit(f"error: {data_dir} has no {split_name} split")
  return split


def measure_evaluation(model, data_dir, manifest, config) -> dict:
  """Prefixes/s of the Evaluator over the first test prefixes."""
  from alterrec_tf.training import evaluation
  split = load_split(data_dir, manifest, "test", config.max_len, config.eval_window_stride)
  evaluator = evaluation.Evaluator(model, config.ks, config.mrr_k, tfrs_metrics=False)
  batches = split.batches(config.eval_batch_size)
  first = next(iter(batches))
  start = time.perf_counter()
  evaluator([{k: v[:1] for k, v in first.items()}])  # traces the graph
  trace_seconds = time.perf_counter() - start
  seen = {"batches": 0, "windows": 0, "prefixes": 0}
  with common.PeakMemory() as memory:
    start = time.perf_counter()
    evaluator(budgeted(batches, eval_budget(model.num_items), FLAGS.eval_max_seconds, seen))
    seconds = time.perf_counter() - start
  return {"prefixes": seen["prefixes"], "batches": seen["batches"], "windows": seen["windows"],
          "budget": eval_budget(model.num_items), "seconds": seconds,
          "prefixes_per_second": seen["prefixes"] / seconds, "trace_seconds": trace_seconds,
          "chunk_size": evaluator.chunk_size, "split_prefixes": split.num_examples,
          "sampled_peak_rss_bytes": memory.peak_rss, "peak_gpu_bytes": memory.peak_gpu}


def time_phases(model, stream, steps: int) -> dict:
  """{"id/random": {...}, ...}: prefixes/s of each phase of Algorithm 1 over
  `steps` steps, after --warmup untimed ones before the first phase."""
  results = {}
  for index, (tower, hard) in enumerate(PHASES):
    model.phase.assign(0 if tower == "id" else 1)
    model.hard_negatives.assign(int(hard))
    warmup = FLAGS.warmup if index == 0 else 0
    with common.PeakMemory() as memory:
      timed = train_steps.time_train_function(model, stream, warmup, steps)
    seconds = [t for t, _ in timed]
    prefixes = sum(info["prefixes"] for _, info in timed)
    key = f"{tower}/{'hard' if hard else 'random'}"
    results[key] = {"prefixes_per_second": prefixes / sum(seconds),
                    "step_seconds": seconds, "step_seconds_median": common.median(seconds),
                    "prefixes_per_step_mean": prefixes / len(timed),
                    "sampled_peak_rss_bytes": memory.peak_rss,
                    "peak_gpu_bytes": memory.peak_gpu}
    print(f"  {key}: {common.fmt_rate(results[key]['prefixes_per_second'])} prefixes/s "
          f"(median step {common.spread(seconds)})", flush=True)
  return results


def top_k_timings(batch, num_items, k, repeats=3) -> dict:
  """Median seconds of tf.math.top_k(k) over [P, V] random scores, sorted and
  unsorted (the model ranks the partner's scores unsorted)."""
  import tensorflow as tf
  scores = tf.random.stateless_normal([int(batch["target_mask"].sum()), num_items], [1, 2])
  out = {}
  for name, is_sorted in (("sorted", True), ("unsorted", False)):
    fn = tf.function(lambda s, is_sorted=is_sorted: tf.math.top_k(s, k, sorted=is_sorted).values,
                     autograph=False)
    out[name] = common.median(common.time_calls(lambda fn=fn: fn(scores), 1, repeats))
  return out


def measure_training(model, data_dir, manifest, config, reference: bool) -> dict:
  """Prefixes/s of each phase on sampled batches (and a breakdown at the reference)."""
  from benchmarks import step_pieces
  start = time.perf_counter()
  split = load_split(data_dir, manifest, "train", config.max_len, config.train_window_stride)
  load_seconds = time.perf_counter() - start
  steps = FLAGS.reference_train_steps if reference else FLAGS.train_steps
  start = time.perf_counter()
  batches, epoch = train_steps.sample_batches(split, config, steps)
  sample_seconds = time.perf_counter() - start
  print(f"  train split: {split.num_windows:,} windows, {split.num_examples:,} prefixes "
        f"(loaded in {load_seconds:.1f} s, batches sampled in {sample_seconds:.1f} s)",
        flush=True)
  model.compile()
  model.make_train_function()
  start = time.perf_counter()
  phases = time_phases(model, train_steps.BatchStream(batches), len(batches))
  result = {"split_windows": split.num_windows, "split_prefixes": split.num_examples,
            "split_load_seconds": load_seconds, "sample_seconds": sample_seconds,
            "epoch": epoch, "phases": phases, "phases_seconds": time.perf_counter() - start,
            "sample": [train_steps.batch_info(b) for b in batches]}
  if reference and FLAGS.breakdown:
    typical = min(batches, key=lambda b: abs(train_steps.batch_info(b)["prefixes"]
                                             - epoch["prefixes_per_batch_mean"]))
    result["breakdown_batch"] = train_steps.batch_info(typical)
    result["breakdown_seconds"] = step_pieces.breakdown(model, typical, config)
    result["top_k_seconds"] = top_k_timings(typical, model.num_items, config.k2)
  return result


def run_point(items: int, sessions: int, config) -> dict:
  """Measures one grid point in this process; returns its result."""
  import keras

  from alterrec_tf.formats import schema
  from alterrec_tf.models import registry
  start = time.perf_counter()
  data_dir, manifest, _ = scale_data.cached_dataset(FLAGS.cache_dir, items, sessions,
                                                    **data_params())
  text = schema.load_text_embeddings(data_dir, manifest)
  config = train_steps.check_config(config.replace(data_dir=data_dir), manifest["num_items"])
  keras.utils.set_random_seed(config.seed)
  config = alter_config.resolve_seen_items(config, manifest)
  model = registry.build_model(config, manifest, text)
  built = {"rss_bytes": common.rss_bytes(), "seconds": time.perf_counter() - start}
  result = {"items": items, "sessions": sessions, "num_items": manifest["num_items"],
            "k2": config.k2, "machine": common.machine_info(), "built": built,
            "generator": manifest.get("generator")}
  print(f"[{items:,} items, {sessions:,} sessions] model built in {built['seconds']:.1f} s, "
        f"RSS {common.mib(built['rss_bytes'])}", flush=True)
  result["evaluation"] = measure_evaluation(model, data_dir, manifest, config)
  result["max_rss_after_evaluation_bytes"] = common.max_rss_bytes()
  e = result["evaluation"]
  print(f"  evaluation: {e['prefixes']:,} prefixes in {e['seconds']:.1f} s = "
        f"{common.fmt_rate(e['prefixes_per_second'])} prefixes/s (chunk "
        f"{e['chunk_size'] or 'none'}); peak RSS "
        f"{common.mib(result['max_rss_after_evaluation_bytes'])}", flush=True)
  if items <= FLAGS.max_train_items:
    reference = (items, sessions) == reference_point(grid_points())
    result["training"] = measure_training(model, data_dir, manifest, config, reference)
  result["max_rss_bytes"] = common.max_rss_bytes()
  result["seconds"] = time.perf_counter() - start
  return result


# --- the grid (parent process) ------------------------------------------------------
def prepare_datasets(points) -> dict:
  """Writes the datasets the grid lacks; {(items, sessions): seconds written}."""
  written = {}
  for items, sessions in points:
    _, manifest, seconds = scale_data.cached_dataset(FLAGS.cache_dir, items, sessions,
                                                     **data_params())
    written[(items, sessions)] = seconds
    interactions = manifest.get("generator", {}).get("interactions", {})
    print(f"dataset {items:,} items x {sessions:,} sessions: "
          + (f"written in {seconds:.1f} s" if seconds else "cached")
          + f" ({interactions.get('train', 0):,} training interactions)", flush=True)
  return written


def run_child(items: int, sessions: int) -> dict:
  """Runs one point in a subprocess (same flags); its result or an error."""
  with tempfile.TemporaryDirectory(prefix="alterrec_scale_") as scratch:
    path = os.path.join(scratch, "point.json")
    command = [sys.executable, os.path.abspath(__file__)] + sys.argv[1:] + [
        f"--point={items},{sessions}", f"--point_output={path}"]
    start = time.perf_counter()
    code = subprocess.call(command)
    wall = time.perf_counter() - start
    if code != 0 or not os.path.exists(path):
      return {"items": items, "sessions": sessions, "error": f"exit status {code}",
              "wall_seconds": wall}
    with open(path, encoding="utf-8") as f:
      result = json.load(f)
  result["wall_seconds"] = wall
  return result


def run_grid(config):
  machine = common.machine_info()
  print(common.machine_line(machine), flush=True)
  points = grid_points()
  reference = reference_point(points)
  start = time.perf_counter()
  written = prepare_datasets(points)
  results = []
  for items, sessions in points:
    result = run_child(items, sessions)
    result["reference"] = (items, sessions) == reference
    result["dataset_write_seconds"] = written[(items, sessions)]
    results.append(result)
  result = {
      "command": common.command_line(), "machine": machine,
      "load_average_end": [round(x, 2) for x in os.getloadavg()],
      "config": {k: getattr(config, k) for k in (
          "model", "embedding_dim", "id_encoder", "text_encoder", "num_layers", "num_heads",
          "k1", "k2", "batch_size", "eval_batch_size", "max_len", "train_window_stride",
          "eval_window_stride", "score_chunk_size", "seen_items", "random_negative_share")},
      "data": dict(data_params(), cache_dir=FLAGS.cache_dir),
      "train_steps": FLAGS.train_steps, "warmup": FLAGS.warmup,
      "reference_train_steps": FLAGS.reference_train_steps,
      "eval_prefixes": FLAGS.eval_prefixes, "eval_prefix_items": FLAGS.eval_prefix_items,
      "eval_max_seconds": FLAGS.eval_max_seconds,
      "max_train_items": FLAGS.max_train_items, "points": results,
      "per_doubling": scale_tables.doubling_rows(results, FLAGS.base_items,
                                                 FLAGS.base_sessions),
      "wall_seconds": time.perf_counter() - start,
  }
  scale_tables.print_tables(result)
  print(f"\ngrid wall time {result['wall_seconds']:.0f} s; results: "
        f"{common.write_json(FLAGS.output, result)}")
  return result


def main(argv):
  del argv
  config = alter_config.TrainConfig.from_flags()
  if FLAGS.from_json:
    with open(FLAGS.from_json, encoding="utf-8") as f:
      scale_tables.print_tables(json.load(f))
  elif FLAGS.point:
    items, sessions = (int(x) for x in FLAGS.point.split(","))
    common.write_json(FLAGS.point_output, run_point(items, sessions, config))
  else:
    run_grid(config)


if __name__ == "__main__":
  for _name, _value in SCRIPT_DEFAULTS.items():
    FLAGS.set_default(_name, _value)
  app.run(main, flags_parser=flagfiles.make_parser(flagfiles.PREPARE_FLAG_NAMES))
