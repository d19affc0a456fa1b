"""The dataset identity two machines agree on (issue 33): the sessions,
vocabulary and split exactly, the float text table within rounding; runs,
restored archived runs and the grid checked against it; old runs migrated."""

import json
import os
import shutil

import numpy as np
import pytest

from alterrec_tf import experiments, run_archive
from alterrec_tf import runs as alter_runs
from alterrec_tf import train as alter_train
from alterrec_tf.config import ConfigError, TrainConfig, resolve_seen_items
from alterrec_tf.formats import identity, schema
from tests import synthetic
from tests.test_experiments import archived_run

TEXT = schema.TEXT_EMBEDDINGS_FILE


def write_manifest(data_dir, manifest):
  with open(os.path.join(data_dir, schema.MANIFEST_FILE), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)


def another_machine(data_dir, out_dir, relative=1e-7, value_change=None, seed=0):
  """data_dir as another CPU prepares it: the same shards and vocabulary, the text
  table perturbed by `relative` (AVX-512 rounding: ~1e-7), or one value changed
  by `value_change` (a real change); file hashes, content_hash and
  data_identity recomputed as `data_tools.prepare` writes them."""
  shutil.copytree(data_dir, out_dir)
  table = np.load(os.path.join(out_dir, TEXT))
  rng = np.random.default_rng(seed)
  if value_change is not None:
    table[3, 1] += value_change
  else:
    table = table * (1 + relative * rng.choice([-1.0, 1.0], size=table.shape))
  np.save(os.path.join(out_dir, TEXT), table.astype(np.float32))
  manifest = schema.load_manifest(out_dir)
  manifest["file_hashes"][TEXT] = schema.file_sha256(os.path.join(out_dir, TEXT))
  manifest["content_hash"] = schema.content_hash(manifest["file_hashes"])
  manifest["data_identity"] = identity.dataset_identity(out_dir, manifest)
  write_manifest(out_dir, manifest)
  return manifest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """A small prepared dataset with a text table (values ~1, as unnormalised
  encoders give) and its manifest with data_identity."""
  data_dir = str(tmp_path_factory.mktemp("identity") / "data")
  manifest = synthetic.write_dataset(data_dir, num_items=40, num_sessions=30,
                                     max_session_length=8, text_dim=32)
  manifest["data_identity"] = identity.dataset_identity(data_dir, manifest)
  write_manifest(data_dir, manifest)
  return data_dir, manifest


def test_the_identity_rules(dataset, tmp_path):
  data_dir, manifest = dataset
  ours = manifest["data_identity"]
  assert ours["text"]["file"] == TEXT and ours["text"]["shape"] == [40, 32]
  assert TEXT not in ours["exact_files"] and len(ours["exact_files"]) == 4  # 3 shards, vocab
  # another CPU: not byte-identical, the same dataset
  theirs = another_machine(data_dir, str(tmp_path / "avx512"), relative=1e-7)
  assert theirs["content_hash"] != manifest["content_hash"]
  assert theirs["data_identity"]["exact_hash"] == ours["exact_hash"]
  assert identity.text_difference(ours["text"], theirs["data_identity"]["text"]) > 0
  assert identity.compare(ours, theirs["data_identity"]) == []
  # a text value changed by 1e-2: refused, naming the file and the difference
  changed = another_machine(data_dir, str(tmp_path / "changed"), value_change=1e-2)
  problems = identity.compare(ours, changed["data_identity"])
  assert len(problems) == 1 and f"data file {TEXT} differs beyond float rounding" in problems[0]
  assert "difference 0.01 > tolerance" in problems[0], problems
  # two rows swapped: the same values elsewhere, refused
  swapped = dict(ours["text"], signature=identity.text_signature(
      np.load(os.path.join(data_dir, TEXT))[[0, 2, 1] + list(range(3, 40))]))
  assert identity.compare_text(ours["text"], swapped)
  # a session shard changed: refused exactly, naming the shard
  shard = manifest["files"]["test"][0]
  edited = dict(ours, exact_hash="0" * 64,
                exact_files=dict(ours["exact_files"], **{shard: "f" * 64}))
  problems = identity.compare(ours, edited)
  assert problems == [f"data file {shard} differs (sha256 "
                      f"{ours['exact_files'][shard][:12]}..., now ffffffffffff...)"]
  # no text table now
  assert identity.compare(ours, dict(ours, text=None)) == [f"data text table: {TEXT} (now none)"]


def finished_run(runs_dir, data_dir, results_data):
  """A finished sasrec seed-0 run of the grid in runs_dir whose results record
  `results_data` (data_identity and/or data_content_hash)."""
  base = TrainConfig(data_dir=data_dir)
  config = experiments.run_config(base, "sasrec", 0, [0], str(runs_dir))
  archived_run(runs_dir, "sasrec")  # figures its ranks give
  manifest = schema.load_manifest(data_dir)
  alter_runs.write_config(config.run_dir, resolve_seen_items(config, manifest))  # as runs store it
  path = os.path.join(config.run_dir, alter_runs.RESULTS_FILE)
  results = alter_runs.read_json(path)
  results.update(results_data)
  alter_runs.write_json_atomic(path, results)
  alter_runs.write_hashes(config.run_dir)
  return base, config


def test_runs_and_the_grid_accept_rounding_and_refuse_a_change_naming_the_file(
    dataset, tmp_path):
  data_dir, manifest = dataset
  avx = tmp_path / "avx512"
  another_machine(data_dir, str(avx), relative=1e-7)
  changed = tmp_path / "changed"
  another_machine(data_dir, str(changed), value_change=1e-2)
  # a run trained here records the identity (as train writes results.json)
  recorded = {"data_content_hash": manifest["content_hash"],
              "data_identity": alter_runs.dataset_identity(data_dir, dict(manifest))}
  runs_dir = tmp_path / "runs"
  base, config = finished_run(runs_dir, data_dir, recorded)
  for other in (data_dir, str(avx)):  # here, and on the other CPU
    other_config = config.replace(data_dir=other)
    assert alter_runs.run_conflicts(other_config, schema.load_manifest(other))[0] == []
    experiments.check_grid(base.replace(data_dir=other), ["sasrec"], [0], str(runs_dir))
    assert alter_train.check_command(other_config) is not None  # shown, not retrained
  changed_config = config.replace(data_dir=str(changed))
  conflicts, _ = alter_runs.run_conflicts(changed_config, schema.load_manifest(str(changed)))
  assert len(conflicts) == 1 and f"data file {TEXT} differs beyond float rounding" in conflicts[0]
  with pytest.raises(ConfigError, match=f"(?s)1 run.*{TEXT} differs beyond float rounding: "
                                        "signed-sum difference 0.01 >"):
    experiments.check_grid(base.replace(data_dir=str(changed)), ["sasrec"], [0], str(runs_dir))
  with pytest.raises(ConfigError, match=f"holds a run trained with other settings: data file "
                                        f"{TEXT} differs"):
    alter_train.check_command(changed_config)


def test_an_old_run_is_migrated_by_the_archive_file_not_rewritten(dataset, tmp_path):
  data_dir, manifest = dataset
  avx = tmp_path / "avx512"
  another_machine(data_dir, str(avx), relative=1e-7)
  changed = tmp_path / "changed"
  another_machine(data_dir, str(changed), value_change=1e-2)
  # an archived run from before issue 33: only the content_hash of every file's bytes
  archive = tmp_path / "archive"
  base, config = finished_run(archive, data_dir, {"data_content_hash": manifest["content_hash"]})
  results_before = open(os.path.join(config.run_dir, "results.json"), "rb").read()
  # on the machine that prepared it: the same bytes, accepted as before
  assert alter_runs.run_conflicts(config, schema.load_manifest(data_dir))[0] == []
  # on another CPU, with no migration file: refused, saying why
  runs_dir = tmp_path / "runs"
  assert experiments.restore_archived_runs(["sasrec"], [0], str(runs_dir), str(archive)) == 1
  with pytest.raises(ConfigError, match=f"(?s)data content_hash {manifest['content_hash']} .*"
                                        f"no {alter_runs.MIGRATION_FILE} beside it"):
    experiments.check_grid(base.replace(data_dir=str(avx)), ["sasrec"], [0], str(runs_dir))
  # the migration file, written where the data is byte-identical to the run's
  shutil.rmtree(runs_dir)
  run_archive.write_migration(str(archive), data_dir)
  assert experiments.restore_archived_runs(["sasrec"], [0], str(runs_dir), str(archive)) == 1
  assert (runs_dir / alter_runs.MIGRATION_FILE).exists()
  experiments.check_grid(base.replace(data_dir=str(avx)), ["sasrec"], [0], str(runs_dir))
  with pytest.raises(ConfigError, match=f"{TEXT} differs beyond float rounding: signed-sum "
                                        "difference 0.01"):
    experiments.check_grid(base.replace(data_dir=str(changed)), ["sasrec"], [0], str(runs_dir))
  assert open(os.path.join(config.run_dir, "results.json"), "rb").read() == results_before
  # a manifest prepared before data_identity existed: computed from the folder
  old_style = tmp_path / "old_style"
  shutil.copytree(str(avx), str(old_style))
  old_manifest = schema.load_manifest(str(old_style))
  del old_manifest["data_identity"]
  write_manifest(str(old_style), old_manifest)
  experiments.check_grid(base.replace(data_dir=str(old_style)), ["sasrec"], [0], str(runs_dir))


def test_the_committed_archive_has_a_migration_for_its_content_hash():
  archive = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "benchmarks", "grid_runs", "online_retail")
  hashes = set()
  for model in os.listdir(archive):
    for seed in ("seed0", "seed1", "seed2"):
      path = os.path.join(archive, model, seed, alter_runs.RESULTS_FILE)
      if os.path.exists(path):
        hashes.add(alter_runs.read_json(path)["data_content_hash"])
  migrated = alter_runs.read_json(os.path.join(archive, alter_runs.MIGRATION_FILE))
  assert hashes and hashes <= set(migrated["identities"])
  for recorded in migrated["identities"].values():
    assert recorded["text"]["shape"] == [3432, 384] and len(recorded["exact_files"]) == 13
