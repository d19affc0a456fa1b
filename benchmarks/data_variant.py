"""A controlled copy of a prepared dataset: weaker item text, or less training data
(issue 32, the regime study).

The mechanism study finds the partner's hard negatives help on Amazon Office
(text partner 1.17x the ID network) and hurt on Online Retail (0.84x), but the
two datasets also differ in absolute level (9-10% against 38-45% Hits@20), so
partner strength and level are confounded. This script makes variants that move
one of them with everything else held:

* `--text_mix=m`: each item's text vector mixed with a fixed random direction,

      v' = sqrt(1 - m) * v + sqrt(m) * |v| * g,   g a random unit vector,

  so m is the share of each vector's energy that is noise (0: the original
  table, 1: random vectors that identify items but say nothing about them). The
  sessions, split and vocabulary stay byte for byte, so the ID network is the
  same; only the text network, the partner that ranks the ID network's
  negatives, gets weaker.
* `--train_share=s`: a seeded random share s of the training sessions kept
  (validation and test untouched), which lowers both networks' level.

  python benchmarks/data_variant.py --source_dir=data/amazon_office \
      --output_dir=data/amazon_office_text_mix0.5 --text_mix=0.5

The manifest records the variant and the source's content_hash (`variant`);
file_hashes, content_hash, data_identity and the training counts are
recomputed, so training verifies the copy like any prepared dataset. The
output is written under a temporary name and renamed when complete.
"""

import os
import shutil
import sys
from typing import Dict

import numpy as np
from absl import app, flags

from alterrec_tf.formats import identity, schema
from data_tools import writer

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The script's flags (defined when it runs, so importing it defines none)."""
  flags.DEFINE_string("source_dir", None, "A folder of data_tools.prepare.")
  flags.DEFINE_string("output_dir", None, "Where the variant goes (must not exist).")
  flags.DEFINE_float("text_mix", 0.0, "Share of each text vector's energy replaced by "
                     "noise, in [0, 1].")
  flags.DEFINE_float("train_share", 1.0, "Share of the training sessions kept, in (0, 1].")
  flags.DEFINE_integer("variant_seed", 0, "Seed of the noise and of the kept sessions.")


def mix_with_noise(table: np.ndarray, mix: float, seed: int) -> np.ndarray:
  """Mixes every row of a text table with a random direction of its own norm.

  Args:
    table: float text vectors [num_items, dim] (row 0, the padding row, included).
    mix: share of each row's energy that becomes noise, in [0, 1].
    seed: seed of the directions.

  Returns:
    float32 [num_items, dim]: sqrt(1 - mix) * row + sqrt(mix) * |row| * g, g a
    random unit vector per row; all-zero rows (padding) stay zero.
  """
  if not 0.0 <= mix <= 1.0:
    raise ValueError(f"text_mix must lie in [0, 1], got {mix}")
  values = np.asarray(table, dtype=np.float64)
  directions = np.random.default_rng(seed).standard_normal(values.shape)
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  norms = np.linalg.norm(values, axis=1, keepdims=True)
  mixed = np.sqrt(1.0 - mix) * values + np.sqrt(mix) * norms * directions
  return mixed.astype(np.float32)


def subsample_shard(source: str, target: str, share: float,
                    rng: np.random.Generator) -> Dict[str, int]:
  """Copies a random `share` of a TFRecord shard's sessions, in order.

  Returns:
    Counts of what was kept: sessions, interactions (items) and scored
    prefixes (items from each session's eval_start on).
  """
  import tensorflow as tf
  counts = {"sessions": 0, "interactions": 0, "examples": 0}
  with tf.io.TFRecordWriter(target) as writer:
    for record in tf.data.TFRecordDataset(source).as_numpy_iterator():
      if rng.random() >= share:
        continue
      features = tf.train.Example.FromString(record).features.feature
      length = len(features[schema.ITEM_IDS].int64_list.value)
      start = (features[schema.EVAL_START].int64_list.value or [1])[0] \
          if schema.EVAL_START in features else 1  # the schema's default
      writer.write(record)
      counts["sessions"] += 1
      counts["interactions"] += length
      counts["examples"] += length - int(start)
  return counts


def _check_request(output_dir: str, text_mix: float, train_share: float) -> None:
  if not 0.0 <= text_mix <= 1.0:
    raise ValueError(f"text_mix must lie in [0, 1], got {text_mix}")
  if not 0.0 < train_share <= 1.0:
    raise ValueError(f"train_share must lie in (0, 1], got {train_share}")
  if text_mix == 0.0 and train_share == 1.0:
    raise ValueError("nothing to change: set --text_mix above 0 or --train_share below 1")
  if os.path.exists(output_dir):
    raise FileExistsError(f"{output_dir} exists; choose a new --output_dir")


def make_variant(source_dir: str, output_dir: str, text_mix: float = 0.0,
                 train_share: float = 1.0, seed: int = 0) -> dict:
  """Writes the variant of source_dir to output_dir; returns its manifest."""
  _check_request(output_dir, text_mix, train_share)
  manifest = schema.load_manifest(source_dir, verify_hashes=True)
  text_file = manifest["files"].get("text_embeddings")
  if text_mix and not text_file:
    raise ValueError(f"{source_dir} has no text table (prepared without --text_fields)")
  partial = output_dir.rstrip("/") + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  shutil.copytree(source_dir, partial)
  try:
    _write_variant(source_dir, partial, manifest, text_mix, train_share, seed)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)  # nothing half-written stays
    raise
  os.replace(partial, output_dir)
  return manifest


def _write_variant(source_dir: str, partial: str, manifest: dict, text_mix: float,
                   train_share: float, seed: int) -> None:
  """Changes the copy in `partial` and its manifest (in place) to the variant."""
  text_file = manifest["files"].get("text_embeddings")
  changed = []
  if text_mix:
    table = np.load(os.path.join(source_dir, text_file), allow_pickle=False)
    np.save(os.path.join(partial, text_file), mix_with_noise(table, text_mix, seed))
    changed.append(text_file)
  if train_share < 1.0:
    rng = np.random.default_rng(seed)
    totals = {"sessions": 0, "interactions": 0, "examples": 0}
    for name in manifest["files"]["train"]:
      counts = subsample_shard(os.path.join(source_dir, name), os.path.join(partial, name),
                               train_share, rng)
      totals = {key: totals[key] + counts[key] for key in totals}
      changed.append(name)
    if not totals["sessions"]:
      raise ValueError(f"--train_share={train_share} keeps no training session of "
                       f"{source_dir}; choose a larger share")
    for key in totals:
      if isinstance(manifest.get(f"num_{key}"), dict):
        manifest[f"num_{key}"]["train"] = totals[key]
  manifest["file_hashes"].update(writer.file_hashes(partial, changed))
  manifest["variant"] = {"text_mix": text_mix, "train_share": train_share, "seed": seed,
                         "source_content_hash": manifest["content_hash"],
                         "script": "benchmarks/data_variant.py",
                         "counts": "num_sessions, num_examples and num_interactions are "
                                   "the variant's; other counts are the source's"}
  manifest["content_hash"] = schema.content_hash(manifest["file_hashes"])
  manifest["data_identity"] = identity.dataset_identity(partial, manifest)
  suffix = (f"_text_mix{text_mix:g}" if text_mix else "") + (
      f"_train{train_share:g}" if train_share < 1.0 else "")
  manifest["dataset_name"] = f"{manifest.get('dataset_name', 'dataset')}{suffix}"
  writer.write_manifest(partial, manifest)


def main(argv) -> None:
  del argv
  manifest = make_variant(FLAGS.source_dir, FLAGS.output_dir, FLAGS.text_mix,
                          FLAGS.train_share, FLAGS.variant_seed)
  print(f"{FLAGS.output_dir}: {manifest['dataset_name']}, content_hash "
        f"{manifest['content_hash'][:12]}", file=sys.stderr)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["source_dir", "output_dir"])
  app.run(main)
