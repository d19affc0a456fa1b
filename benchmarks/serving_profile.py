"""Where the time of one serving call goes: a per-op profile of an export (issue 36).

  python benchmarks/serving_profile.py --export_dir=models/alterrec \\
      [--data_dir=data/online_retail] [--batch_size=1] [--calls=300] \\
      [--signature=serving_default] [--output=benchmarks/results/serving_profile.json]

Loads the SavedModel as `serving_latency.py` does, warms it up, and runs
`calls` calls of the signature (`batch_size` sessions each, the test-session
prefixes of `serving_requests.prefix_sessions` with --data_dir, else random)
under the TensorFlow profiler (`tf.profiler.experimental`). The trace's op
events (one per executed kernel: name scope path and op type) are summed per
piece of the serving graph and divided by the number of calls:

  ids in          request ids -> dense indices (raw ids: the vocabulary lookup)
  compaction      the sessions' items moved left (ragged boolean mask)
  length buckets  dynamic_partition, the gathers and the stitch of the buckets
  windows         each encoded batch's window, padding and item-vector gather
  ID / text tower the session encoders (the Keras layers id_sessions / text_sessions)
  stacked         both towers' Transformer encoders as one computation
                  (`serving.encoders.StackedTransformer`)
  fused matmul    q @ item_matrix^T with its popularity and padding columns
  seen items      the request's items scored out
  top k           tf.math.top_k (and, chunked, the running top k's merge)
  ids out         dense indices -> raw ids (the vocabulary lookup)
  other           the rest (casts, concat, the function's inputs and outputs)

The pieces are read from the graph's name scopes (`serving.module.SCOPE_*`),
and, for an export written before they existed, from the op names and types
alone. Ops of the two towers may run at the same time (inter-op threads), so
the op times add up to more or less than a call's wall time; the difference is
what TensorFlow spends outside kernels (dispatch, executor, inputs/outputs).
A kernel's time includes any wait for a core the machine's other load took:
the 1-minute load average is printed beside the table.
"""

import collections
import glob
import json
import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL first)

flags.DEFINE_string("export_dir", None, "A version folder, or its parent (highest version).")
flags.DEFINE_string("data_dir", None, "Prepared dataset whose test-session prefixes are "
                    "the requests (default: random sessions).")
flags.DEFINE_integer("batch_size", 1, "Sessions per call.")
flags.DEFINE_integer("calls", 300, "Profiled calls.")
flags.DEFINE_integer("warmup_calls", 30, "Untimed calls first.")
flags.DEFINE_string("signature", "serving_default", "Signature to profile.")
flags.DEFINE_integer("seed", 0, "Seed of the sessions.")
flags.DEFINE_string("output", os.path.join(common.RESULTS_DIR, "serving_profile.json"),
                    "JSON results file ('' = none).")

PIECES = ("ids in", "compaction", "length buckets", "windows", "ID tower encoder",
          "text tower encoder", "stacked session encoders", "fused matmul", "seen items",
          "top k", "ids out", "other")
# name scope of serving.module -> piece (the innermost scope that names one wins)
SCOPES = {"ids_in": "ids in", "compact": "compaction", "length_buckets": "length buckets",
          "windows": "windows", "scores": "fused matmul", "seen_items": "seen items",
          "top_k": "top k", "ids_out": "ids out"}
# profiler events that are not kernels (the call around them)
FRAMEWORK_EVENTS = ("ExecutorState::Process", "signature_wrapper", "TFE_Py_Execute",
                    "EagerExecute", "EagerLocalExecute", "EagerKernelExecute",
                    "KernelAndDeviceFunc::Run", "EagerCopyToDevice", "FunctionRun",
                    "ParallelFor", "ExecutorDoneCallback", "Task Environment", "ThreadpoolListener")


def piece_of(path: str, op_type: str) -> str:
  """The piece of the serving graph an op belongs to (see the module docstring)."""
  if "id_sessions" in path:
    return "ID tower encoder"
  if "text_sessions" in path:
    return "text tower encoder"
  if "stacked_sessions" in path:
    return "stacked session encoders"
  for part in reversed(path.split("/")):
    if part in SCOPES:
      return SCOPES[part]
  # exports written before the scopes: op types and names of the old graph
  if op_type in ("DynamicPartition", "DynamicStitch", "LowerBound", "RaggedGather"):
    return "length buckets"
  if op_type == "TopKV2":
    return "top k"
  if op_type.startswith("LookupTableFind"):
    return "ids out" if "None_Lookup" in path else "ids in"
  if op_type == "TensorScatterUpdate" or "RaggedValueRowIds" in path:
    return "seen items"
  if op_type == "MatMul" or path.endswith("MatMul/ReadVariableOp"):
    return "fused matmul"
  if "RaggedToTensor" in path or op_type in ("ResourceGather", "Pad"):
    return "windows"
  if "boolean_mask" in path or "RaggedMask" in path:
    return "compaction"
  return "other"


def op_events(xspace):
  """[(op name path, op type, picoseconds)] of the kernels of a trace (host plane)."""
  events = []
  for plane in xspace.planes:
    metadata = plane.event_metadata
    for line in plane.lines:
      for event in line.events:
        name = metadata[event.metadata_id].name
        if ":" not in name or name.startswith(FRAMEWORK_EVENTS):
          continue
        path, op_type = name.rsplit(":", 1)
        events.append((path, op_type, event.duration_ps))
  return events


def profile(version_dir: str, data_dir=None, batch_size: int = 1, calls: int = 300,
            warmup_calls: int = 30, signature: str = "serving_default", seed: int = 0) -> dict:
  """{"pieces": {piece: {"us_per_call", "ops_per_call"}}, "wall_ms_per_call", ...}."""
  import numpy as np
  import tensorflow as tf
  import tensorflow_text  # noqa: F401  (registers the ops of the export's text signatures)
  from tensorflow.tsl.profiler.protobuf import xplane_pb2

  from benchmarks import serving_requests
  with open(os.path.join(version_dir, "assets.extra", "alterrec_export.json"),
            encoding="utf-8") as f:
    info = json.load(f)
  function = tf.saved_model.load(version_dir).signatures[signature]
  rng = np.random.default_rng(seed)
  count = batch_size * (calls + 1)
  ids = serving_requests.sessions(rng, count, info["num_items"], info["max_len"], data_dir)
  requests = [tf.constant(ids[i * batch_size:(i + 1) * batch_size]) for i in range(calls + 1)]
  for i in range(warmup_calls):
    function(item_ids=requests[i % len(requests)])[serving_requests.FIRST_OUTPUT].numpy()
  with tempfile.TemporaryDirectory(prefix="alterrec_serving_profile_") as logdir:
    load_before = os.getloadavg()[0]
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    for request in requests[1:]:
      function(item_ids=request)[serving_requests.FIRST_OUTPUT].numpy()
    wall = (time.perf_counter() - start) / calls
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0],
              "rb") as f:
      space.ParseFromString(f.read())
  # untraced wall time of the same calls (the profiler adds its own cost)
  untraced = []
  for request in requests[1:]:
    start = time.perf_counter()
    function(item_ids=request)[serving_requests.FIRST_OUTPUT].numpy()
    untraced.append(time.perf_counter() - start)
  picoseconds, ops = collections.Counter(), collections.Counter()
  top_ops = collections.Counter()
  for path, op_type, duration in op_events(space):
    piece = piece_of(path, op_type)
    picoseconds[piece] += duration
    ops[piece] += 1
    top_ops[f"{piece}: {op_type}"] += duration
  return {
      "export": os.path.abspath(version_dir), "signature": signature,
      "num_items": info["num_items"], "k": info["k"], "batch_size": batch_size,
      "calls": calls, "load_average_1min": [load_before, os.getloadavg()[0]],
      "wall_ms_per_call_traced": wall * 1e3,
      "wall_ms_per_call_untraced_median": common.median(untraced) * 1e3,
      "op_ms_per_call": sum(picoseconds.values()) / 1e9 / calls,
      "ops_per_call": sum(ops.values()) / calls,
      "pieces": {piece: {"us_per_call": picoseconds[piece] / 1e6 / calls,
                         "ops_per_call": ops[piece] / calls} for piece in PIECES},
      "top_op_types": [{"what": name, "us_per_call": ps / 1e6 / calls}
                       for name, ps in top_ops.most_common(12)],
      "machine": common.machine_info(),
  }


def format_table(result: dict) -> str:
  load = result["load_average_1min"]
  lines = [
      f"{result['signature']} of {result['export']}: {result['num_items']} items, "
      f"k={result['k']}, {result['batch_size']} session(s) per call, {result['calls']} "
      f"calls; 1-min load average {load[0]:.2f} before, {load[1]:.2f} after",
      "| piece | op time per call (us) | ops per call |", "|---|---:|---:|"]
  for piece, value in result["pieces"].items():
    lines.append(f"| {piece} | {value['us_per_call']:.0f} | {value['ops_per_call']:.0f} |")
  lines += [
      f"| all ops | {result['op_ms_per_call'] * 1e3:.0f} | {result['ops_per_call']:.0f} |",
      f"| wall per call, traced | {result['wall_ms_per_call_traced'] * 1e3:.0f} | |",
      f"| wall per call, untraced (median) | "
      f"{result['wall_ms_per_call_untraced_median'] * 1e3:.0f} | |"]
  lines.append("largest op types: " + ", ".join(
      f"{row['what']} {row['us_per_call']:.0f} us" for row in result["top_op_types"][:6]))
  return "\n".join(lines)


def main(argv):
  del argv
  values = flags.FLAGS
  if not values.export_dir:
    raise SystemExit("error: --export_dir is required")
  from alterrec_tf import recommend
  result = profile(recommend.resolve_version_dir(values.export_dir), values.data_dir,
                   values.batch_size, values.calls, values.warmup_calls, values.signature,
                   values.seed)
  print(format_table(result))
  if values.output:
    print(f"results: {common.write_json(values.output, result)}")


if __name__ == "__main__":
  app.run(main)
