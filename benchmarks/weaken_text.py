"""A copy of a prepared dataset whose item text carries less signal (issue 32).

The mechanism study finds the partner's hard negatives help on Amazon Office
(text partner 1.17x the ID network) and hurt on Online Retail (0.84x), but the
two datasets also differ in absolute level (9-10% against 38-45% Hits@20), so
partner strength and level are confounded. This script makes the controlled
variant: the same sessions, split and vocabulary (so the same ID network),
with each item's text vector mixed with a fixed random direction,

    v' = sqrt(1 - mix) * v + sqrt(mix) * g * |v|,   g a random unit vector,

so `mix` is the share of each vector's energy that is noise (0: the original
table, 1: random vectors that identify items but say nothing about them). Only
the text network, and so the partner that ranks the ID network's negatives,
gets weaker.

  python benchmarks/weaken_text.py --source_dir=data/amazon_office \
      --output_dir=data/amazon_office_text_mix50 --mix=0.5

The manifest records the mix and the source's content_hash; file_hashes,
content_hash and data_identity are recomputed for the new table, so training
verifies the copy like any prepared dataset. The output folder is written
under a temporary name and renamed when complete.
"""

import json
import os
import shutil
import sys

import numpy as np
from absl import app, flags

from alterrec_tf.formats import identity, schema

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The script's flags (defined when it runs, so importing it defines none)."""
  flags.DEFINE_string("source_dir", None, "A folder of data_tools.prepare with a text table.")
  flags.DEFINE_string("output_dir", None, "Where the weakened copy goes (must not exist).")
  flags.DEFINE_float("mix", 0.5, "Share of each text vector's energy replaced by noise, "
                     "in [0, 1].")
  flags.DEFINE_integer("noise_seed", 0, "Seed of the random directions.")


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
    raise ValueError(f"mix must lie in [0, 1], got {mix}")
  values = np.asarray(table, dtype=np.float64)
  directions = np.random.default_rng(seed).standard_normal(values.shape)
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  norms = np.linalg.norm(values, axis=1, keepdims=True)
  mixed = np.sqrt(1.0 - mix) * values + np.sqrt(mix) * norms * directions
  return mixed.astype(np.float32)


def weaken(source_dir: str, output_dir: str, mix: float, seed: int) -> dict:
  """Writes the weakened copy of source_dir to output_dir; returns its manifest."""
  if not 0.0 <= mix <= 1.0:
    raise ValueError(f"mix must lie in [0, 1], got {mix}")
  if os.path.exists(output_dir):
    raise FileExistsError(f"{output_dir} exists; choose a new --output_dir")
  manifest = schema.load_manifest(source_dir, verify_hashes=True)
  text_file = manifest["files"].get("text_embeddings")
  if not text_file:
    raise ValueError(f"{source_dir} has no text table (prepared without --text_fields)")
  table = mix_with_noise(np.load(os.path.join(source_dir, text_file), allow_pickle=False),
                         mix, seed)
  partial = output_dir.rstrip("/") + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  shutil.copytree(source_dir, partial)
  np.save(os.path.join(partial, text_file), table)
  manifest["file_hashes"][text_file] = schema.file_sha256(os.path.join(partial, text_file))
  manifest["text_corruption"] = {"mix": mix, "noise_seed": seed,
                                 "source_content_hash": manifest["content_hash"],
                                 "script": "benchmarks/weaken_text.py"}
  manifest["content_hash"] = schema.content_hash(manifest["file_hashes"])
  manifest["data_identity"] = identity.dataset_identity(partial, manifest)
  manifest["dataset_name"] = f"{manifest.get('dataset_name', 'dataset')}_text_mix{mix:g}"
  with open(os.path.join(partial, schema.MANIFEST_FILE), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
  os.replace(partial, output_dir)
  return manifest


def main(argv) -> None:
  del argv
  manifest = weaken(FLAGS.source_dir, FLAGS.output_dir, FLAGS.mix, FLAGS.noise_seed)
  print(f"{FLAGS.output_dir}: {manifest['dataset_name']}, content_hash "
        f"{manifest['content_hash'][:12]}", file=sys.stderr)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["source_dir", "output_dir"])
  app.run(main)
