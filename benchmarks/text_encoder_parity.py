"""Parity and speed of the in-graph Keras text encoder against sentence-transformers.

  python benchmarks/text_encoder_parity.py [--titles=1000] [--batch_size=64] \\
      [--repeats=2] [--encoder_dir=DIR] [--output=benchmarks/results/text_encoder_parity.json]

On the first `titles` sorted distinct product names of the UCI Online Retail
table (../shared/datasets/online_retail/online_retail.parquet):
  - single field: cosine of `SentenceEncoder` (alterrec_tf.text) against
    sentence-transformers `encode`, min and mean, and the largest |difference|;
  - two fields: `data_tools.embed.item_text_table` (each field embedded alone,
    the mean over fields with text) with sentence-transformers against the
    same function with the Keras encoder behind `NumpyTextEncoder` and against
    the in-graph `FieldMeanEncoder`. The fields are title = the product name and
    description = a sentence built from the item's own rows of the table
    ("Stock code 85123A, sold at 2.55 GBP a unit to customers in United Kingdom
    and France."); every 10th description and every 25th title is left empty so
    the leave-out rule is exercised;
  - wall and CPU seconds per 1,000 titles of both encoders (`encode` with the
    same batch size, after one warm-up call; the fastest of `repeats`; CPU =
    this process's user + system time, all threads), the one-off costs
    (conversion, loading, the first call, which traces the graph);
  - the size of the Keras weights file (text_encoder.npz) and of a SavedModel
    of `TextEncoderModule`.
Both encoders use their default thread pools on this CPU.
"""

import os
import sys
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # data_tools' progress bars

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

flags.DEFINE_integer("titles", 1000, "Distinct product names (the first, sorted).")
flags.DEFINE_integer("batch_size", 64, "Texts per encode batch (data_tools' default).")
flags.DEFINE_integer("repeats", 2, "Timed passes over the titles per encoder.")
flags.DEFINE_string("raw_path", os.path.join(common.REPO_ROOT, "..", "shared", "datasets",
                                             "online_retail", "online_retail.parquet"),
                    "The Online Retail parquet file.")
flags.DEFINE_string("encoder_dir", None, "Converted encoder folder to use (default: "
                    "convert the packaged all-MiniLM-L6-v2 into a temporary folder).")
flags.DEFINE_boolean("saved_model", True, "Also save a SavedModel and report its size.")
flags.DEFINE_string("output", "benchmarks/results/text_encoder_parity.json",
                    "JSON results file.")


def read_items(path: str, count: int):
  """(titles, descriptions) of the first `count` sorted distinct product names."""
  import pandas as pd
  raw = pd.read_parquet(path, columns=["Description", "StockCode", "UnitPrice", "Country"])
  raw = raw.dropna(subset=["Description"])
  titles = sorted(raw["Description"].astype(str).unique())[:count]
  rows = raw[raw["Description"].isin(set(titles))].groupby("Description")
  descriptions = []
  for title in titles:
    group = rows.get_group(title)
    code = group["StockCode"].astype(str).value_counts().index[0]
    price = float(group["UnitPrice"].median())
    countries = list(group["Country"].value_counts().index[:2])
    descriptions.append(f"Stock code {code}, sold at {price:.2f} GBP a unit to customers "
                        f"in {' and '.join(countries)}.")
  return titles, descriptions


def cosines(a, b):
  import numpy as np
  return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def timed(fn, repeats: int):
  """(first result, its wall s, fastest later wall s, CPU s of that call)."""
  start = time.perf_counter()
  first = fn()
  first_seconds = time.perf_counter() - start
  runs = []
  for _ in range(repeats):
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    runs.append((time.perf_counter() - start, time.process_time() - cpu))
  wall, cpu = min(runs)
  return first, first_seconds, wall, cpu


def folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def main(argv):
  del argv
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  values = flags.FLAGS
  import numpy as np
  import pandas as pd
  import tensorflow as tf

  from alterrec_tf.text import convert
  from alterrec_tf.text import encoder as keras_text
  from data_tools import embed

  info = common.machine_info()
  titles, descriptions = read_items(values.raw_path, values.titles)
  n, batch = len(titles), values.batch_size
  per_1000 = 1000.0 / n
  scratch = tempfile.TemporaryDirectory(prefix="text_encoder_parity-")
  folder = values.encoder_dir or os.path.join(scratch.name, "encoder")

  start = time.perf_counter()
  if not keras_text.is_encoder_folder(folder):
    convert.convert("all-MiniLM-L6-v2", folder)
  convert_seconds = time.perf_counter() - start
  start = time.perf_counter()
  encoder = keras_text.load_encoder(folder)
  keras_load_seconds = time.perf_counter() - start
  adapter = keras_text.NumpyTextEncoder(encoder)
  start = time.perf_counter()
  st_model = embed.load_encoder("all-MiniLM-L6-v2")
  st_load_seconds = time.perf_counter() - start

  # single field, timed
  st_vectors, st_first, st_seconds, st_cpu = timed(
      lambda: st_model.encode(titles, batch_size=batch, show_progress_bar=False,
                              convert_to_numpy=True), values.repeats)
  keras_vectors, keras_first, keras_seconds, keras_cpu = timed(
      lambda: adapter.encode(titles, batch_size=batch), values.repeats)
  single = cosines(keras_vectors, st_vectors)

  # two fields, as data_tools.embed.item_text_table builds the training table
  title_field = ["" if i % 25 == 24 else t for i, t in enumerate(titles)]
  description_field = ["" if i % 10 == 9 else d for i, d in enumerate(descriptions)]
  fields = ["title", "description"]
  texts = pd.DataFrame({"title": title_field, "description": description_field},
                       index=[f"i{i}" for i in range(n)])
  st_table = embed.item_text_table(st_model, texts, fields, batch, require_text=False)[1:]
  keras_table = embed.item_text_table(adapter, texts, fields, batch, require_text=False)[1:]
  field_mean = keras_text.FieldMeanEncoder(encoder)
  in_graph = np.concatenate([
      field_mean(tf.constant(texts[fields].to_numpy()[s:s + batch].astype(str))).numpy()
      for s in range(0, n, batch)])
  has_text = np.linalg.norm(st_table, axis=1) > 0
  multi = cosines(keras_table[has_text], st_table[has_text])
  multi_graph = cosines(in_graph[has_text], st_table[has_text])

  weights_path = os.path.join(folder, keras_text.WEIGHTS_FILE)
  num_params = int(sum(np.prod(v.shape) for v in encoder.named_weights().values()))
  saved_model_bytes = None
  if values.saved_model:
    module = keras_text.TextEncoderModule(encoder)
    path = os.path.join(scratch.name, "saved_model")
    tf.saved_model.save(module, path, signatures=module.signatures())
    saved_model_bytes = folder_bytes(path)

  result = {
      "machine": info, "command": common.command_line(), "titles": n, "batch_size": batch,
      "single_field": {"min_cosine": float(single.min()), "mean_cosine": float(single.mean()),
                       "max_abs_difference": float(np.abs(keras_vectors - st_vectors).max()),
                       "worst_title": titles[int(single.argmin())]},
      "two_fields": {"items_with_text": int(has_text.sum()),
                     "min_cosine": float(multi.min()), "mean_cosine": float(multi.mean()),
                     "in_graph_min_cosine": float(multi_graph.min()),
                     "in_graph_mean_cosine": float(multi_graph.mean()),
                     "zero_rows_equal": bool(not keras_table[~has_text].any()
                                             and not in_graph[~has_text].any())},
      "seconds_per_1000_titles": {"sentence_transformers": st_seconds * per_1000,
                                  "keras": keras_seconds * per_1000},
      "cpu_seconds_per_1000_titles": {"sentence_transformers": st_cpu * per_1000,
                                      "keras": keras_cpu * per_1000},
      "first_call_seconds": {"sentence_transformers": st_first, "keras": keras_first},
      "load_seconds": {"sentence_transformers": st_load_seconds, "keras": keras_load_seconds,
                       "convert": convert_seconds},
      "weights": {"parameters": num_params, "npz_bytes": os.path.getsize(weights_path),
                  "saved_model_bytes": saved_model_bytes},
  }
  scratch.cleanup()
  mb = lambda b: "-" if b is None else f"{b / 1e6:.1f} MB"
  print(f"text encoder parity on {n} Online Retail titles; {common.machine_line(info)}")
  print(common.table(
      ["", "min cosine", "mean cosine"],
      [["one field (title)", f"{single.min():.7f}", f"{single.mean():.7f}"],
       [f"two fields, item_text_table ({has_text.sum()} items)", f"{multi.min():.7f}",
        f"{multi.mean():.7f}"],
       ["two fields, in-graph FieldMeanEncoder", f"{multi_graph.min():.7f}",
        f"{multi_graph.mean():.7f}"]]))
  print()
  print(common.table(
      ["encoder", f"wall s / 1,000 titles (batch {batch})", "CPU s / 1,000", "first call s",
       "load s"],
      [["sentence-transformers (torch)", f"{st_seconds * per_1000:.2f}",
        f"{st_cpu * per_1000:.2f}", f"{st_first:.2f}", f"{st_load_seconds:.2f}"],
       ["Keras + tensorflow-text", f"{keras_seconds * per_1000:.2f}",
        f"{keras_cpu * per_1000:.2f}", f"{keras_first:.2f}",
        f"{keras_load_seconds:.2f} (convert {convert_seconds:.2f})"]]))
  print()
  print(f"Keras weights: {num_params:,} parameters, text_encoder.npz "
        f"{mb(result['weights']['npz_bytes'])}; SavedModel {mb(saved_model_bytes)}")
  print(f"largest |difference| of one vector entry: "
        f"{result['single_field']['max_abs_difference']:.2e}")
  print("wrote", common.write_json(values.output, result))


if __name__ == "__main__":
  app.run(main)
