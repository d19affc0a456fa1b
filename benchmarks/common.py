"""Shared helpers of the benchmark scripts: timing, memory, the machine's matmul
limit, analytic FLOP counts, tables and JSON.

Nothing here is timed by the test suite. Every script prints a Markdown table
and writes its figures as JSON under benchmarks/results/ (git-ignored).
"""

import json
import os
import platform
import resource
import statistics
import sys
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)


# --- machine --------------------------------------------------------------------
def machine_info() -> dict:
  """CPU count, CPU model, load, versions and accelerators of this run."""
  import tensorflow as tf
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  try:
    load = os.getloadavg()
  except OSError:
    load = (float("nan"),) * 3
  gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
  return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
          "tensorflow": tf.__version__, "gpus": gpus,
          "load_average_1_5_15": [round(x, 2) for x in load],
          "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
          "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()}


def machine_line(info: dict) -> str:
  gpu = f", GPU: {', '.join(info['gpus'])}" if info["gpus"] else ", no GPU"
  return (f"{info['cpus']} CPUs ({info['cpu_model']}){gpu}, TF {info['tensorflow']}, "
          f"load average {info['load_average_1_5_15'][0]:.1f} at start")


def on_gpu() -> bool:
  import tensorflow as tf
  return bool(tf.config.list_physical_devices("GPU"))


# --- timing ---------------------------------------------------------------------
def sync(value):
  """Blocks until `value` (a tensor or nested structure of tensors) is computed."""
  import tensorflow as tf
  for leaf in tf.nest.flatten(value):
    if hasattr(leaf, "numpy"):
      leaf.numpy()
  return value


def time_calls(fn, warmup: int, repeats: int):
  """Seconds of each of `repeats` calls of `fn()` after `warmup` untimed ones.

  `fn` must return something `sync` can wait for (so asynchronous GPU work is
  counted in the call that launched it).
  """
  for _ in range(warmup):
    sync(fn())
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    sync(fn())
    seconds.append(time.perf_counter() - start)
  return seconds


def median(values):
  return float(statistics.median(values)) if values else float("nan")


def spread(values) -> str:
  """'median (min-max)' in milliseconds."""
  if not values:
    return "-"
  return f"{1e3 * median(values):.0f} ms ({1e3 * min(values):.0f}-{1e3 * max(values):.0f})"


# --- memory ---------------------------------------------------------------------
def rss_bytes() -> int:
  """Current resident set size of this process."""
  try:
    with open("/proc/self/statm", encoding="utf-8") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except OSError:
    return 0


def max_rss_bytes() -> int:
  """Peak RSS of this process since it started (getrusage)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
  """Peak host RSS (sampled every `interval` s by a thread) and, on a GPU, the
  peak device memory, over a `with` block.

  getrusage gives only the process-lifetime peak, which cannot tell one
  configuration from the next in one run; sampling /proc/self/statm can.
  """

  def __init__(self, interval: float = 0.002):
    self.interval = interval
    self.peak_rss = 0
    self.start_rss = 0
    self.peak_gpu = None
    self._stop = threading.Event()
    self._thread = None

  def _sample(self):
    while not self._stop.is_set():
      self.peak_rss = max(self.peak_rss, rss_bytes())
      time.sleep(self.interval)

  def __enter__(self):
    import tensorflow as tf
    self.start_rss = self.peak_rss = rss_bytes()
    if on_gpu():
      tf.config.experimental.reset_memory_stats("GPU:0")
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    import tensorflow as tf
    self._stop.set()
    self._thread.join()
    self.peak_rss = max(self.peak_rss, rss_bytes())
    if on_gpu():
      self.peak_gpu = tf.config.experimental.get_memory_info("GPU:0")["peak"]
    return False


def mib(n) -> str:
  return "-" if n is None else f"{n / 2 ** 20:,.0f} MiB"


# --- the machine's limit -------------------------------------------------------
def matmul_flops_per_second(size: int = 2048, dtype: str = "float32", repeats: int = 10):
  """Dense-matmul FLOP/s this machine reaches: median over `repeats` products of
  two [size, size] matrices (2 size^3 FLOPs each), on the default device."""
  import tensorflow as tf
  a = tf.random.stateless_normal([size, size], seed=[1, 2], dtype=dtype)
  b = tf.random.stateless_normal([size, size], seed=[3, 4], dtype=dtype)
  product = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)[:1, :1]))
  seconds = time_calls(lambda: product(a, b), warmup=2, repeats=repeats)
  flops = 2.0 * size ** 3
  return {"size": size, "dtype": dtype, "median_seconds": median(seconds),
          "flops_per_second": flops / median(seconds),
          "best_flops_per_second": flops / min(seconds)}


# --- analytic FLOPs -------------------------------------------------------------
# Counted: matrix products (2 FLOPs per multiply-add) and attention. Elementwise
# work (LayerNorm, ReLU, dropout, softmax, Adam) is O(elements), a few % at most,
# and is left out; top_k does comparisons, not FLOPs, and is timed separately.
#
# Symbols: R sequences (rows) per step and L positions each, N = R*L tokens
# (every position is computed, padding included), P scored prefixes, V items
# (with padding), T text width (SBERT), d the embedding size, n layers.
#
#   text item encoder   fwd 2 V T d                  (Dense on the frozen table)
#   ID item encoder     fwd 0                        (LayerNorm of the table)
#   Transformer layer   fwd 24 N d^2 + 4 R L^2 d     (Q,K,V,O: 8 N d^2;
#                                                     FFN d->4d->d: 16 N d^2;
#                                                     QK^T and AV: 4 R L^2 d)
#   mean encoder        fwd 0                        (cumulative sums)
#   full-catalogue      fwd 2 P V d                  (scores of every item)
#   sampled softmax     fwd ~5 P (K+1)               (gather, logsumexp)
#   backward            2x fwd of the trained tower, except the first Dense of
#                       the text item encoder (1x: no gradient w.r.t. the frozen
#                       SBERT table) and the ID table gather (0).
# The hard-negative phases add the partner's forward (item encoder, session
# encoder, full-catalogue scores), with no backward.
def tower_forward_flops(kind_encoder: str, item_kind: str, rows: int, length: int,
                        prefixes: int, num_items: int, text_dim: int, dim: int,
                        num_layers: int) -> dict:
  """FLOPs of one tower's forward: item encoder, session encoder, scores."""
  items = 2.0 * num_items * text_dim * dim if item_kind == "text" else 0.0
  tokens = rows * length
  if kind_encoder == "transformer":
    encoder = num_layers * (24.0 * tokens * dim * dim + 4.0 * rows * length * length * dim)
  else:
    encoder = 0.0
  scores = 2.0 * prefixes * num_items * dim
  return {"items": items, "encoder": encoder, "scores": scores}


def train_step_flops(config, tower: str, hard: bool, rows: int, prefixes: int,
                     num_items: int, text_dim: int) -> dict:
  """Analytic FLOPs of one AlterRec train step (see the formula above).

  Args:
    config: a TrainConfig.
    tower: "id" or "text", the tower that trains.
    hard: hard-negative phase (partner forward + ranking) or random negatives.
    rows: sequences fed (windows, or prefixes for the per-prefix reference).
    prefixes: scored prefixes in the step.
  """
  encoders = {"id": config.id_encoder, "text": config.text_encoder}
  common = dict(rows=rows, length=config.max_len, prefixes=prefixes, num_items=num_items,
                text_dim=text_dim, dim=config.embedding_dim, num_layers=config.num_layers)
  active = tower_forward_flops(encoders[tower], tower, **common)
  forward = sum(active.values())
  negatives = config.k2 - config.k1
  loss = 5.0 * prefixes * (negatives + 1)
  backward = 2.0 * (active["encoder"] + active["scores"]) + 1.0 * active["items"]
  partner = 0.0
  if hard:
    other = "text" if tower == "id" else "id"
    partner = sum(tower_forward_flops(encoders[other], other, **common).values())
  return {"active_forward": forward, "loss": loss, "backward": backward,
          "partner_forward": partner, "total": forward + loss + backward + partner,
          "active_encoder_forward": active["encoder"],
          "active_scores_forward": active["scores"],
          "active_items_forward": active["items"]}


# --- output ---------------------------------------------------------------------
def table(header, rows) -> str:
  """A Markdown table."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def write_json(path: str, value) -> str:
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)
  return path


def command_line() -> str:
  """The command that produced this result (for BUILD_NOTES.md)."""
  return " ".join(["python"] + [os.path.relpath(sys.argv[0], REPO_ROOT)] + sys.argv[1:])


def fmt_rate(x) -> str:
  if x != x:  # nan
    return "-"
  return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def fmt_flops(x) -> str:
  return f"{x / 1e9:,.1f} G"
