"""Export a trained run as a TF Serving SavedModel (one fused top-K graph).

  python -m alterrec_tf.export --run_dir=runs/online_retail \\
      --export_dir=models/alterrec [--k=20] [--exclude_session_items] \\
      [--new_items=new_items/] [--version=N] \\
      [--[no]text_signatures] [--text_encoder_dir=text_encoder/]

writes models/alterrec/N/ (N = the next integer version unless --version):

  saved_model.pb, variables/        the graph of `alterrec_tf.serving.ServingModule`
  assets/serving_vocab.tsv          index, raw id, title (no header), incl. new items
  assets.extra/tf_serving_warmup_requests   PredictionLog records TF Serving replays
  assets.extra/alterrec_export.json what was exported (k, alpha, items, sizes, ...)

The version folder is written under a hidden temporary name inside export_dir,
checked against the Keras model, then renamed: a model server never sees a
partial version, and a failed export (a full disk too) leaves nothing behind.
Before TensorFlow loads, `check_request` checks the run, the dataset (SHA-256 of
every file, --verify_data), --k and that export_dir is writable; a refusal is one
line (`alterrec_tf.cli`). No data_tools, pandas or torch import here; the saved
pieces are built by `alterrec_tf.serving.build`.

Text signatures (`--text_signatures`; by default on when the run has a text
tower and the dataset's sentence model can be rebuilt): the export also holds
the sentence encoder (`alterrec_tf.text`, all-MiniLM-L6-v2: +90 MB of weights)
and serves `new_item_vectors` and `score_text_candidates` (raw text fields of
new items in, see `alterrec_tf.serving.module`). The encoder is read from
`--text_encoder_dir` (a folder of `alterrec_tf.text.convert`; written there
from the dataset's text_model when absent or empty), else converted in memory
from the installed sentence-transformers model files (no torch). Before it is
used, it must re-embed the dataset's own item titles to its text table
(datasets whose text field is `title`; median difference <= 1e-3). Loading
such an export needs `import tensorflow_text` (serving/check.py and
recommend.py do it).
"""

import os
import time
from typing import List, Optional

from alterrec_tf import cli, flagfiles
from alterrec_tf.formats import new_items as alter_new_items
from alterrec_tf.models import names as model_names
from alterrec_tf.serving import build as serving_build
from alterrec_tf.serving import pipeline
from alterrec_tf.serving.build import ExportError
from alterrec_tf.training import loading

EXPORT_INFO_FILE = pipeline.EXPORT_INFO_FILE
WARMUP_FILE = pipeline.WARMUP_FILE
ASSETS_EXTRA = pipeline.ASSETS_EXTRA
WEIGHTS_FILE = pipeline.WEIGHTS_FILE


def check_request(run_dir: str, export_dir: Optional[str], data_dir: Optional[str] = None,
                  k: int = 20, version: Optional[int] = None, new_items: Optional[str] = None,
                  verify_data: bool = True, text_signatures: Optional[bool] = None,
                  text_encoder_dir: Optional[str] = None,
                  serving_chunk_size: int = 0) -> loading.CheckedRun:
  """Everything `export` checks before TensorFlow is loaded (about a second).

  Returns:
    (TrainConfig, manifest, data_dir) as `training.loading.check_run`.

  Raises:
    CommandError, ExportError, DataError: one line naming the flag, run or file.
  """
  if not export_dir:
    raise cli.CommandError("--export_dir is required (TF Serving's model base folder)")
  if version is not None and version < 0:
    raise ExportError(f"--version={version}: TF Serving versions are integers >= 1 "
                      "(0 = the next one)")
  if serving_chunk_size < 0:
    raise ExportError(f"--serving_chunk_size={serving_chunk_size} must be >= 0 (0: score "
                      "the whole catalogue in one matmul)")
  if k < 1:  # before reading anything
    raise ExportError(f"--k={k} must be at least 1 (items per recommendation list)")
  config, manifest, data_dir = loading.check_run(run_dir, data_dir, verify_data,
                                                 weights=False)
  pipeline.check_k(k, manifest, data_dir, new_items)
  if text_signatures:
    reason = serving_build.text_signature_obstacle(
        model_names.ALTERREC_TOWERS[config.model], manifest, text_encoder_dir)
    if reason:
      raise ExportError(f"--text_signatures: {reason}")
  cli.check_writable(export_dir, "--export_dir")
  loading.check_weights(run_dir)
  return config, manifest, data_dir


# --- export -----------------------------------------------------------------------------
def export(run_dir: str, export_dir: str, data_dir: Optional[str] = None,
           version: Optional[int] = None, k: int = 20,
           exclude_session_items: Optional[bool] = None,
           new_items: Optional[str] = None, model_name: Optional[str] = None,
           warmup: bool = True, verify: bool = True,
           loaded_run: Optional[pipeline.LoadedRun] = None,
           verify_data: bool = True, text_signatures: Optional[bool] = None,
           text_encoder_dir: Optional[str] = None, cold_id_part: str = "imputed",
           serving_chunk_size: int = serving_build.DEFAULT_SERVING_CHUNK_SIZE) -> dict:
  """Exports `run_dir` as version `version` (default: next) of `export_dir`:
  checks the request, loads the run (`training.loading`) and hands it to the
  export pipeline (`serving.pipeline.export_run`).

  Args:
    loaded_run: an already loaded (model, config, manifest, data_dir) (tests).
    verify_data: check the dataset's files against its manifest hashes first.
    The others: as `serving.pipeline.export_run`.

  Returns:
    The export info of `serving.pipeline.export_run`.

  Raises:
    ExportError: the export cannot be done as asked, or writing it failed (a
      full disk): one line; nothing is left in export_dir.
  """
  start = time.perf_counter()
  created = bool(export_dir) and not os.path.exists(export_dir)
  try:
    if loaded_run is None:  # every check before TensorFlow is loaded
      checked = check_request(run_dir, export_dir, data_dir, k, version, new_items,
                              verify_data, text_signatures, text_encoder_dir,
                              serving_chunk_size)
      loaded_run = loading.load_run(run_dir, checked=checked)
    info = pipeline.export_run(loaded_run, run_dir, export_dir, version, k,
                               exclude_session_items, new_items, model_name, warmup, verify,
                               text_signatures, text_encoder_dir, cold_id_part,
                               serving_chunk_size)
  except BaseException:
    if created and os.path.isdir(export_dir) and not os.listdir(export_dir):
      os.rmdir(export_dir)  # a refusal leaves no empty --export_dir behind
    raise
  info["export_seconds"] = time.perf_counter() - start
  return info


# --- command line ---------------------------------------------------------------------
def define_flags() -> None:
  from absl import flags
  # --run_dir and --data_dir are the training flags of alterrec_tf.config.
  flags.DEFINE_string("export_dir", None, "Model base folder; the export is written to "
                      "export_dir/N (TF Serving's version layout).")
  flags.DEFINE_integer("version", 0, "Version number N; 0 = one above the highest existing.")
  flags.DEFINE_integer("k", 20, "Recommendations per session of the fixed-k signatures "
                       "(serving_default, raw_ids).")
  flags.DEFINE_boolean("exclude_session_items", None,
                       "Never recommend an item already in the request's session. Unset: "
                       "as the run was trained and evaluated (its --seen_items; excluded "
                       "by default on de-duplicated data).")
  flags.DEFINE_string("new_items", None, "Cold-start item table to add (folder from "
                      "data_tools.embed_items, or EMB.npy,ITEMS.tsv); see --cold_id_part.")
  flags.DEFINE_enum("cold_id_part", "imputed", ["imputed", "zero"],
                    "ID columns of items added after training (--new_items, the text "
                    "signatures): 'imputed' (the similarity-weighted ID rows of the 20 "
                    "trained items nearest in text: their fused score on the trained "
                    "items' scale), or 'zero' (text term only).")
  flags.DEFINE_integer("serving_chunk_size", serving_build.DEFAULT_SERVING_CHUNK_SIZE,
                       "Score a catalogue of more items in chunks of this many, merged "
                       "into a running top k (a request's memory bounded by the chunk, not "
                       "the catalogue; the same lists, ties by lower item index); 0: one "
                       "[B, V] matmul at any size.")
  flags.DEFINE_string("model_name", None, "Model name in the warmup requests (default: "
                      "export_dir's base name, as TF Serving's --model_name).")
  flags.DEFINE_boolean("warmup", True, "Write assets.extra/tf_serving_warmup_requests.")
  flags.DEFINE_boolean("verify", True, "Load the export back and check its top-k against "
                       "the Keras model on test sessions before publishing it.")
  flags.DEFINE_boolean("text_signatures", None,
                       "Add the signatures new_item_vectors and score_text_candidates "
                       "(new items as raw text; the sentence encoder in the graph, ~90 MB). "
                       "Unset: when the run has a text tower and the dataset's sentence "
                       "model can be rebuilt.")
  flags.DEFINE_string("text_encoder_dir", None,
                      "Sentence encoder folder of alterrec_tf.text.convert for the text "
                      "signatures (converted into it from the dataset's text_model when "
                      "absent or empty); unset: convert in memory.")


def main(argv: List[str]) -> None:
  del argv
  from absl import flags, logging
  logging.set_verbosity(logging.WARNING)
  values = flags.FLAGS
  verify_data = bool(cli.flag_value("verify_data", True))
  info = export(values.run_dir, values.export_dir, values.data_dir, values.version,
                values.k, values.exclude_session_items, values.new_items,
                values.model_name, values.warmup, values.verify, verify_data=verify_data,
                text_signatures=values.text_signatures,
                text_encoder_dir=values.text_encoder_dir,
                cold_id_part=values.cold_id_part,
                serving_chunk_size=values.serving_chunk_size)
  print(pipeline.format_info(info))


def run() -> None:
  define_flags()
  cli.run(main, flagfiles.PREPARE_FLAG_NAMES, known=(ExportError, alter_new_items.NewItemsError))


if __name__ == "__main__":
  run()
