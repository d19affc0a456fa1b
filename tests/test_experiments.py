"""Experiments grid and report: every model through the experiments CLI,
resumability, the long-tail grouping, and the report's tables and figures."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from alterrec_tf import experiments, run_archive
from alterrec_tf import runs as alter_runs
from alterrec_tf.analysis import long_tail, report, tables
from alterrec_tf.analysis.runs import load_runs
from alterrec_tf.config import ConfigError, TrainConfig
from alterrec_tf.models import names as model_names
from alterrec_tf.training import evaluation
from tests import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_MODELS = model_names.DEFAULT_GRID  # every model, and the seen-items-kept variants


# --- long-tail grouping ---------------------------------------------------------------------
def test_long_tail_groups_put_every_prefix_in_exactly_one_group():
  rng = np.random.default_rng(0)
  bins = [5, 20, 50, 100]
  counts = np.concatenate([rng.integers(0, 400, 5000), [0, 5, 6, 20, 21, 50, 100, 101]])
  groups = long_tail.long_tail_groups(counts, bins)
  assert groups.shape == counts.shape and groups.dtype == np.int64
  edges = [-np.inf] + bins + [np.inf]
  membership = np.stack([(counts > lo) & (counts <= hi) for lo, hi in zip(edges[:-1], edges[1:])])
  np.testing.assert_array_equal(membership.sum(axis=0), 1)  # exactly one group each
  np.testing.assert_array_equal(np.argmax(membership, axis=0), groups)
  assert np.bincount(groups, minlength=len(bins) + 1).sum() == counts.size
  assert long_tail.group_labels(bins) == ["[0,5]", "(5,20]", "(20,50]", "(50,100]", ">100"]
  np.testing.assert_array_equal(long_tail.long_tail_groups([5, 6, 100, 101], bins), [0, 1, 3, 4])


def test_automatic_long_tail_bins_split_the_prefixes_into_groups():
  counts = np.random.default_rng(1).zipf(1.6, 3000).clip(max=5000)
  bins = long_tail.auto_bins(counts)
  assert bins == sorted(set(bins)) and len(bins) >= 1
  groups = long_tail.long_tail_groups(counts, bins)
  sizes = np.bincount(groups, minlength=len(bins) + 1)
  assert sizes.sum() == counts.size and (sizes > 0).all()
  with pytest.raises(ValueError):
    long_tail.long_tail_groups(counts, [10, 5])


# --- report from hand-made runs -----------------------------------------------------------
def fake_run(runs_dir, model, seed, hits20, rng, heads=("fused",), targets=None, counts=None):
  run_dir = os.path.join(runs_dir, model, f"seed{seed}")
  os.makedirs(run_dir)
  metrics = {"hits@10": hits20 / 2, "hits@20": hits20, "ndcg@10": hits20 / 4,
             "ndcg@20": hits20 / 3, "mrr@20": hits20 / 5}
  results = {"model": model, "seed": seed, "dataset": "fake", "data_content_hash": "abc",
             "best_epoch": 2, "epochs_run": 3, "train_examples_per_epoch": 1000,
             "wall_seconds_this_process": 3.0,
             "test": {h: dict(metrics) for h in heads}, "valid": {h: dict(metrics) for h in heads}}
  history = []
  for epoch in (1, 2, 3):
    record = {"epoch": epoch, "train_seconds": 2.0, "eval_seconds": 1.0,
              "train_examples_per_second": 500.0, "train/loss": 5.0 - epoch,
              "train/id_loss": 5.5 - epoch, "train/text_loss": 6.0 - epoch,
              "train/phase": float(epoch % 2), "train/hard_negatives": float(epoch > 1)}
    for h in heads:
      record[f"test/{h}/hits@20"] = hits20 * epoch / 3
    history.append(record)
  with open(os.path.join(run_dir, "results.json"), "w") as f:
    json.dump(results, f)
  with open(os.path.join(run_dir, "history.json"), "w") as f:
    json.dump(history, f)
  ranks = {h: rng.integers(1, 22, targets.size) for h in heads}
  np.savez(os.path.join(run_dir, "test_ranks.npz"), targets=targets,
           target_train_counts=counts, **ranks)


def test_results_table_prints_no_spread_for_a_model_with_one_seed():
  # a grid in progress: one model has finished a single seed, another three
  table = {"alterrec": {"hits@20": tables.mean_std([0.53])},
           "sasrec": {"hits@20": tables.mean_std([0.50, 0.52, 0.54])}}
  for model, values in (("alterrec", [0.53]), ("sasrec", [0.50, 0.52, 0.54])):
    table[model]["hits@20"]["values"] = values
  markdown = tables.format_results_markdown(table, metrics=("hits@20",))
  assert "| AlterRec | 1 | **53.00** |" in markdown
  assert "| SASRec | 3 | 52.00 ± 2.00 |" in markdown


def test_the_report_names_the_best_floor_and_the_models_below_it():
  table = {model: {"hits@20": tables.mean_std([value]), "ndcg@20": tables.mean_std([value / 2])}
           for model, value in (("alterrec", 0.53), ("nfrec_sum", 0.20), ("stan", 0.35),
                                ("sequential_rules", 0.47), ("most_popular", 0.04))}
  line = tables.best_floor_line(table, metrics=("hits@20", "ndcg@20"))
  assert line.startswith("Best count floor (test Hits@20): SR (Ludewig & Jannach 2018), "
                         "Hits@20 / NDCG@20 47.00 / 23.50.")
  # the floors are not listed as below it, the neural rows under it are
  assert line.endswith("Below it on Hits@20: NFRec (sum).")
  assert tables.best_floor_line({"alterrec": table["alterrec"]}) == ""


def test_report_writes_table_json_and_three_figures(tmp_path):
  rng = np.random.default_rng(0)
  runs_dir, report_dir = str(tmp_path / "runs"), str(tmp_path / "report")
  targets = rng.integers(1, 50, 400)
  counts = rng.integers(0, 300, 50)[targets]
  values = {"sasrec": [0.30, 0.34, 0.32], "nfrec_concat": [0.35, 0.37, 0.36],
            "alterrec": [0.40, 0.44, 0.42], "most_popular": [0.1, 0.1, 0.1]}
  for model, hits in values.items():
    heads = ("fused", "id", "text") if model in ("nfrec_concat", "alterrec") else ("fused",)
    for seed, h in enumerate(hits):
      fake_run(runs_dir, model, seed, h, rng, heads, targets, counts)
  # a grid resumed across machines: two sasrec runs at another commit, one from an
  # edited checkout
  for seed, version in ((1, {"git_commit": "b" * 40, "modified": False}),
                        (2, {"git_commit": "b" * 40, "modified": True})):
    path = os.path.join(runs_dir, "sasrec", f"seed{seed}", "results.json")
    results = json.load(open(path, encoding="utf-8"))
    with open(path, "w", encoding="utf-8") as f:
      json.dump(dict(results, code_version=version), f)

  output = report.write_report(runs_dir, report_dir, bins=[20, 100])
  assert output["meta"]["code_commits"] == {"b" * 12: 1, "b" * 12 + " with local changes": 1,
                                            "not recorded": 10}
  for model, hits in values.items():
    cell = output["table"][model]["hits@20"]
    assert cell["values"] == hits and cell["seeds"] == [0, 1, 2]
    assert math.isclose(cell["mean"], np.mean(hits))
    assert math.isclose(cell["std"], np.std(hits, ddof=1))
  markdown = open(os.path.join(report_dir, "README.md"), encoding="utf-8").read()
  assert "| AlterRec | 3 | **21.00 ± 1.00** | **42.00 ± 2.00** |" in markdown
  assert "| SASRec | 3 | 16.00 ± 1.00 | 32.00 ± 2.00 |" in markdown
  assert (f"Code: {'b' * 12} (1 run); {'b' * 12} with local changes (1 run); "
          "not recorded (10 runs).") in markdown
  saved = json.load(open(os.path.join(report_dir, "results.json"), encoding="utf-8"))
  assert saved["table"]["alterrec"]["ndcg@20"]["values"] == pytest.approx([0.40 / 3, 0.44 / 3,
                                                                          0.42 / 3])
  assert len(saved["runs"]) == 12 and saved["parts"]["alterrec"]["text"]["hits@20"]
  tail = saved["long_tail"]
  assert tail["labels"] == ["[0,20]", "(20,100]", ">100"] and tail["reference"] == "sasrec"
  assert sum(tail["prefixes"]) == targets.size and math.isclose(sum(tail["share"]), 1.0)
  assert set(tail["improvement"]) == {"nfrec_concat", "alterrec", "most_popular"}
  for name in ("fig3_nfrec.png", "fig5_alterrec.png", "fig6_long_tail.png"):
    path = os.path.join(report_dir, name)
    assert os.path.getsize(path) > 10_000
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  # the command: the same table from the same runs; bad input is one line, exit 1
  command = [sys.executable, "-m", "alterrec_tf.report", f"--runs_dir={runs_dir}",
             f"--report_dir={tmp_path / 'report_cli'}", "--models=alterrec,sasrec"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "| AlterRec | 3 | **21.00 ± 1.00** | **42.00 ± 2.00** |" in out.stdout
  assert "| MostPopular |" not in out.stdout  # only the --models asked for
  for flag, message in (("--runs_dir=" + str(tmp_path / "nowhere"), "is not a folder"),
                        ("--models=sasrec,transformer", "unknown --models ['transformer']"),
                        ("--seeds=7", "no finished run (results.json) under")):
    out = subprocess.run(command + [flag], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1 and message in out.stderr, (flag, out.stderr[-2000:])
    assert out.stderr.strip().splitlines()[-1].startswith("error: "), out.stderr[-2000:]

  # without the reference model the long-tail figure shows each model's metrics
  other = report.write_report(runs_dir, str(tmp_path / "report2"), models=["alterrec"])
  assert other["long_tail"]["reference"] is None and not other["long_tail"]["improvement"]
  assert other["figures"] == {"fig5": "fig5_alterrec.png", "fig6": "fig6_long_tail.png"}


def test_report_without_matplotlib_writes_the_tables_and_says_why_no_figures(
    tmp_path, monkeypatch):
  rng = np.random.default_rng(1)
  runs_dir, report_dir = str(tmp_path / "runs"), str(tmp_path / "report")
  targets = rng.integers(1, 50, 100)
  for seed in (0, 1):
    fake_run(runs_dir, "alterrec", seed, 0.4, rng, ("fused", "id", "text"), targets,
             rng.integers(0, 300, 50)[targets])
  real_find_spec = report.importlib.util.find_spec
  monkeypatch.setattr(report.importlib.util, "find_spec",
                      lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
  output = report.write_report(runs_dir, report_dir, bins=[20, 100])
  assert output["figures"] == {} and output["table"]["alterrec"]["hits@20"]["seeds"] == [0, 1]
  assert not [n for n in os.listdir(report_dir) if n.endswith(".png")]
  markdown = open(os.path.join(report_dir, "README.md"), encoding="utf-8").read()
  assert "matplotlib is not installed" in markdown and "| AlterRec | 2 |" in markdown


# --- the whole grid through the CLI ---------------------------------------------------------
def test_archive_run_copies_finished_runs_only_and_replaces_an_archived_run_whole(tmp_path):
  run_dir, archived = tmp_path / "runs" / "sasrec" / "seed0", tmp_path / "archive" / "seed0"
  run_dir.mkdir(parents=True)
  (run_dir / "config.json").write_text("{}")
  (run_dir / "backup").mkdir()
  assert not run_archive.archive_run(str(run_dir), str(archived))  # unfinished: not archived
  assert not archived.exists()
  for name, text in (("results.json", '{"hits": 1}'), ("history.json", "[]"),
                     ("best.weights.h5", "weights")):
    (run_dir / name).write_text(text)
  (run_dir / "tb").mkdir()
  assert run_archive.archive_run(str(run_dir), str(archived))
  assert {p.name for p in archived.iterdir()} == {"config.json", "results.json", "history.json"}
  assert not run_archive.archive_run(str(run_dir), str(archived))  # the same run: no copy
  # a run trained again replaces the archived one whole: a file the new run lacks goes
  (archived / "alpha_sweep.json").write_text("{}")
  (run_dir / "results.json").write_text('{"hits": 2}')
  assert run_archive.archive_run(str(run_dir), str(archived))
  assert json.loads((archived / "results.json").read_text()) == {"hits": 2}
  assert not (archived / "alpha_sweep.json").exists()
  assert sorted(p.name for p in archived.parent.iterdir()) == ["seed0"]  # no staging left


def test_code_version_is_the_commit_of_the_checkout_the_package_sits_at_the_top_of(tmp_path):
  def git(*args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)

  repo = tmp_path / "repo"
  package = repo / "alterrec_tf"
  package.mkdir(parents=True)
  (package / "model.py").write_text("x = 1\n")
  assert alter_runs.code_version(str(package)) == {"git_commit": None, "modified": None}
  git("init", "-q")
  git("add", ".")
  git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
  head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                        capture_output=True, text=True).stdout.strip()
  assert alter_runs.code_version(str(package)) == {"git_commit": head, "modified": False}
  (package / "model.py").write_text("x = 2\n")  # trained from an edited checkout
  assert alter_runs.code_version(str(package)) == {"git_commit": head, "modified": True}
  # an installed copy inside some other repository (a venv in a project) is not that
  # repository's code
  installed = repo / "venv" / "site-packages" / "alterrec_tf"
  installed.mkdir(parents=True)
  assert alter_runs.code_version(str(installed)) == {"git_commit": None, "modified": None}


@pytest.mark.slow  # a minute or more on 2 cores: `make test-slow` (CI runs it)
def test_experiments_cli_trains_every_model_in_two_workers_then_skips_finished_runs(tmp_path):
  data_dir = str(tmp_path / "data")
  synthetic.write_dataset(data_dir, num_items=50, num_sessions=60, max_session_length=16)
  runs_dir, report_dir = tmp_path / "runs", tmp_path / "report"
  archive_dir = tmp_path / "archive"
  flags_ = ["--m_max=1", "--m_random=1", "--embedding_dim=8", "--max_len=8",
            "--num_layers=1", "--k1=2", "--k2=12", "--p=2", "--batch_size=32",
            "--eval_batch_size=64", "--verbose=0"]
  command = [sys.executable, "-m", "alterrec_tf.experiments", f"--data_dir={data_dir}",
             f"--runs_dir={runs_dir}", f"--report_dir={report_dir}", "--seeds=0",
             "--models=" + ",".join(ALL_MODELS), "--workers=2",
             f"--archive_dir={archive_dir}"] + flags_
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  for model in ALL_MODELS:  # claims a killed grid left behind: the new grid clears them
    assert experiments.claim_run(str(runs_dir), model, 0)
  out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert "warning" not in out.stdout, out.stdout

  for model in ALL_MODELS:
    run_dir = runs_dir / model / "seed0"
    results = json.loads((run_dir / "results.json").read_text())
    base, seen_items = model_names.split_variant(model)
    assert results["model"] == base
    if seen_items:
      assert results["seen_items"] == seen_items
    for head, metrics in results["test"].items():
      for name, value in metrics.items():
        assert math.isfinite(value) and 0.0 <= value <= 1.0, (model, head, name)
    with np.load(run_dir / "test_ranks.npz") as ranks:
      recomputed = evaluation.metrics_from_ranks(ranks["fused"])
      assert ranks["targets"].shape == ranks["target_train_counts"].shape
    for name, value in recomputed.items():
      assert value == pytest.approx(results["test"]["fused"][name], abs=1e-5), (model, name)
  history = json.loads((runs_dir / "nfrec_concat" / "seed0" / "history.json").read_text())
  assert {"train/id_loss", "train/text_loss", "test/id/hits@20"} <= set(history[0])
  # models not drawn per epoch rank the test split once, at the selected epoch
  history = json.loads((runs_dir / "sasrec" / "seed0" / "history.json").read_text())
  assert not any(key.startswith("test/") for key in history[0])

  saved = json.loads((report_dir / "results.json").read_text())
  assert set(saved["table"]) == set(ALL_MODELS)
  for name in ("README.md", "fig3_nfrec.png", "fig5_alterrec.png", "fig6_long_tail.png"):
    assert (report_dir / name).stat().st_size > 0
  assert "| AlterRec |" in out.stdout and f"{len(ALL_MODELS)} runs trained, 0 skipped" in out.stdout
  readme = (report_dir / "README.md").read_text(encoding="utf-8")
  assert "| AlterRec (seen items kept) |" in readme and "| SASRec (seen items kept) |" in readme
  assert "Test protocol: every scored prefix with exactly its last 8 items" in readme
  # every run records the code it was trained with, and the report says which
  version = alter_runs.code_version()
  for model in ALL_MODELS:
    results = json.loads((runs_dir / model / "seed0" / "results.json").read_text())
    assert results["code_version"] == version, model
  commit = version["git_commit"]
  if commit is not None:  # a git checkout (a copy without .git records none)
    assert f"Code: {commit[:12]}" in readme and f"({len(ALL_MODELS)} runs)" in readme
  # the cost table leaves the training columns of the count-based floors empty
  cost_rows = (report_dir / "README.md").read_text(encoding="utf-8").split("## Cost")[1]
  assert "| MostPopular | – | – | – | – |" in cost_rows
  assert "| SASRec | 1.0 | 1.0 |" in cost_rows
  # two workers split the grid: every run was trained by exactly one of them
  assert all(out.stdout.count(f"] {model} seed 0: training into") == 1 for model in ALL_MODELS)
  assert not (runs_dir / experiments.CLAIMS_DIR).exists()  # the claims went with the workers

  # a worker takes whatever run nobody has claimed, not a fixed share of the grid: with
  # every run but the first claimed, worker 1 of 2 takes the first (a fixed split gave it
  # the 2nd, 4th, ...) and leaves the rest alone
  lines = []
  config = TrainConfig(data_dir=data_dir, m_max=1, m_random=1, embedding_dim=8, max_len=8,
                       num_layers=1, k1=2, k2=12, p=2, batch_size=32, verbose=0)
  for model in ALL_MODELS[1:]:
    assert experiments.claim_run(str(runs_dir), model, 0)
  assert not experiments.claim_run(str(runs_dir), ALL_MODELS[1], 0)  # taken once only
  experiments.run_grid(config, list(ALL_MODELS), [0], str(runs_dir), log=lines.append,
                       shard=(1, 2))
  assert len(lines) == 1 and f"] {ALL_MODELS[0]} seed 0: finished earlier" in lines[0], lines
  # a killed grid's .claims is not a model for the report
  assert {run.model for run in load_runs(str(runs_dir), seeds=[0])} == set(ALL_MODELS)
  shutil.rmtree(runs_dir / experiments.CLAIMS_DIR)

  # resumable: a second pass over the grid trains nothing
  lines.clear()
  grid = experiments.run_grid(config, list(ALL_MODELS), [0], str(runs_dir), log=lines.append)
  assert grid["trained"] == 0 and grid["skipped"] == len(ALL_MODELS)
  assert all("finished earlier, skipped" in line for line in lines)

  # the workers copied every finished run to --archive_dir: what the report and a resumed
  # grid read, not the weights, backup or logs
  for model in ALL_MODELS:
    archived = {path.name for path in (archive_dir / model / "seed0").iterdir()}
    assert {"config.json", "results.json", "test_ranks.npz"} <= archived, (model, archived)
    assert archived <= set(alter_runs.ARCHIVED_FILES), (model, archived)
  assert not list(archive_dir.glob("*/*.tmp")) and not list(archive_dir.glob("*/*.old"))
  # another machine: an empty runs_dir restored from the archive trains nothing, and
  # its report equals the first one
  fresh_runs = tmp_path / "fresh_runs"
  assert experiments.restore_archived_runs(list(ALL_MODELS), [0], str(fresh_runs),
                                           str(archive_dir)) == len(ALL_MODELS)
  assert experiments.restore_archived_runs(list(ALL_MODELS), [0], str(fresh_runs),
                                           str(archive_dir)) == 0  # already there
  # a finished run of runs_dir is never replaced by the archive's (here: another one)
  sasrec_results = fresh_runs / "sasrec" / "seed0" / "results.json"
  (archive_dir / "sasrec" / "seed0" / "results.json").write_text('{"seed": 0}')
  before = sasrec_results.read_text()
  assert experiments.restore_archived_runs(["sasrec"], [0], str(fresh_runs),
                                           str(archive_dir)) == 0
  assert sasrec_results.read_text() == before
  grid = experiments.run_grid(config, list(ALL_MODELS), [0], str(fresh_runs),
                              log=lines.append)
  assert grid["trained"] == 0 and grid["skipped"] == len(ALL_MODELS)
  fresh_report = report.write_report(str(fresh_runs), str(tmp_path / "fresh_report"),
                                     list(ALL_MODELS), [0], None, "sasrec", {})
  assert (json.dumps(fresh_report["table"], sort_keys=True)
          == json.dumps(saved["table"], sort_keys=True))

  # a changed flag is refused before anything trains (skipping would mix settings) ...
  with pytest.raises(ConfigError, match=r"(?s)runs/sasrec/seed0: --embedding_dim=8 \(now 16\)"):
    experiments.run_grid(config.replace(embedding_dim=16), ["sasrec", "alterrec"], [0],
                         str(runs_dir), log=lines.append)
  assert json.loads((runs_dir / "sasrec" / "seed0" / "config.json").read_text())[
      "embedding_dim"] == 8
  # ... and --overwrite trains the grid's runs again with the new flags
  lines.clear()
  grid = experiments.run_grid(config.replace(embedding_dim=16, overwrite=True), ["sasrec"], [0],
                              str(runs_dir), log=lines.append)
  assert grid["trained"] == 1 and grid["skipped"] == 0, lines
  assert json.loads((runs_dir / "sasrec" / "seed0" / "config.json").read_text())[
      "embedding_dim"] == 16
  assert (runs_dir / "sasrec" / "seed0" / "test_ranks.npz").exists()


# --- an archived run proves its figures before it is restored (issue 34) ----------------------
def archived_run(archive_dir, model="sasrec", seed=0, hashes=True):
  """A finished run in archive_dir as the grid archives it: config, history,
  results whose test figures are those of its test_ranks.npz, and hashes.json."""
  run_dir = alter_runs.run_dir_of(str(archive_dir), model, seed)
  alter_runs.write_config(run_dir, TrainConfig(data_dir="data", run_dir=run_dir, model=model,
                                               seed=seed))
  rng = np.random.default_rng(seed)
  ranks = {"fused": rng.integers(1, 22, 300).astype(np.int32)}  # 21 = outside the top 20
  np.savez(os.path.join(run_dir, alter_runs.TEST_RANKS_FILE), targets=rng.integers(1, 50, 300),
           target_train_counts=rng.integers(0, 9, 300), **ranks)
  fused = evaluation.metrics_from_ranks(ranks["fused"])
  fused.update({f"tfrs_{name}": value for name, value in fused.items() if "hits" in name})
  alter_runs.write_json_atomic(os.path.join(run_dir, alter_runs.HISTORY_FILE), [{"epoch": 1}])
  results = {"model": model, "seed": seed, "test": {"fused": fused}, "valid": {}}
  alter_runs.write_json_atomic(os.path.join(run_dir, alter_runs.RESULTS_FILE), results)
  if hashes:
    alter_runs.write_hashes(run_dir)
  return run_dir


def edit_results(run_dir, head, metric, value, rehash=True):
  path = os.path.join(run_dir, alter_runs.RESULTS_FILE)
  results = json.loads(open(path, encoding="utf-8").read())
  results["test"][head][metric] = value
  alter_runs.write_json_atomic(path, results)
  if rehash:  # whoever edited it also fixed the hashes: the ranks still tell
    alter_runs.write_hashes(run_dir)


def test_a_restored_run_is_checked_and_a_tampered_one_refused_before_any_copy(tmp_path):
  archive, runs_dir = tmp_path / "archive", tmp_path / "runs"
  good = archived_run(archive, "sasrec")
  assert run_archive.check_archived_run(good).startswith("7 figures recomputed")
  tampered = archived_run(archive, "alterrec")
  edit_results(tampered, "fused", "hits@20", 0.99)
  with pytest.raises(alter_runs.RunFileError) as refused:
    experiments.restore_archived_runs(["sasrec", "alterrec"], [0], str(runs_dir), str(archive))
  message = str(refused.value)
  assert f"{tampered}/results.json: test fused hits@20 is 0.99 but" in message
  assert f"{tampered}/test_ranks.npz gives 0." in message and "nothing was restored" in message
  assert not runs_dir.exists()  # the good run was not copied either: all checked first
  # a tfrs figure far from the ranks' hits, and a metric the ranks cannot give
  edit_results(tampered, "fused", "hits@20", evaluation.metrics_from_ranks(
      np.load(os.path.join(tampered, "test_ranks.npz"))["fused"])["hits@20"])
  assert run_archive.check_archived_run(tampered)
  edit_results(tampered, "fused", "tfrs_hits@10", 0.5)
  with pytest.raises(alter_runs.RunFileError, match="test fused tfrs_hits@10 is 0.5 but"):
    run_archive.check_archived_run(tampered)
  edit_results(tampered, "fused", "tfrs_hits@10", None)
  with pytest.raises(alter_runs.RunFileError, match="tfrs_hits@10 cannot be recomputed"):
    run_archive.check_archived_run(tampered)
  # the hashes: an edited file that the ranks cannot check, a lost ranks file
  shutil.rmtree(tampered)
  tampered = archived_run(archive, "alterrec")
  with open(os.path.join(tampered, "history.json"), "a", encoding="utf-8") as f:
    f.write(" ")
  with pytest.raises(alter_runs.RunFileError,
                     match=f"{tampered}/history.json does not match its SHA-256 in"):
    run_archive.check_archived_run(tampered)
  alter_runs.write_hashes(tampered)
  os.remove(os.path.join(tampered, "test_ranks.npz"))
  with pytest.raises(alter_runs.RunFileError, match=f"{tampered}/test_ranks.npz is missing"):
    run_archive.check_archived_run(tampered)
  shutil.rmtree(tampered)
  # a run archived before hashes.json existed: its figures are still recomputed
  archived_run(archive, "alterrec", hashes=False)
  assert experiments.restore_archived_runs(["sasrec", "alterrec"], [0], str(runs_dir),
                                           str(archive)) == 2
  assert (runs_dir / "sasrec" / "seed0" / "hashes.json").exists()
  run_archive.check_hashes(str(runs_dir / "sasrec" / "seed0"))


def test_the_committed_archive_keeps_restoring(tmp_path):
  # benchmarks/grid_runs has no hashes.json: the ranks check it, and it is not rewritten
  archive = os.path.join(REPO, "benchmarks", "grid_runs", "online_retail")
  before = open(os.path.join(archive, "alterrec", "seed1", "results.json"), "rb").read()
  assert experiments.restore_archived_runs(["alterrec", "most_popular"], [1], str(tmp_path),
                                           archive) == 2
  assert open(os.path.join(archive, "alterrec", "seed1", "results.json"), "rb").read() == before
  assert not os.path.exists(os.path.join(archive, "alterrec", "seed1", "hashes.json"))


@pytest.mark.parametrize("damage", ["figure", "cut_config", "cut_results_in_runs_dir"])
def test_experiments_cli_refuses_a_damaged_archive_or_run_in_one_line(tmp_path, damage):
  data_dir = str(tmp_path / "data")
  synthetic.write_dataset(data_dir, num_items=30, num_sessions=20, max_session_length=8)
  archive, runs_dir = tmp_path / "archive", tmp_path / "runs"
  run_dir = archived_run(archive, "sasrec")
  if damage == "figure":
    edit_results(run_dir, "fused", "ndcg@10", 0.99, rehash=False)
    bad, words = os.path.join(run_dir, "results.json"), ("test fused ndcg@10 is 0.99",)
  elif damage == "cut_config":
    bad, words = os.path.join(run_dir, "config.json"), ("is damaged", "git checkout")
  else:
    shutil.copytree(run_dir, runs_dir / "sasrec" / "seed0")
    bad, words = str(runs_dir / "sasrec" / "seed0" / "results.json"), ("is damaged",
                                                                         "--overwrite")
  if damage.startswith("cut"):
    with open(bad, "r+b") as f:
      f.truncate(os.path.getsize(bad) // 2)
  listing = sorted(str(p) for p in tmp_path.rglob("*"))
  out = subprocess.run(
      [sys.executable, "-m", "alterrec_tf.experiments", f"--data_dir={data_dir}",
       f"--runs_dir={runs_dir}", f"--report_dir={tmp_path / 'report'}", "--seeds=0",
       "--models=sasrec", f"--archive_dir={archive}", "--m_max=1", "--embedding_dim=8",
       "--max_len=8"], cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
      capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-3000:]
  assert "Traceback" not in out.stderr and "internal error" not in out.stderr, out.stderr
  lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1 and lines[0].startswith(f"error: {bad}"), out.stderr[-3000:]
  assert all(word in lines[0] for word in words), lines[0]
  assert sorted(str(p) for p in tmp_path.rglob("*")) == listing  # nothing copied or trained


def test_the_report_names_a_cut_history_json(tmp_path):
  run_dir = archived_run(tmp_path / "runs", "sasrec")
  history = os.path.join(run_dir, alter_runs.HISTORY_FILE)
  alter_runs.write_json_atomic(history, [{"epoch": 1, "train_seconds": 1.0}] * 20)
  with open(history, "r+b") as f:
    f.truncate(os.path.getsize(history) // 2)
  with pytest.raises(alter_runs.RunFileError, match=f"{history} is damaged .*--overwrite"):
    load_runs(str(tmp_path / "runs"), seeds=[0])
