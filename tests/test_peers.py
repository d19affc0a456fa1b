"""RecBole peers (issue 35) without RecBole: the export to atomic benchmark files
(rows = our scored prefixes, in our order, histories and targets as our tf.data
pipeline yields them, written atomically), the text codes, the import of top-k
lists into a run folder, the RecBole-side helpers (torch only), and the command
end to end with a stand-in for the peers venv's python."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from alterrec_tf import run_archive
from alterrec_tf import runs as alter_runs
from alterrec_tf.analysis import runs as report_runs
from alterrec_tf.config import TrainConfig
from alterrec_tf.data import per_prefix
from alterrec_tf.data import windows as alter_data
from alterrec_tf.formats import schema
from alterrec_tf.models import names as model_names
from alterrec_tf.recbole import atomic, jobs, lists
from alterrec_tf.training import evaluation
from tests import scripts, synthetic
from tests.test_identity import another_machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def read_inter(path):
  """(header, [(prefix_id, [history items], target)]) of an atomic .inter file."""
  with open(path, encoding="utf-8") as f:
    header = f.readline().rstrip("\n").split("\t")
    rows = []
    for line in f:
      prefix_id, history, target = line.rstrip("\n").split("\t")
      rows.append((prefix_id, [int(i) for i in history.split(" ")], int(target)))
  return header, rows


def pipeline_prefixes(data_dir, manifest, split, max_len):
  """Every scored prefix our evaluation batches hold (stride 1), as (history, target)."""
  data = alter_data.load_split(data_dir, manifest, split, max_len, 1)
  found = []
  for batch in data.batches(64):
    rows = per_prefix.expand_to_prefixes(batch)
    for items, targets, mask in zip(rows[alter_data.ITEM_IDS].numpy(),
                                    rows[alter_data.TARGET_IDS].numpy(),
                                    rows[alter_data.TARGET_MASK].numpy()):
      column = int(np.flatnonzero(mask)[0])
      found.append((tuple(items[:column + 1].tolist()), int(targets[column])))
  return found, data.num_examples


@pytest.fixture(scope="module")
def synthetic_export(tmp_path_factory):
  root = tmp_path_factory.mktemp("peers_synthetic")
  data_dir = str(root / "data")
  manifest = synthetic.write_dataset(data_dir, num_items=60, num_sessions=60,
                                     max_session_length=30, text_dim=12)
  out_dir = str(root / "atomic" / "synthetic")
  description = atomic.export(data_dir, out_dir, max_len=8, subspaces=3, codes=4)
  return data_dir, manifest, out_dir, description


def test_rows_are_the_scored_prefixes_of_our_pipeline(synthetic_export):
  data_dir, manifest, out_dir, description = synthetic_export
  targets = atomic.read_targets(out_dir)
  for split in schema.SPLITS:
    header, rows = read_inter(os.path.join(out_dir, f"synthetic.{split}.inter"))
    assert header == ["prefix_id:token", "item_id_list:token_seq", "item_id:token"]
    expected, count = pipeline_prefixes(data_dir, manifest, split, max_len=8)
    assert len(rows) == count == description["rows"][split] == len(targets[split])
    assert [r[0] for r in rows] == [f"{split}-{i}" for i in range(len(rows))]
    assert sorted((tuple(h), t) for _, h, t in rows) == sorted(expected)
    assert [t for _, _, t in rows] == targets[split].tolist()
    assert max(len(h) for _, h, _ in rows) == 8  # (sessions of up to 30 items: cut)
    order = atomic.evaluation_order(data_dir, max_len=8, eval_batch_size=64, split=split)
    assert [(tuple(rows[i][1]), rows[i][2]) for i in order] == expected  # (our evaluator's)


def test_rows_follow_our_order_with_the_last_max_len_items(tmp_path):
  sessions = {"train": [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]], "valid": [[2, 3, 4, 5]],
              "test": [[9, 8, 7, 6, 5]]}
  data_dir = str(tmp_path / "data")
  synthetic.write_sessions(data_dir, sessions, num_items=11)
  atomic.export(data_dir, str(tmp_path / "out" / "hand"), max_len=3, subspaces=0)
  _, rows = read_inter(str(tmp_path / "out" / "hand" / "hand.train.inter"))
  assert [(h, t) for _, h, t in rows] == [
      ([1], 2), ([1, 2], 3), ([4], 5), ([4, 5], 6), ([4, 5, 6], 7), ([5, 6, 7], 8),
      ([6, 7, 8], 9), ([7, 8, 9], 10)]
  _, rows = read_inter(str(tmp_path / "out" / "hand" / "hand.test.inter"))
  assert [(h, t) for _, h, t in rows] == [([9], 8), ([9, 8], 7), ([9, 8, 7], 6), ([8, 7, 6], 5)]


def test_leave_one_out_rows_score_only_the_last_item(tmp_path):
  data_dir = str(tmp_path / "data")
  manifest = synthetic.write_dataset(data_dir, num_items=40, num_sessions=30,
                                     eval_protocol=schema.EVAL_LEAVE_ONE_OUT, text_dim=0)
  description = atomic.export(data_dir, str(tmp_path / "loo"), max_len=5, subspaces=0)
  assert description["rows"]["valid"] == manifest["num_sessions"]["valid"]
  assert description["rows"]["test"] == manifest["num_sessions"]["test"]
  _, rows = read_inter(str(tmp_path / "loo" / "loo.test.inter"))
  assert all(1 <= len(h) <= 5 for _, h, _ in rows)


def test_the_item_file_lists_the_whole_catalogue_with_text_codes(synthetic_export):
  _, manifest, out_dir, description = synthetic_export
  with open(os.path.join(out_dir, "synthetic.item"), encoding="utf-8") as f:
    lines = f.read().splitlines()
  assert lines[0] == "item_id:token\ttext_codes:token_seq"
  assert [int(line.split("\t")[0]) for line in lines[1:]] == list(range(1, manifest["num_items"]))
  codes = [line.split("\t")[1].split(" ") for line in lines[1:]]
  assert all(len(c) == 3 and c[0].startswith("0-") and c[2].startswith("2-") for c in codes)
  assert description["item_vocab"][0] == "[PAD]" and len(description["item_vocab"]) == 60
  assert description["text_codes"]["subspaces"] == 3 and description["max_len"] == 8


def test_text_codes_are_seeded_and_find_clear_clusters():
  rng = np.random.default_rng(1)
  centres = np.array([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
  table = np.vstack([np.zeros([1, 2]), centres[np.repeat(np.arange(3), 20)]
                     + 0.1 * rng.normal(size=(60, 2))])
  codes = atomic.text_codes(table, subspaces=1, codes=3, seed=0)
  assert codes.shape == (61, 1) and codes[0, 0] == 0
  groups = codes[1:, 0].reshape(3, 20)
  assert all(len(set(g)) == 1 for g in groups) and len({g[0] for g in groups}) == 3
  assert np.array_equal(codes, atomic.text_codes(table, subspaces=1, codes=3, seed=0))


def test_an_export_is_reused_or_replaced_whole(synthetic_export, tmp_path):
  data_dir, _, out_dir, description = synthetic_export
  stamp = os.stat(os.path.join(out_dir, "synthetic.train.inter")).st_mtime_ns
  again = atomic.export(data_dir, out_dir, max_len=8, subspaces=3, codes=4)
  assert again["export_id"] == description["export_id"]
  assert os.stat(os.path.join(out_dir, "synthetic.train.inter")).st_mtime_ns == stamp
  copy = str(tmp_path / "copy" / "synthetic")
  first = atomic.export(data_dir, copy, max_len=8, subspaces=0)
  second = atomic.export(data_dir, copy, max_len=4, subspaces=0)
  assert second["export_id"] != first["export_id"] and atomic.read_export(copy)["max_len"] == 4
  assert os.listdir(tmp_path / "copy") == ["synthetic"]


def test_a_failed_export_leaves_nothing_half_written(synthetic_export, tmp_path, monkeypatch):
  data_dir = synthetic_export[0]
  out_dir = str(tmp_path / "atomic" / "synthetic")
  atomic.export(data_dir, out_dir, max_len=8, subspaces=0)
  before = {name: os.path.getsize(os.path.join(out_dir, name)) for name in os.listdir(out_dir)}

  def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(atomic, "_write_items", full_disk)
  with pytest.raises(OSError):
    atomic.export(data_dir, out_dir, max_len=5, subspaces=0)
  assert os.listdir(tmp_path / "atomic") == ["synthetic"]  # (no staging folder left)
  assert {n: os.path.getsize(os.path.join(out_dir, n)) for n in os.listdir(out_dir)} == before
  with pytest.raises(OSError):
    atomic.export(data_dir, str(tmp_path / "fresh" / "synthetic"), max_len=5, subspaces=0)
  assert os.listdir(tmp_path / "fresh") == []


def test_a_missing_or_invalid_data_dir_is_named(tmp_path):
  with pytest.raises(schema.DataError, match="no prepared dataset at .*missing"):
    atomic.export(str(tmp_path / "nothing"), str(tmp_path / "out"), max_len=5)
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / schema.MANIFEST_FILE).write_text("{not json", encoding="utf-8")
  with pytest.raises(schema.DataError, match="not valid JSON"):
    atomic.export(str(broken), str(tmp_path / "out"), max_len=5)
  partial = str(tmp_path / "partial")
  synthetic.write_sessions(partial, {"train": [[1, 2, 3]], "valid": [[1, 2]]}, num_items=4)
  with pytest.raises(schema.DataError, match="no test split"):
    atomic.export(partial, str(tmp_path / "out"), max_len=5)
  with pytest.raises(ValueError, match="max_len"):
    atomic.export(partial, str(tmp_path / "out"), max_len=0)
  assert not os.path.exists(tmp_path / "out")


def test_lists_become_ranks_and_our_metrics():
  lists_ = np.array([[3, 1, 2], [5, 6, 7], [9, 8, 4]])
  ranks = lists.ranks_in_lists(lists_, np.array([1, 4, 4]), cap=3)
  assert ranks.tolist() == [2, 4, 3]
  metrics, _ = lists.split_metrics(lists_, np.array([1, 4, 4]), ks=(1, 3), mrr_k=3)
  reference = evaluation.metrics_from_ranks(ranks, ks=(1, 3), mrr_k=3)
  assert metrics == pytest.approx(reference, abs=1e-6)
  with pytest.raises(lists.ListsError, match="cannot give ranks up to 5"):
    lists.check_lists("test", lists_, np.array([1, 4, 4]), num_items=10, cap=5)
  with pytest.raises(lists.ListsError, match="outside 1..8"):
    lists.check_lists("test", lists_, np.array([1, 4, 4]), num_items=9, cap=3)
  with pytest.raises(lists.ListsError, match="2 lists for 3 rows"):
    lists.check_lists("valid", lists_[:2], np.array([1, 4, 4]), num_items=10, cap=3)


def fake_result(folder, targets, num_items, k=20, seed=0):
  """A result folder as peers/recbole_run.py writes it, with random lists."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder)
  for split in ("valid", "test"):
    top = np.stack([rng.permutation(np.arange(1, num_items))[:k] for _ in targets[split]])
    np.save(os.path.join(folder, f"topk_{split}.npy"), top.astype(np.int32))
  with open(os.path.join(folder, "history.json"), "w", encoding="utf-8") as f:
    json.dump([{"epoch": 1, "train_seconds": 2.0, "eval_seconds": 1.0, "train/loss": 3.0,
                "valid/recbole/hit@20": 0.5}], f)
  with open(os.path.join(folder, "run.json"), "w", encoding="utf-8") as f:
    json.dump({"source": "RecBole 1.2.1", "model": "SASRec", "best_epoch": 1, "epochs_run": 1,
               "seconds": {"load": 1.0, "train": 3.0, "rank": 1.0, "wall": 5.0},
               "config": {"hidden_size": 8}}, f)


def test_an_imported_run_is_one_the_report_and_the_archive_check_read(synthetic_export,
                                                                       tmp_path):
  _, manifest, out_dir, description = synthetic_export
  targets = atomic.read_targets(out_dir)
  result = str(tmp_path / "result")
  fake_result(result, targets, manifest["num_items"])
  job = {"model": "sasrec", "config": {"seed": 0}, "export_id": description["export_id"],
         "top_k": 20}
  runs_dir = str(tmp_path / "runs")
  run_dir = alter_runs.run_dir_of(runs_dir, "recbole_sasrec", 0)
  results = lists.write_run(result, description, targets, job, run_dir, process_seconds=7.5)
  assert results["source"] == "RecBole 1.2.1" and results["compute_seconds"]["process"] == 7.5
  with np.load(os.path.join(run_dir, alter_runs.TEST_RANKS_FILE)) as saved:
    assert saved["targets"].tolist() == targets["test"].tolist()
    counts = targets["train_item_counts"]
    assert saved["target_train_counts"].tolist() == counts[targets["test"]].tolist()
    recomputed = evaluation.metrics_from_ranks(saved["fused"])
  assert results["test"]["fused"] == pytest.approx(recomputed, abs=1e-6)
  assert "figures recomputed" in run_archive.check_archived_run(run_dir)
  [run] = report_runs.load_runs(runs_dir)
  assert run.model == "recbole_sasrec"
  assert model_names.display_name(run.model) == "SASRec (RecBole 1.2.1)"
  assert model_names.order_key("recbole_sasrec") > model_names.order_key("alterrec_aug")


def small_export(data_dir, folder, max_len=6):
  """The export of data_dir into folder/synthetic, with 2 x 3 text codes."""
  return atomic.export(data_dir, str(folder / "synthetic"), max_len=max_len, subspaces=2,
                       codes=3)


def finished_peer_run(tmp_path, model, config, text_codes, record_identity=True):
  """A small prepared dataset, its export, and a finished run of `model` imported
  from random lists: (data_dir, manifest, export, job, runs_dir, run_dir, results)."""
  data_dir = str(tmp_path / "data")
  manifest = synthetic.write_dataset(data_dir, num_items=40, num_sessions=30,
                                     max_session_length=8, text_dim=16)
  export = small_export(data_dir, tmp_path / "atomic")
  targets = atomic.read_targets(str(tmp_path / "atomic" / "synthetic"))
  fake_result(str(tmp_path / "result"), targets, manifest["num_items"])
  job = {"model": model, "config": config, "top_k": 20, "export_id": export["export_id"],
         "text_codes": text_codes}
  runs_dir = str(tmp_path / "runs")
  run_dir = alter_runs.run_dir_of(runs_dir, lists.run_name(model), 0)
  assert lists.finished_run_conflicts(run_dir, job, export, data_dir, manifest) is None
  identity = alter_runs.dataset_identity(data_dir, manifest) if record_identity else None
  results = lists.write_run(str(tmp_path / "result"), export, targets, job, run_dir,
                            data_identity=identity)
  return data_dir, manifest, export, job, runs_dir, run_dir, results


def test_a_finished_run_counts_on_another_cpu_but_not_on_other_data_or_settings(tmp_path):
  data_dir, manifest, export, job, _, run_dir, results = finished_peer_run(
      tmp_path, "fdsa", {"seed": 0, "hidden_size": 8}, text_codes=True)
  assert results["data_identity"]["text"]["shape"] == [40, 16]
  assert lists.finished_run_conflicts(run_dir, job, export, data_dir, manifest) == []

  # another CPU: the text table differs in the last bits, so the export (its id
  # hashes the bytes) and the job id change, yet the finished run is the same run
  cpu_dir = str(tmp_path / "avx512")
  cpu_manifest = another_machine(data_dir, cpu_dir)
  cpu_export = small_export(cpu_dir, tmp_path / "atomic_cpu")
  cpu_job = dict(job, export_id=cpu_export["export_id"])
  assert jobs.job_id(cpu_job) != jobs.job_id(job)
  assert lists.finished_run_conflicts(run_dir, cpu_job, cpu_export, cpu_dir, cpu_manifest) == []

  # a real change of the text, or other settings, are refused with the reason
  changed_dir = str(tmp_path / "changed")
  changed_manifest = another_machine(data_dir, changed_dir, value_change=0.5)
  [line] = lists.finished_run_conflicts(run_dir, job, export, changed_dir, changed_manifest)
  assert schema.TEXT_EMBEDDINGS_FILE in line and "beyond float rounding" in line
  other_config = dict(job, config={"seed": 0, "hidden_size": 16})
  assert lists.finished_run_conflicts(run_dir, other_config, export, data_dir, manifest) == [
      "its settings differ (compare config.json's job)"]
  shorter = small_export(data_dir, tmp_path / "atomic5", max_len=5)
  assert lists.finished_run_conflicts(run_dir, dict(job, export_id=shorter["export_id"]),
                                      shorter, data_dir, manifest)
  # the text codes' settings belong to the models that read them
  reseeded = dict(export, text_codes=dict(export["text_codes"], seed=1))
  assert jobs.settings_id(job, reseeded) != jobs.settings_id(job, export)
  sasrec = dict(job, model="sasrec", text_codes=False)
  assert jobs.settings_id(sasrec, reseeded) == jobs.settings_id(sasrec, export)


def test_a_run_folder_from_before_settings_id_counts_through_its_content_hash(tmp_path):
  data_dir, manifest, export, job, runs_dir, run_dir, _ = finished_peer_run(
      tmp_path, "sasrec", {"seed": 0}, text_codes=False, record_identity=False)
  for name, key in ((alter_runs.CONFIG_FILE, "settings_id"),
                    (alter_runs.RESULTS_FILE, "data_identity")):  # as written before
    content = alter_runs.read_json(os.path.join(run_dir, name))
    del content[key]
    alter_runs.write_json_atomic(os.path.join(run_dir, name), content)
  assert lists.finished_run_conflicts(run_dir, job, export, data_dir, manifest) == []
  other_config = dict(job, config={"seed": 1})
  [line] = lists.finished_run_conflicts(run_dir, other_config, export, data_dir, manifest)
  assert "config" in line
  shorter = small_export(data_dir, tmp_path / "atomic5", max_len=5)
  [line] = lists.finished_run_conflicts(run_dir, dict(job, export_id=shorter["export_id"]),
                                        shorter, data_dir, manifest)
  assert "export had other settings" in line
  # on another CPU only a migration file beside the runs names its content_hash's identity
  cpu_dir = str(tmp_path / "avx512")
  cpu_manifest = another_machine(data_dir, cpu_dir)
  cpu_export = small_export(cpu_dir, tmp_path / "atomic_cpu")
  cpu_job = dict(job, export_id=cpu_export["export_id"])
  [line] = lists.finished_run_conflicts(run_dir, cpu_job, cpu_export, cpu_dir, cpu_manifest)
  assert alter_runs.MIGRATION_FILE in line
  run_archive.write_migration(runs_dir, data_dir)
  assert lists.finished_run_conflicts(run_dir, cpu_job, cpu_export, cpu_dir, cpu_manifest) == []


def test_every_committed_peer_run_names_its_data_as_machines_agree_on():
  """A committed run counts on another CPU only when its data_identity is
  recorded, in results.json or (older runs) in the migration file beside the
  runs; a content_hash nobody could record is listed as unverified, with why."""
  archive = os.path.join(REPO, "benchmarks", "peers_runs")
  checked = 0
  for dataset in sorted(os.listdir(archive)):
    runs_dir = os.path.join(archive, dataset, "runs")
    migration_file = os.path.join(runs_dir, alter_runs.MIGRATION_FILE)
    migration = (alter_runs.read_json(migration_file) if os.path.exists(migration_file)
                 else {})
    for model in sorted(os.listdir(runs_dir)):
      for seed in sorted(os.listdir(os.path.join(runs_dir, model)) if os.path.isdir(
          os.path.join(runs_dir, model)) else []):
        results = alter_runs.read_json(os.path.join(runs_dir, model, seed,
                                                    alter_runs.RESULTS_FILE))
        checked += 1
        if results.get("data_identity"):
          continue
        old_hash = results["data_content_hash"]
        assert (old_hash in migration.get("identities", {})
                or migration.get("unverified", {}).get(old_hash)), (model, seed, old_hash)
  assert checked


def test_model_configs_carry_our_budget():
  settings = TrainConfig(embedding_dim=128, num_layers=2, num_heads=2, dropout=0.1,
                         learning_rate=1e-3, m_max=30, early_stopping_patience=6, seed=3)
  sasrec = jobs.model_config("sasrec", settings, 500, 256)
  assert sasrec["hidden_size"] == 128 and sasrec["inner_size"] == 512
  assert sasrec["hidden_dropout_prob"] == sasrec["attn_dropout_prob"] == 0.1
  assert (sasrec["epochs"], sasrec["stopping_step"], sasrec["seed"]) == (30, 5, 3)
  assert jobs.model_config("gru4rec", settings, 500, 256)["embedding_size"] == 128
  assert jobs.model_config("fdsa", settings, 500, 256)["selected_features"] == ["text_codes"]
  s3rec = jobs.model_config("s3rec", settings, 500, 256, s3rec_pretrain_epochs=4,
                            extra={"hidden_dropout_prob": 0.5})
  assert s3rec["pretrain_epochs"] == 4 and s3rec["hidden_dropout_prob"] == 0.5
  assert jobs.prefixes_per_step(64, 38543, 4905) == 503
  with pytest.raises(ValueError, match="unknown RecBole model"):
    jobs.model_config("caser", settings, 1, 1)


def load_recbole_run():
  """peers/recbole_run.py as a module (its module level needs only numpy)."""
  return scripts.load_script("peers/recbole_run.py")


def test_the_recbole_side_scores_seen_items_out_and_maps_ids_back():
  torch = pytest.importorskip("torch")
  run = load_recbole_run()
  to_ours = run.internal_to_ours(np.array(["[PAD]", "7", "3", "9", "1"]))
  assert to_ours.tolist() == [0, 7, 3, 9, 1]
  scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
  history = torch.tensor([[1, 0, 0], [4, 3, 0]])  # internal ids, right-padded
  masked = run.mask_seen(scores, history)
  assert torch.isinf(masked[0, [0, 1]]).all() and torch.isinf(masked[1, [0, 3, 4]]).all()
  assert masked[0, 2] == 3.0
  assert run.top_k_ours(masked, 2, to_ours).tolist() == [[3, 9], [3, 7]]
  config = run.base_config({"data_path": "/x", "max_len": 7, "output_dir": "/w",
                            "text_codes": True})
  assert config["load_col"]["item"] == ["item_id", "text_codes"]
  assert config["alias_of_item_id"] == ["item_id_list"] and config["USER_ID_FIELD"] == "prefix_id"
  assert set(run.MODEL_CLASSES) == set(jobs.MODELS)


class LoopTrainer:
  """The parts of RecBole 1.2.1's Trainer that EpochLog reads, with its `fit`
  loop (start_epoch .. epochs, early stopping on a bigger-is-better score,
  callback after validation, break when cur_step > stopping_step): a tiny
  dropout model on data shuffled by the loader's generator."""

  def __init__(self, torch, epochs, stopping_step, scores=None):
    self.torch = torch
    torch.manual_seed(0)
    self.model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5),
                                     torch.nn.Linear(8, 1))
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.05)
    self.generator = torch.Generator().manual_seed(3)
    self.x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    self.y = self.x.sum(dim=1, keepdim=True)
    self.epochs, self.stopping_step, self.scores = epochs, stopping_step, scores
    self.start_epoch, self.cur_step, self.best_valid_score = 0, 0, float("-inf")
    self.valid_calls = 0

  def _train_epoch(self, train_data, epoch_idx, show_progress=False):
    total = 0.0
    for batch in self.torch.randperm(32, generator=self.generator).split(8):
      loss = ((self.model(self.x[batch]) - self.y[batch]) ** 2).mean()
      self.optimizer.zero_grad()
      loss.backward()
      self.optimizer.step()
      total += float(loss.detach())
    return total

  def _valid_epoch(self, valid_data, show_progress=False):
    self.valid_calls += 1
    if self.scores is not None:
      score = self.scores[self.valid_calls - 1]
    else:
      with self.torch.no_grad():
        score = -float(((self.model.eval()(self.x) - self.y) ** 2).mean())
      self.model.train()
    return score, {"hit@20": score}

  def fit(self, callback_fn, kill_after=None):
    for epoch_idx in range(self.start_epoch, self.epochs):
      self._train_epoch([0] * 4, epoch_idx)
      score, _ = self._valid_epoch(None)
      if score > self.best_valid_score:
        self.best_valid_score, self.cur_step = score, 0
      else:
        self.cur_step += 1
      callback_fn(epoch_idx, score)
      if self.cur_step > self.stopping_step:
        break
      if kill_after is not None and epoch_idx + 1 == kill_after:
        return  # the process dies here: only resume.pt survives


def test_a_killed_recbole_run_resumes_as_if_it_had_not_stopped(tmp_path):
  torch = pytest.importorskip("torch")
  run = load_recbole_run()
  job = {"model": "sasrec", "config": {"epochs": 5}}

  def new_log(trainer, checkpoint, key=None):
    return run.EpochLog(trainer, trainer.model, "SASRec", checkpoint, key or run.job_key(job),
                        trainer.generator)

  whole = LoopTrainer(torch, epochs=5, stopping_step=10)
  whole_log = new_log(whole, str(tmp_path / "whole.pt"))
  whole_log.restore()
  whole.fit(whole_log.after_validation)

  checkpoint = str(tmp_path / "resume.pt")
  first = LoopTrainer(torch, epochs=5, stopping_step=10)
  first_log = new_log(first, checkpoint)
  assert first_log.restore() == 0
  first.fit(first_log.after_validation, kill_after=2)
  second = LoopTrainer(torch, epochs=5, stopping_step=10)  # a new process: fresh weights
  second_log = new_log(second, checkpoint)
  assert second_log.restore() == 2 and second.start_epoch == 2
  second.fit(second_log.after_validation)
  assert second.valid_calls == 3  # epochs 3-5 only
  for name, value in whole.model.state_dict().items():
    assert torch.equal(value, second.model.state_dict()[name]), name
  assert [r["epoch"] for r in second_log.records] == [1, 2, 3, 4, 5]
  assert [r["train/loss"] for r in second_log.records] == [
      r["train/loss"] for r in whole_log.records]
  assert second_log.best_epoch == whole_log.best_epoch
  assert not os.path.exists(checkpoint + ".tmp")

  # another job's checkpoint is set aside, not resumed
  other = LoopTrainer(torch, epochs=5, stopping_step=10)
  other_log = new_log(other, checkpoint, key=run.job_key({**job, "config": {"epochs": 6}}))
  assert other_log.restore() == 0 and other.start_epoch == 0
  assert os.path.exists(checkpoint + ".other-job") and not os.path.exists(checkpoint)


def test_a_run_that_early_stopping_ended_trains_no_more_on_resume(tmp_path):
  torch = pytest.importorskip("torch")
  run = load_recbole_run()
  checkpoint = str(tmp_path / "resume.pt")
  scores = [0.3, 0.5, 0.4, 0.45, 0.2, 0.9]  # best at epoch 2; stops after epoch 4
  first = LoopTrainer(torch, epochs=6, stopping_step=1, scores=scores)
  first_log = run.EpochLog(first, first.model, "SASRec", checkpoint, "k", first.generator)
  first.fit(first_log.after_validation)
  assert first.valid_calls == 4 and first_log.best_epoch == 2
  again = LoopTrainer(torch, epochs=6, stopping_step=1, scores=scores)
  again_log = run.EpochLog(again, again.model, "SASRec", checkpoint, "k", again.generator)
  assert again_log.restore() == 4 and again.start_epoch == again.epochs
  again.fit(again_log.after_validation)
  assert again.valid_calls == 0 and again_log.best_epoch == 2
  for name, value in first_log.best_state.items():
    assert torch.equal(value, again_log.best_state[name]), name


def peers_command(*args):
  return subprocess.run([sys.executable, "-m", "alterrec_tf.peers", *map(str, args)], cwd=REPO,
                        env=ENV, capture_output=True, text=True, timeout=300, check=False)


def stand_in_venv(folder):
  """A "peers venv" whose python writes oracle lists (the targets first) as
  recbole_run.py would, so the command's export, jobs, resume and import run
  without RecBole."""
  os.makedirs(os.path.join(folder, "bin"))
  path = os.path.join(folder, "bin", "python")
  with open(path, "w", encoding="utf-8") as f:
    f.write(f"#!{sys.executable}\n" + textwrap.dedent("""
        import json, os, sys
        import numpy as np
        job = json.load(open(sys.argv[2]))
        out = os.path.join(job["output_dir"], "result")
        os.makedirs(out)
        targets = np.load(job["targets"])
        for split in ("valid", "test"):
          rest = [[i for i in range(1, job["num_items"]) if i != t][:job["top_k"] - 1]
                  for t in targets[split]]
          top = np.array([[t] + r for t, r in zip(targets[split], rest)], np.int32)
          np.save(os.path.join(out, "topk_%s.npy" % split), top)
        history = [{"epoch": 1, "train_seconds": 1.0}]
        json.dump(history, open(os.path.join(out, "history.json"), "w"))
        json.dump({"model": "X", "best_epoch": 1, "epochs_run": 1,
                   "seconds": {"wall": 1.0}}, open(os.path.join(out, "run.json"), "w"))
        print("stand-in trained", job["model"])
        """))
  os.chmod(path, 0o755)


@pytest.mark.slow  # (five command runs, each loading TensorFlow: about 150 s on 2 cores)
def test_the_command_exports_runs_imports_and_resumes(tmp_path):
  data_dir = str(tmp_path / "data")
  synthetic.write_dataset(data_dir, num_items=30, num_sessions=20, max_session_length=12,
                          text_dim=8)
  venv = str(tmp_path / "venv")
  stand_in_venv(venv)
  peers_dir = tmp_path / "peers"
  args = [f"--data_dir={data_dir}", "--models=sasrec,gru4rec", f"--peers_dir={peers_dir}",
          f"--peers_venv={venv}", "--text_code_subspaces=2", "--text_code_size=3",
          "--max_len=6"]
  out = peers_command(*args)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.count("stand-in trained") == 2
  assert "sasrec: test Hits@10 100.00, Hits@20 100.00" in out.stdout
  for model in ("recbole_sasrec", "recbole_gru4rec"):
    run_dir = alter_runs.run_dir_of(str(peers_dir / "runs"), model, 0)
    assert "figures recomputed" in run_archive.check_archived_run(run_dir)
  export_file = os.path.join(peers_dir, "atomic", "synthetic", "export.json")
  with open(export_file, encoding="utf-8") as f:
    export = json.load(f)
  again = peers_command(*args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "stand-in trained" not in again.stdout and again.stdout.count("finished already") == 2
  # another training seed: a new run folder on the same export (text codes included)
  seed1 = peers_command(*args[:1], "--models=sasrec", *args[2:], "--seed=1")
  assert seed1.returncode == 0, seed1.stderr[-3000:]
  assert seed1.stdout.count("stand-in trained") == 1
  with open(export_file, encoding="utf-8") as f:
    assert json.load(f) == export
  assert "figures recomputed" in run_archive.check_archived_run(
      alter_runs.run_dir_of(str(peers_dir / "runs"), "recbole_sasrec", 1))
  changed = peers_command(*args[:-1], "--max_len=5", "--models=sasrec")
  assert changed.returncode == 1 and "other settings or data" in changed.stderr
  # the same data prepared on a CPU that rounds the text table differently: the
  # export is made again, the finished runs are skipped, nothing trains
  cpu_dir = str(tmp_path / "avx512")
  another_machine(data_dir, cpu_dir)
  moved = peers_command(f"--data_dir={cpu_dir}", *args[1:])
  assert moved.returncode == 0, moved.stderr[-3000:]
  assert "stand-in trained" not in moved.stdout and moved.stdout.count("finished already") == 2
  with open(export_file, encoding="utf-8") as f:
    assert json.load(f)["export_id"] != export["export_id"]


def test_the_command_refuses_what_it_cannot_run(tmp_path):
  out = peers_command(f"--data_dir={tmp_path / 'none'}", f"--peers_venv={tmp_path}")
  assert out.returncode == 1 and "no prepared dataset" in out.stderr
  data_dir = str(tmp_path / "data")
  synthetic.write_dataset(data_dir, num_items=30, num_sessions=10, text_dim=0)
  out = peers_command(f"--data_dir={data_dir}", f"--peers_venv={tmp_path / 'novenv'}")
  assert out.returncode == 1 and "make peers" in out.stderr
  stand_in_venv(str(tmp_path / "venv"))
  out = peers_command(f"--data_dir={data_dir}", f"--peers_venv={tmp_path / 'venv'}",
                      "--models=fdsa")
  assert out.returncode == 1 and "no text table" in out.stderr
  out = peers_command(f"--data_dir={data_dir}", f"--peers_venv={tmp_path / 'venv'}",
                      "--models=caser")
  assert out.returncode == 1 and "choose from" in out.stderr
