"""Evaluation throughput: prefixes ranked per second over the whole catalogue.

  python benchmarks/eval_throughput.py --flagfile=configs/online_retail.flags \
      --data_dir=data/online_retail [--split=test] [--synthetic_items=40000] \
      [--max_seconds=60] [--output=benchmarks/results/eval_throughput.json]

Runs `alterrec_tf.evaluation.Evaluator` (what training runs after every epoch:
both towers' full-catalogue scores, the fused head, top-K of each head and the
keras-rs metrics) over every scored prefix of the split (windows of
--eval_window_stride, `eval_batch_size` windows per batch, as `train` builds
them) of --data_dir, with the model `train`
builds (every training flag is accepted; weights are the initial ones, which
does not change the cost). Then the same on a synthetic catalogue of
--synthetic_items items (the paper's scale: 40,000), 384-d text, a few
thousand test prefixes.

Printed per dataset: seconds of the whole split (warm: the scoring graph is
traced first on one batch, timed separately; a pass longer than --max_seconds
stops there and the whole split's seconds are estimated from the part done,
scaled by the analytic FLOPs of all windows over those done, marked "~"; pass
--max_seconds=0 for the exact figure), prefixes ranked per second,
analytic FLOPs (both towers' encoders over every window position and their
P x V x d scores; see benchmarks/common.py) and the achieved FLOP/s next to
the tf.matmul limit measured in the same run, and a breakdown on the first
--breakdown_batches batches: reading the batches, the towers' scores alone
(`score_heads`), the Evaluator's traced step (scores + top-K and whatever it
derives from them), and the full Evaluator call (plus its host-side work:
transfers, keras-rs metrics).
"""

import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

from alterrec_tf import config as alter_config
from alterrec_tf import flagfiles
from benchmarks import common

flags.DEFINE_string("split", "test", "Split of --data_dir to evaluate.")
flags.DEFINE_boolean("real", True, "Evaluate --data_dir (false: synthetic only).")
flags.DEFINE_integer("synthetic_items", 40000,
                     "Items of the synthetic catalogue (0: skip it).")
flags.DEFINE_integer("synthetic_sessions", 1500,
                     "Synthetic training sessions; the test split gets a fifth, "
                     "2-20 items each (~3,000 test prefixes).")
flags.DEFINE_integer("breakdown_batches", 20,
                     "Batches of the breakdown (0: no breakdown).")
flags.DEFINE_float("max_seconds", 60.0,
                   "Stop a split's timed pass after this many seconds (0: never) and "
                   "estimate the whole split from the part done, weighted by the "
                   "analytic FLOPs of the windows left; the table marks estimates.")
flags.DEFINE_integer("matmul_size", 2048, "Size of the square matmul microbenchmark.")
flags.DEFINE_string("output", os.path.join(common.RESULTS_DIR, "eval_throughput.json"),
                    "JSON results file.")

FLAGS = flags.FLAGS
DEFAULT_DATA_DIR = "data/online_retail"


def batch_flops(config, rows, width, prefixes, num_items, text_dim, tower_names):
  """Analytic FLOPs of scoring one evaluation batch [rows, width] holding
  `prefixes` scored prefixes (each tower's item matrix is recomputed per batch,
  as `score_heads` does)."""
  encoders = {"id": config.id_encoder, "text": config.text_encoder}
  total = {"items": 0.0, "encoder": 0.0, "scores": 0.0, "fusion": 0.0}
  for name in tower_names:
    part = common.tower_forward_flops(encoders[name], name, rows, width, prefixes, num_items,
                                      text_dim, config.embedding_dim, config.num_layers)
    for key, value in part.items():
      total[key] += value
  if len(tower_names) == 2:
    total["fusion"] = 3.0 * prefixes * num_items
  return total


def split_shapes(batches):
  """(rows, width, prefixes) of every batch of a split (reads the data only)."""
  return [(int(b["item_ids"].shape[0]), int(b["item_ids"].shape[1]),
           int(b["target_mask"].numpy().sum())) for b in batches]


def sum_flops(config, shapes, num_items, text_dim, tower_names):
  total = {}
  for rows, width, prefixes in shapes:
    for key, value in batch_flops(config, rows, width, prefixes, num_items, text_dim,
                                  tower_names).items():
      total[key] = total.get(key, 0.0) + value
  total["total"] = sum(total.values())
  return total


def evaluate_dataset(label, data_dir, manifest, text, config, peak, split_name):
  """Times the Evaluator over one split; returns the result dict."""
  import tensorflow as tf

  from alterrec_tf.data import windows as alter_data
  from alterrec_tf.models import registry as models
  from alterrec_tf.training import evaluation

  num_items = manifest["num_items"]
  text_dim = int(manifest.get("text_dim") or 0)
  if config.k2 >= num_items - 1:
    config = config.replace(k2=num_items - 2)
  start = time.perf_counter()
  split = alter_data.load_split(data_dir, manifest, split_name, config.max_len,
                                config.eval_window_stride)
  load_seconds = time.perf_counter() - start
  config = alter_config.resolve_seen_items(config, manifest)
  model = models.build_model(config, manifest, text)
  evaluator = evaluation.Evaluator(model, config.ks, config.mrr_k)
  batches = split.batches(config.eval_batch_size)
  start = time.perf_counter()
  shapes = split_shapes(batches)
  read_seconds = time.perf_counter() - start

  start = time.perf_counter()
  evaluator(batches.take(1))
  trace_seconds = time.perf_counter() - start
  seen = {"batches": 0, "windows": 0, "prefixes": 0, "complete": True}
  with common.PeakMemory() as memory:
    start = time.perf_counter()
    metrics = evaluator(_budgeted(batches, FLAGS.max_seconds, seen))
    seconds = time.perf_counter() - start
  windows, prefixes = seen["windows"], seen["prefixes"]
  flops = sum_flops(config, shapes[:seen["batches"]], num_items, text_dim, model.tower_names)
  whole = sum_flops(config, shapes, num_items, text_dim, model.tower_names)
  whole_seconds = seconds * whole["total"] / flops["total"]

  pieces = {}
  n = FLAGS.breakdown_batches
  if n:
    start = time.perf_counter()
    subset = list(batches.take(n))
    subset_read_seconds = time.perf_counter() - start
    sample_prefixes = sum(int(tf.reduce_sum(tf.cast(b["target_mask"], tf.int32)))
                          for b in subset)
    # a [P] reduction of each head: nothing large leaves the graph
    scores_only = tf.function(lambda b: {k: tf.reduce_max(v, axis=1) for k, v in
                                         model.score_heads(b)[0].items()},
                              input_signature=[evaluator._top_lists.input_signature[0]],
                              autograph=False)
    scores_only(subset[0])

    def run_all(fn):
      start = time.perf_counter()
      for b in subset:
        common.sync(fn(b))
      return time.perf_counter() - start

    pieces = {
        "batches": len(subset), "prefixes": sample_prefixes,
        "read_batches": subset_read_seconds,
        "scores": run_all(scores_only),
        "scores_and_top_k": run_all(evaluator._top_lists),
        "full_evaluator": _timed(lambda: evaluator(batches.take(n))),
    }
  return {
      "label": label, "data_dir": os.path.abspath(data_dir),
      "dataset": manifest.get("dataset_name"), "split": split_name,
      "num_items": num_items, "text_dim": text_dim,
      "eval_window_stride": config.eval_window_stride, "batches": len(shapes),
      "mean_batch_width": sum(w for _, w, _ in shapes) / max(len(shapes), 1),
      "split_windows": split.num_windows, "split_prefixes": split.num_examples,
      "read_split_seconds": read_seconds,
      "timed_windows": windows, "timed_prefixes": prefixes, "complete": seen["complete"],
      "split_load_seconds": load_seconds, "trace_seconds": trace_seconds,
      "timed_seconds": seconds, "whole_split_seconds": whole_seconds,
      "whole_split_seconds_is_estimate": not seen["complete"],
      "prefixes_per_second": prefixes / seconds,
      "flops": flops, "whole_split_flops": whole,
      "achieved_flops_per_second": flops["total"] / seconds,
      "fraction_of_matmul_peak": flops["total"] / seconds / peak,
      "peak_rss_bytes": memory.peak_rss, "peak_gpu_bytes": memory.peak_gpu,
      "breakdown_seconds": pieces,
      "fused_metrics_of_initial_weights": metrics.get("fused"),
  }


def _budgeted(batches, max_seconds, seen):
  """Yields the batches until `max_seconds` have passed, counting what it gave."""
  start = time.perf_counter()
  for batch in batches:
    if max_seconds and time.perf_counter() - start > max_seconds:
      seen["complete"] = False
      return
    seen["batches"] += 1
    seen["windows"] += int(batch["item_ids"].shape[0])
    seen["prefixes"] += int(batch["target_mask"].numpy().sum())
    yield batch


def _timed(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def synthetic_dataset(num_items, num_sessions):
  from tests import synthetic
  out_dir = os.path.join(tempfile.mkdtemp(prefix="alterrec_bench_"), f"synthetic_{num_items}")
  manifest = synthetic.write_dataset(out_dir, num_items=num_items + 1,
                                     num_sessions=num_sessions, text_dim=384,
                                     num_clusters=100, max_session_length=20, seed=0)
  return out_dir, manifest


def run(config):
  import keras

  from alterrec_tf.formats import schema
  machine = common.machine_info()
  print(common.machine_line(machine), flush=True)
  matmul = common.matmul_flops_per_second(FLAGS.matmul_size)
  peak = matmul["flops_per_second"]
  print(f"tf.matmul {FLAGS.matmul_size}^2 float32: {peak / 1e9:.1f} GFLOP/s", flush=True)
  keras.utils.set_random_seed(config.seed)
  results = []
  if FLAGS.real:
    data_dir = config.data_dir or DEFAULT_DATA_DIR
    try:
      manifest = schema.load_manifest(data_dir)
    except schema.DataError as error:
      raise SystemExit(f"error: {error} (or pass --noreal)") from None
    text = schema.load_text_embeddings(data_dir, manifest)
    results.append(evaluate_dataset(manifest.get("dataset_name"), data_dir, manifest, text,
                                    config, peak, FLAGS.split))
    print(_line(results[-1]), flush=True)
  if FLAGS.synthetic_items:
    start = time.perf_counter()
    data_dir, manifest = synthetic_dataset(FLAGS.synthetic_items, FLAGS.synthetic_sessions)
    print(f"synthetic catalogue written in {time.perf_counter() - start:.1f} s", flush=True)
    try:
      text = schema.load_text_embeddings(data_dir, manifest)
      results.append(evaluate_dataset(f"synthetic {FLAGS.synthetic_items:,} items", data_dir,
                                      manifest, text, config, peak, "test"))
    finally:
      shutil.rmtree(os.path.dirname(data_dir), ignore_errors=True)
    print(_line(results[-1]), flush=True)
  result = {
      "command": common.command_line(), "machine": machine, "matmul": matmul,
      "config": {k: getattr(config, k) for k in (
          "model", "embedding_dim", "id_encoder", "text_encoder", "num_layers", "num_heads",
          "eval_batch_size", "eval_window_stride", "max_len", "ks", "mrr_k")},
      "datasets": results, "process_max_rss_bytes": common.max_rss_bytes(),
  }
  print_tables(result)
  print(f"results: {common.write_json(FLAGS.output, result)}")
  return result


def _line(r):
  return (f"{r['label']}: {r['timed_prefixes']:,} of {r['split_prefixes']:,} prefixes in "
          f"{r['timed_seconds']:.1f} s = {r['prefixes_per_second']:,.0f} prefixes/s; whole "
          f"split {'~' if r['whole_split_seconds_is_estimate'] else ''}"
          f"{r['whole_split_seconds']:.1f} s")


def print_tables(result):
  config = result["config"]
  print(f"\nEvaluation throughput: {config['model']}, d={config['embedding_dim']}, ID "
        f"{config['id_encoder']}, text {config['text_encoder']}, {config['eval_batch_size']} "
        f"windows/batch, window stride {config['eval_window_stride']}, max_len "
        f"{config['max_len']}; "
        f"{common.machine_line(result['machine'])}")
  rows = []
  for r in result["datasets"]:
    estimate = r["whole_split_seconds_is_estimate"]
    rows.append([r["label"], f"{r['num_items']:,}", f"{r['split_windows']:,}",
                 f"{r['split_prefixes']:,}",
                 ("~" if estimate else "") + f"{r['whole_split_seconds']:.1f} s"
                 + (f" (est. from {r['timed_prefixes']:,} prefixes in "
                    f"{r['timed_seconds']:.0f} s)" if estimate else "")
                 + f" +{r['trace_seconds']:.1f} s trace",
                 common.fmt_rate(r["prefixes_per_second"]),
                 common.fmt_flops(r["whole_split_flops"]["total"]),
                 f"{r['achieved_flops_per_second'] / 1e9:.1f}",
                 f"{100 * r['fraction_of_matmul_peak']:.0f}%", common.mib(r["peak_rss_bytes"])])
  print(common.table(["dataset", "items", "windows", "prefixes", "whole split",
                      "prefixes/s", "FLOPs (split)", "GFLOP/s", "of matmul peak", "peak RSS"],
                     rows))
  print(f"matmul limit: tf.matmul {result['matmul']['size']}^2 float32 = "
        f"{result['matmul']['flops_per_second'] / 1e9:.1f} GFLOP/s")
  rows = []
  for r in result["datasets"]:
    b = r["breakdown_seconds"]
    if not b:
      continue
    per = 1e3 / b["prefixes"] * 1000
    rows.append([r["label"], f"{b['batches']} batches, {b['prefixes']:,} prefixes",
                 f"{b['read_batches'] * per:.1f}", f"{b['scores'] * per:.1f}",
                 f"{(b['scores_and_top_k'] - b['scores']) * per:.1f}",
                 f"{(b['full_evaluator'] - b['scores_and_top_k']) * per:.1f}",
                 f"{b['full_evaluator'] * per:.1f}"])
  if rows:
    print("\nWhere evaluation time goes (ms per 1,000 prefixes):")
    print(common.table(["dataset", "sample", "read batches", "scores (both towers, fused)",
                        "+ top-K (rest of the traced step)",
                        "+ host side (transfers, metrics)", "full evaluator"], rows))


def main(argv):
  del argv
  run(alter_config.TrainConfig.from_flags())


if __name__ == "__main__":
  app.run(main, flags_parser=flagfiles.make_parser(flagfiles.PREPARE_FLAG_NAMES))
