"""Training throughput of AlterRec: one causal pass per window vs the per-prefix
reference, achieved FLOP/s vs this machine's matmul limit, and where a step's
time goes.

  python benchmarks/train_throughput.py --flagfile=configs/online_retail.flags \
      --data_dir=data/online_retail [--num_batches=8] [--reference_steps=2] \
      [--output=benchmarks/results/train_throughput.json]

Every training flag of `alterrec_tf.train` is accepted (same flagfile), so the
model is the one `train` builds (models.build_model; defaults: d=300, ID mean
encoder, text Transformer 2x2, k1=6, k2=2000, 64 windows per batch, max_len 50).
`--synthetic` runs on a generated dataset of Online Retail's size instead.

Batches: --num_batches full batches of epoch 0 of the real training split
(SplitData.epochs_of_batches: shuffled, length-bucketed and trimmed, as fit
sees them), taken at evenly spaced quantiles of their number of scored prefixes
so that short and long windows are represented as in the epoch, held in memory
so input is not timed (the input pipeline is timed on its own below). For each
phase of Algorithm 1 (ID or text tower; random or the partner's hard negatives):

  one pass    the model's compiled Keras train_function (what fit runs) on the
              window batches: one causal pass per window gives every prefix.
              --warmup untimed steps, then each sample batch --repeats times.
  per-prefix  the same train_function on the --reference_steps sample batches
              closest to the epoch's mean prefixes per batch, expanded by
              `alterrec_tf.per_prefix.expand_to_prefixes`
              (one row per scored prefix, padded to max_len: the authors' input
              format). Same prefixes per step, same loss. The expansion is done
              before timing, as the reference's loader precomputes its rows; the
              function is traced on a tiny expanded batch first (not timed). A
              per-prefix row costs the same whatever batch it comes from (always
              max_len long), so a few steps measure its rate.

Per phase: prefixes per second (scored prefixes / seconds, summed over the
timed steps), median step seconds, peak RSS during the steps (sampled; GPU peak
on a GPU), analytic FLOPs (formula in benchmarks/common.py, with each batch's
real width) and the achieved FLOP/s, next to the dense-matmul FLOP/s of a plain
tf.matmul measured in the same run. The one-pass gain is the one-pass rate over
the sample / the per-prefix rate. The schedule row weights the phases by the
epochs each gets (m_random, m_gap, m_max). A breakdown times the pieces of the
hard-negative steps separately (partner scores, top_k over them, the trained
tower's forward and forward+backward, the optimizer), and the input pipeline
(SplitData.epochs_of_batches) is timed alone.
"""

import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

from alterrec_tf import config as alter_config
from alterrec_tf import flagfiles
from benchmarks import (
  common,
  step_pieces,
)
from benchmarks.train_steps import (
  BatchStream,
  batch_info,
  check_config,
  sample_batches,
  time_train_function,
)

flags.DEFINE_integer("num_batches", 8, "Sample batches spread over epoch 0.")
flags.DEFINE_integer("repeats", 1, "Timed passes over the sample per phase (one pass).")
flags.DEFINE_integer("warmup", 2, "Untimed one-pass steps per phase first.")
flags.DEFINE_integer("reference_steps", 2,
                     "Timed per-prefix steps per phase (0: skip the reference). Each "
                     "costs ~15-30x a one-pass step in the text phases.")
flags.DEFINE_integer("reference_warmup", 0,
                     "Untimed full per-prefix steps per phase first (tracing is done "
                     "once on a tiny batch, not counted).")
flags.DEFINE_boolean("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_boolean("breakdown", True, "Time the pieces of the hard-negative steps.")
flags.DEFINE_integer("matmul_size", 2048, "Size of the square matmul microbenchmark.")
flags.DEFINE_boolean("synthetic", False,
                     "Generate an Online-Retail-sized synthetic dataset instead of "
                     "reading --data_dir (3,700 items, 14k sessions, 384-d text).")
flags.DEFINE_string("output", os.path.join(common.RESULTS_DIR, "train_throughput.json"),
                    "JSON results file.")

FLAGS = flags.FLAGS
DEFAULT_DATA_DIR = "data/online_retail"
PHASES = (("id", False), ("text", False), ("id", True), ("text", True))
_SCRATCH = []  # temporary folders (synthetic data), deleted at exit


def synthetic_dataset(out_dir, num_items=3701, num_sessions=14000, text_dim=384,
                      max_session_length=48, seed=0):
  """An Online-Retail-sized prepared dataset (mean session length ~25)."""
  from tests import synthetic
  return synthetic.write_dataset(out_dir, num_items=num_items, num_sessions=num_sessions,
                                 text_dim=text_dim, num_clusters=40,
                                 max_session_length=max_session_length, seed=seed)


def load_dataset(config):
  """(data_dir, manifest, text table) of --data_dir, or of a synthetic dataset."""
  import tempfile

  from alterrec_tf.formats import schema
  data_dir = config.data_dir or DEFAULT_DATA_DIR
  if FLAGS.synthetic:
    scratch = tempfile.mkdtemp(prefix="alterrec_bench_")
    _SCRATCH.append(scratch)
    data_dir = os.path.join(scratch, "synthetic")
    start = time.perf_counter()
    synthetic_dataset(data_dir)
    print(f"synthetic dataset written to {data_dir} in {time.perf_counter() - start:.1f} s")
  try:
    manifest = schema.load_manifest(data_dir)
  except schema.DataError as error:
    raise SystemExit(f"error: {error} (or pass --synthetic)") from None
  return data_dir, manifest, schema.load_text_embeddings(data_dir, manifest)


def reference_indices(batches, epoch, count):
  """The `count` sample batches closest to the epoch's mean prefixes per batch."""
  mean = epoch["prefixes_per_batch_mean"]
  order = sorted(range(len(batches)),
                 key=lambda i: (abs(batch_info(batches[i])["prefixes"] - mean), i))
  return sorted(order[:count])


def summarise(timed, config, tower, hard, num_items, text_dim, peak, memory):
  """Rates, FLOPs and memory of a list of (seconds, batch info)."""
  seconds = [t for t, _ in timed]
  prefixes = [i["prefixes"] for _, i in timed]
  flops = [common.train_step_flops(config.replace(max_len=i["width"]), tower, hard,
                                   i["rows"], i["prefixes"], num_items, text_dim)
           for _, i in timed]
  total_flops = {k: sum(f[k] for f in flops) for k in flops[0]}
  achieved = total_flops["total"] / sum(seconds)
  return {
      "prefixes_per_second": sum(prefixes) / sum(seconds),
      "step_seconds_median": common.median(seconds), "step_seconds": seconds,
      "steps": len(seconds), "prefixes_per_step_mean": sum(prefixes) / len(prefixes),
      "rows_per_step_mean": sum(i["rows"] for _, i in timed) / len(timed),
      "width_mean": sum(i["width"] for _, i in timed) / len(timed),
      "peak_rss_bytes": memory.peak_rss, "rss_growth_bytes": memory.peak_rss - memory.start_rss,
      "peak_gpu_bytes": memory.peak_gpu,
      "flops_per_step_mean": {k: v / len(timed) for k, v in total_flops.items()},
      "achieved_flops_per_second": achieved, "fraction_of_matmul_peak": achieved / peak,
  }


def schedule_weights(config, tower_names):
  """Epochs spent in each (tower, hard) phase over m_max epochs."""
  from alterrec_tf.training import schedule
  weights = {}
  for epoch in range(config.m_max):
    phase, hard = schedule.phase_for_epoch(epoch, config, tower_names)
    key = f"{'id' if phase == 0 else 'text'}/{'hard' if hard else 'random'}"
    weights[key] = weights.get(key, 0) + 1
  return weights


def run(config):
  import keras

  from alterrec_tf.data import windows as alter_data
  from alterrec_tf.formats import schema
  from alterrec_tf.models import registry as models

  machine = common.machine_info()
  print(common.machine_line(machine), flush=True)
  matmul = common.matmul_flops_per_second(FLAGS.matmul_size)
  peak = matmul["flops_per_second"]
  print(f"tf.matmul {FLAGS.matmul_size}x{FLAGS.matmul_size} float32: "
        f"{peak / 1e9:.1f} GFLOP/s (median)", flush=True)

  data_dir, manifest, text = load_dataset(config)
  num_items = manifest["num_items"]
  text_dim = int(manifest.get("text_dim") or 0)
  config = check_config(config.replace(data_dir=data_dir), num_items)
  config = alter_config.resolve_seen_items(config, manifest)
  keras.utils.set_random_seed(config.seed)
  start = time.perf_counter()
  split = alter_data.load_split(data_dir, manifest, "train", config.max_len,
                                config.train_window_stride)
  load_seconds = time.perf_counter() - start
  pipeline = step_pieces.input_pipeline_rate(split, config)
  batches, epoch = sample_batches(split, config, FLAGS.num_batches)
  model = models.build_model(config, manifest, text,
                             train_files=schema.split_files(data_dir, manifest, "train"))
  model.compile(jit_compile=FLAGS.jit_compile)
  model.make_train_function()
  windows = BatchStream(batches)
  reference = None
  chosen = reference_indices(batches, epoch, FLAGS.reference_steps)
  if FLAGS.reference_steps:
    reference = BatchStream([batches[i] for i in chosen], expand=True, max_len=config.max_len)
  sample_prefixes = sum(i["prefixes"] for i in windows.infos) / len(windows.infos)
  print(f"{manifest.get('dataset_name')}: {num_items} items, text {text_dim}-d, "
        f"{split.num_windows} train windows, {split.num_examples} prefixes "
        f"(loaded in {load_seconds:.1f} s); {epoch['batches']} batches/epoch of "
        f"{epoch['prefixes_per_batch_mean']:.0f} prefixes on average, the "
        f"{len(batches)} sampled: {sample_prefixes:.0f}", flush=True)

  results = {}
  phases = [(t, h) for t, h in PHASES if t in model.tower_names
            and (not h or len(model.tower_names) == 2)]
  for tower, hard in phases:
    model.phase.assign(0 if tower == "id" else 1)
    model.hard_negatives.assign(int(hard))
    key = f"{tower}/{'hard' if hard else 'random'}"
    with common.PeakMemory() as memory:
      timed = time_train_function(model, windows, FLAGS.warmup,
                                  FLAGS.repeats * len(batches))
    entry = {"one_pass": summarise(timed, config, tower, hard, num_items, text_dim, peak,
                                   memory)}
    line = (f"{key}: one pass {common.fmt_rate(entry['one_pass']['prefixes_per_second'])} "
            f"prefixes/s")
    if reference is not None:
      with common.PeakMemory() as memory:
        ref_timed = time_train_function(model, reference, FLAGS.reference_warmup,
                                        FLAGS.reference_steps)
      entry["per_prefix"] = summarise(ref_timed, config, tower, hard, num_items, text_dim,
                                      peak, memory)
      entry["speedup"] = (entry["one_pass"]["prefixes_per_second"]
                          / entry["per_prefix"]["prefixes_per_second"])
      same = [(t, i) for t, i in timed if i["index"] in chosen]
      entry["speedup_same_batches"] = (
          sum(i["prefixes"] for _, i in same) / sum(t for t, _ in same)
          / entry["per_prefix"]["prefixes_per_second"])
      line += (f", per-prefix {common.fmt_rate(entry['per_prefix']['prefixes_per_second'])} "
               f"prefixes/s: x{entry['speedup']:.1f}")
    results[key] = entry
    print(line, flush=True)

  weights = schedule_weights(config, model.tower_names)
  overall = {}
  for path in ("one_pass", "per_prefix"):
    if all(path in results.get(k, {}) for k in weights):
      seconds_per_prefix = sum(n / results[k][path]["prefixes_per_second"]
                               for k, n in weights.items())
      overall[path] = sum(weights.values()) / seconds_per_prefix
  if len(overall) == 2:
    overall["speedup"] = overall["one_pass"] / overall["per_prefix"]

  typical = batches[reference_indices(batches, epoch, 1)[0]]  # closest to the mean
  pieces = step_pieces.breakdown(model, typical, config) if (
      FLAGS.breakdown and len(model.tower_names) == 2) else {}
  result = {
      "command": common.command_line(), "machine": machine, "matmul": matmul,
      "dataset": {"data_dir": os.path.abspath(data_dir), "name": manifest.get("dataset_name"),
                  "num_items": num_items, "text_dim": text_dim,
                  "train_windows": split.num_windows, "train_prefixes": split.num_examples,
                  "split_load_seconds": load_seconds, "epoch": epoch},
      "config": {k: getattr(config, k) for k in (
          "model", "embedding_dim", "id_encoder", "text_encoder", "num_layers", "num_heads",
          "dropout", "k1", "k2", "batch_size", "max_len", "train_window_stride", "m_random",
          "m_gap", "m_max", "random_negative_share")},
      "jit_compile": FLAGS.jit_compile, "num_batches": len(batches), "repeats": FLAGS.repeats,
      "warmup": FLAGS.warmup, "reference_steps": FLAGS.reference_steps,
      "sample": [batch_info(b) for b in batches], "reference_sample_indices": chosen,
      "phases": results,
      "schedule_epochs": weights, "overall_prefixes_per_second": overall,
      "breakdown_seconds": pieces, "breakdown_batch": batch_info(typical),
      "input_pipeline": pipeline, "process_max_rss_bytes": common.max_rss_bytes(),
  }
  print_tables(result)
  print(f"results: {common.write_json(FLAGS.output, result)}")
  return result


def print_tables(result):
  config, peak = result["config"], result["matmul"]["flops_per_second"]
  print(f"\nTraining throughput: {result['dataset']['name']} "
        f"({result['dataset']['num_items']} items), {config['model']}, "
        f"d={config['embedding_dim']}, "
        f"ID {config['id_encoder']}, text {config['text_encoder']}, k1={config['k1']}, "
        f"k2={config['k2']}, {config['batch_size']} windows/batch, max_len {config['max_len']}, "
        f"XLA {'on' if result['jit_compile'] else 'off'}; "
        f"{common.machine_line(result['machine'])}")
  rows = []
  for key, entry in result["phases"].items():
    for path in ("one_pass", "per_prefix"):
      if path not in entry:
        continue
      e = entry[path]
      rows.append([key, path.replace("_", "-"), f"{e['steps']}",
                   f"{e['rows_per_step_mean']:.0f} x {e['width_mean']:.0f}",
                   f"{e['prefixes_per_step_mean']:.0f}",
                   f"{1e3 * e['step_seconds_median']:.0f} ms",
                   common.fmt_rate(e["prefixes_per_second"]),
                   f"x{entry['speedup']:.1f}" if path == "one_pass" and "speedup" in entry
                   else "", common.fmt_flops(e["flops_per_step_mean"]["total"]),
                   f"{e['achieved_flops_per_second'] / 1e9:.1f}",
                   f"{100 * e['fraction_of_matmul_peak']:.0f}%",
                   common.mib(e["peak_rss_bytes"])
                   + (f" / GPU {common.mib(e['peak_gpu_bytes'])}" if e["peak_gpu_bytes"] else "")])
  overall = result["overall_prefixes_per_second"]
  schedule = ", ".join(f"{k} {n}" for k, n in result["schedule_epochs"].items())
  for path in ("one_pass", "per_prefix"):
    if path in overall:
      rows.append([f"schedule ({schedule} epochs)", path.replace("_", "-"), "", "", "", "",
                   common.fmt_rate(overall[path]),
                   f"x{overall['speedup']:.1f}" if path == "one_pass" and "speedup" in overall
                   else "", "", "", "", ""])
  print(common.table(["phase", "path", "steps", "rows x width", "prefixes/step",
                      "median step", "prefixes/s", "one-pass gain", "FLOPs/step", "GFLOP/s",
                      "of matmul peak", "peak RSS"], rows))
  print(f"matmul limit: tf.matmul {result['matmul']['size']}^2 float32 = "
        f"{peak / 1e9:.1f} GFLOP/s (median of 10; best "
        f"{result['matmul']['best_flops_per_second'] / 1e9:.1f})")
  step_pieces.print_tables(result, config["k2"])


def main(argv):
  del argv
  if FLAGS.data_dir is None:
    FLAGS.data_dir = DEFAULT_DATA_DIR
  try:
    run(alter_config.TrainConfig.from_flags())
  finally:
    for folder in _SCRATCH:
      shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
  app.run(main, flags_parser=flagfiles.make_parser(flagfiles.PREPARE_FLAG_NAMES))
