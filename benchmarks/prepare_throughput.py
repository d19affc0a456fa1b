"""Data preparation throughput: raw rows per second of `data_tools.prepare`,
with and without the text table, and titles per second of the SBERT step.

  python benchmarks/prepare_throughput.py --flagfile=configs/online_retail.flags \
      [--raw_path=../shared/datasets/online_retail/online_retail.parquet] \
      [--embedding_batch_sizes=64,256] [--output=benchmarks/results/prepare_throughput.json]

Every `data_tools.prepare` flag is accepted (same flagfile). Timed, in this
order, in one process (imports and TensorFlow start-up excluded):

  1. prepare without text (--text_fields= --norequire_text): read, clean,
     filter, split, write TFRecords + vocabulary + manifest, into a temporary
     folder. Rows per second = raw rows read / seconds.
  2. the SBERT step alone: loading the sentence-transformers model, then
     `data_tools.embed.embed_texts` on the distinct titles of the vocabulary
     written in 1, once per --embedding_batch_sizes value (titles per second).
  3. the whole prepare with the flagfile's text options (model load included,
     as a fresh `prepare` run does it).

The temporary folders are deleted at the end.
"""

import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars between the figures
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

from benchmarks import common
from data_tools import prepare as prepare_lib

flags.DEFINE_list("embedding_batch_sizes", [],
                  "Batch sizes of the timed SBERT step (default: the flagfile's "
                  "--embedding_batch_size).")
flags.DEFINE_boolean("with_text", True, "Also time the SBERT step and the prepare with text.")
flags.DEFINE_string("output", os.path.join(common.RESULTS_DIR, "prepare_throughput.json"),
                    "JSON results file.")

FLAGS = flags.FLAGS
DEFAULT_RAW_PATH = os.path.join(common.REPO_ROOT, "..", "shared", "datasets", "online_retail",
                                "online_retail.parquet")


def rows_read(manifest, raw_path):
  """Raw rows the reader read (manifest report), or the raw file's row count."""
  cleaning = manifest.get("filters", {}).get("cleaning", {})
  if "rows_read" in cleaning:
    return int(cleaning["rows_read"])
  import pyarrow.parquet as pq
  return int(pq.ParquetFile(raw_path).metadata.num_rows)


def timed_prepare(options):
  start = time.perf_counter()
  result = prepare_lib.prepare(options)
  return time.perf_counter() - start, result.manifest


def resolve_raw_path(path):
  for candidate in (path, os.path.join(common.REPO_ROOT, path), DEFAULT_RAW_PATH):
    if candidate and os.path.exists(candidate):
      return os.path.abspath(candidate)
  raise SystemExit(f"error: raw file {path!r} not found; pass --raw_path")


def run(options):
  import dataclasses

  from alterrec_tf.formats import schema
  from data_tools import embed
  machine = common.machine_info()
  print(common.machine_line(machine), flush=True)
  raw_path = resolve_raw_path(options.raw_path)
  scratch = tempfile.mkdtemp(prefix="alterrec_prepare_bench_")
  result = {"command": common.command_line(), "machine": machine, "raw_path": raw_path,
            "raw_format": options.raw_format}
  try:
    no_text = dataclasses.replace(options, raw_path=raw_path, text_fields=(),
                                  require_text=False,
                                  output_dir=os.path.join(scratch, "no_text"))
    seconds, manifest = timed_prepare(no_text)
    rows = rows_read(manifest, raw_path)
    result["no_text"] = {"seconds": seconds, "rows": rows, "rows_per_second": rows / seconds,
                         "sessions": sum(manifest["num_sessions"].values()),
                         "interactions": sum(manifest["num_interactions"].values()),
                         "items": manifest["num_items"] - 1}
    print(f"prepare without text: {rows:,} rows in {seconds:.1f} s", flush=True)

    if FLAGS.with_text and options.text_fields:
      titles = [title for _, title in schema.read_vocab(no_text.output_dir)[1:] if title]
      distinct = len(set(titles))  # embed_texts embeds each distinct title once
      start = time.perf_counter()
      encoder = embed.load_encoder(options.text_model)
      load_seconds = time.perf_counter() - start
      sizes = [int(s) for s in FLAGS.embedding_batch_sizes] or [options.embedding_batch_size]
      runs = []
      for size in sizes:
        start = time.perf_counter()
        embed.embed_texts(encoder, titles, size)
        seconds = time.perf_counter() - start
        runs.append({"batch_size": size, "seconds": seconds,
                     "titles_per_second": distinct / seconds})
        print(f"SBERT {options.text_model}, batch {size}: {distinct:,} titles in "
              f"{seconds:.1f} s", flush=True)
      try:
        import torch
        torch_threads = torch.get_num_threads()
      except ImportError:
        torch_threads = None
      result["embedding"] = {"model": options.text_model, "titles": distinct,
                             "load_seconds": load_seconds, "runs": runs,
                             "torch_threads": torch_threads}
      del encoder
      with_text = dataclasses.replace(options, raw_path=raw_path,
                                      output_dir=os.path.join(scratch, "with_text"))
      seconds, manifest = timed_prepare(with_text)
      result["with_text"] = {"seconds": seconds, "rows": rows, "rows_per_second": rows / seconds,
                             "text_fields": list(options.text_fields),
                             "text_dim": manifest.get("text_dim")}
      print(f"prepare with text: {rows:,} rows in {seconds:.1f} s", flush=True)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  result["process_max_rss_bytes"] = common.max_rss_bytes()
  print_tables(result)
  print(f"results: {common.write_json(FLAGS.output, result)}")
  return result


def print_tables(result):
  n = result["no_text"]
  print(f"\nData preparation throughput: {os.path.basename(result['raw_path'])} "
        f"({result['raw_format']}), {n['rows']:,} raw rows -> {n['sessions']:,} sessions, "
        f"{n['items']:,} items; {common.machine_line(result['machine'])}")
  rows = [["prepare, no text", f"{n['seconds']:.1f} s", f"{n['rows_per_second']:,.0f} rows/s",
           ""]]
  if "embedding" in result:
    e = result["embedding"]
    rows.append([f"load SBERT {e['model']}", f"{e['load_seconds']:.1f} s", "",
                 f"torch threads: {e['torch_threads']}"])
    for r in e["runs"]:
      rows.append([f"SBERT embed, batch {r['batch_size']}", f"{r['seconds']:.1f} s",
                   f"{r['titles_per_second']:,.0f} titles/s", f"{e['titles']:,} distinct titles"])
  if "with_text" in result:
    w = result["with_text"]
    rows.append([f"prepare, text ({','.join(w['text_fields'])})", f"{w['seconds']:.1f} s",
                 f"{w['rows_per_second']:,.0f} rows/s", f"text_dim {w['text_dim']}"])
  print(common.table(["step", "seconds", "throughput", "notes"], rows))
  print(f"process peak RSS {common.mib(result['process_max_rss_bytes'])}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  import dataclasses
  options = prepare_lib.options_from_flags()
  # output folders are temporary ones; --output_dir is ignored
  run(dataclasses.replace(options, raw_path=options.raw_path or DEFAULT_RAW_PATH,
                          output_dir=options.output_dir or "unused"))


if __name__ == "__main__":
  from alterrec_tf import flagfiles
  app.run(main, flags_parser=flagfiles.make_parser(prepare_lib.training_flag_names()))
