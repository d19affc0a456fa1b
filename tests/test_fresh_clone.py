"""Proof on a fresh clone (issue 33): Online Retail prepared from the shared raw
table is the dataset of the committed archive, here and on a CPU whose text
table differs in float rounding, so the grid command of `make grid` restores
all 48 archived runs and trains none."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from alterrec_tf import runs as alter_runs
from alterrec_tf.formats import identity, schema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAW = os.path.normpath(os.path.join(REPO, "..", "shared", "datasets", "online_retail",
                                    "online_retail.parquet"))
ARCHIVE = os.path.join(REPO, "benchmarks", "grid_runs", "online_retail")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(RAW), reason=f"{RAW} is absent")]


def other_cpu(data_dir, out_dir):
  """data_dir as an AVX-512 CPU prepares it: each text value off by ~1e-7
  relative, the manifest's hashes and identity recomputed."""
  shutil.copytree(data_dir, out_dir)
  path = os.path.join(out_dir, schema.TEXT_EMBEDDINGS_FILE)
  table = np.load(path)
  noise = np.random.default_rng(7).standard_normal(table.shape)
  np.save(path, (table * (1 + 1e-7 * noise)).astype(np.float32))
  manifest = schema.load_manifest(out_dir)
  manifest["file_hashes"][schema.TEXT_EMBEDDINGS_FILE] = schema.file_sha256(path)
  manifest["content_hash"] = schema.content_hash(manifest["file_hashes"])
  manifest["data_identity"] = identity.dataset_identity(out_dir, manifest)
  with open(os.path.join(out_dir, schema.MANIFEST_FILE), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
  return manifest


def _makefile_grid_flags():
  """The flags `make grid` adds to the flagfile (the Makefile's GRID_FLAGS)."""
  with open(os.path.join(REPO, "Makefile"), encoding="utf-8") as f:
    for line in f:
      if line.startswith("GRID_FLAGS ?="):
        return line.split("?=", 1)[1].split()
  raise AssertionError("the Makefile defines no GRID_FLAGS")


def test_prepared_online_retail_is_the_archive_s_data_and_the_grid_trains_nothing(tmp_path):
  data_dir = str(tmp_path / "online_retail")
  prepared = subprocess.run(  # `make prepare`
      [sys.executable, "-m", "data_tools.prepare", "--flagfile=configs/online_retail.flags",
       f"--raw_path={RAW}", f"--output_dir={data_dir}"],
      cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900, check=False)
  assert prepared.returncode == 0, prepared.stderr[-3000:]
  manifest = schema.load_manifest(data_dir, verify_hashes=True)
  migrated = alter_runs.read_json(os.path.join(ARCHIVE, alter_runs.MIGRATION_FILE))
  archived = {alter_runs.read_json(os.path.join(ARCHIVE, model, seed, "results.json"))[
      "data_content_hash"] for model in os.listdir(ARCHIVE) if os.path.isdir(
          os.path.join(ARCHIVE, model)) for seed in ("seed0", "seed1", "seed2")}
  assert len(archived) == 1
  recorded = migrated["identities"][archived.pop()]
  assert identity.compare(recorded, manifest["data_identity"]) == []
  # another CPU: a different content_hash, the same dataset; the grid of `make grid`
  # (on a copy of the archive: a grid archives the runs it trains)
  avx = other_cpu(data_dir, str(tmp_path / "avx512"))
  assert avx["content_hash"] != manifest["content_hash"]
  archive = str(tmp_path / "archive")
  shutil.copytree(ARCHIVE, archive)
  grid = subprocess.run(
      [sys.executable, "-m", "alterrec_tf.experiments", "--flagfile=configs/online_retail.flags",
       f"--data_dir={tmp_path / 'avx512'}", f"--runs_dir={tmp_path / 'runs'}", "--workers=2",
       f"--archive_dir={archive}", "--seeds=0,1,2", f"--report_dir={tmp_path / 'report'}",
       *_makefile_grid_flags()],
      cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900, check=False)
  assert grid.returncode == 0, grid.stdout[-2000:] + grid.stderr[-3000:]
  assert f"grid: 48 of 48 runs restored from the archive {archive}" in grid.stdout
  assert "\n0 runs trained, 48 skipped" in grid.stdout, grid.stdout[-2000:]
  assert not any(os.path.exists(os.path.join(tmp_path, "runs", model, seed, "best.weights.h5"))
                 for model in os.listdir(tmp_path / "runs") for seed in ("seed0", "seed1"))
