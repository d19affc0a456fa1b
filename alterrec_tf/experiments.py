"""The paper's comparison in one command: every model x every seed, then a report.

  python -m alterrec_tf.experiments --flagfile=configs/online_retail.flags \
      --data_dir=data/online_retail --seeds=0,1,2 \
      --runs_dir=runs/experiments --report_dir=report

Each (model, seed) trains with `alterrec_tf.train.train` (same flags, data
pipeline and evaluation as a single run) into runs_dir/<model>/seed<k>/. A run
whose results.json exists is skipped, and a run killed half-way resumes from
its own backup, so re-running the command after an interruption finishes the
grid. Runs already in runs_dir must have been trained with the same settings
and data (checked before anything trains; a changed flag is refused, naming
the runs and flags); --overwrite trains every run of the grid again. Runs go
seed by seed. Only the first seed of the models drawn per epoch in the figures
ranks the test split after every epoch; every run ranks it once with its
selected epoch's weights and stores the per-prefix ranks (test_ranks.npz, for
the long-tail analysis). Finally `alterrec_tf.report` writes report_dir/.

With --workers=n the command starts n worker processes, each taking the next
run no other worker has taken, with 1/n of the cores as TensorFlow's thread
count (environment variables read when TensorFlow first loads): this module
therefore imports TensorFlow, Keras and the model modules inside the functions
that need them, never at the top.

The training flags (and the data preparation flags of a shared flagfile, which
are ignored) are accepted as in `alterrec_tf.train`; --model, --seed and
--run_dir are replaced by --models, --seeds and --runs_dir.
"""

import gc
import os
import shutil
import subprocess
import sys
import time
from typing import Callable, List, Optional, Sequence, Set, Tuple

from absl import flags, logging

from alterrec_tf import cli, flagfiles, run_archive
from alterrec_tf import config as alter_config
from alterrec_tf import runs as alter_runs
from alterrec_tf.analysis import report as alter_report
from alterrec_tf.analysis import tables
from alterrec_tf.formats import schema
from alterrec_tf.models import names as model_names
from alterrec_tf.training import trainer

flags.DEFINE_list("models", list(model_names.DEFAULT_GRID),
                  "Models of the grid, in report order; '<model>+keep' adds that model "
                  "trained with --seen_items=keep (the default grid has sasrec+keep and "
                  "alterrec+keep).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the grid.")
flags.DEFINE_string("runs_dir", "runs/experiments",
                    "Runs go to <runs_dir>/<model>/seed<k>/ (named runs_dir, not output_dir, "
                    "because a shared flagfile's --output_dir is the prepared data folder).")
flags.DEFINE_string("report_dir", "report", "Folder of the report (tables, JSON, PNGs).")
flags.DEFINE_string("archive_dir", "",
                    "Folder of finished runs that outlives runs_dir (e.g. one under version "
                    "control): each run is copied there when it finishes (config, history, "
                    "results, test ranks; no weights), and archived runs missing from runs_dir "
                    "are restored before the grid starts, so a grid longer than one machine's "
                    "life goes on from another. Empty: no archive.")
flags.DEFINE_list("long_tail_bins", [],
                  "Upper edges (inclusive) of the target-popularity groups of the long-tail "
                  "analysis, e.g. 10,30,100,300; empty: quintiles of the test targets.")
flags.DEFINE_integer("workers", 1,
                     "Training processes run in parallel, each with cpu_count / workers TF "
                     "threads; each takes the next run no other worker has. On 2 cores, 2 "
                     "single-thread workers got through the Online Retail grid about 1.4x "
                     "faster than one 2-thread process (BUILD_NOTES.md).")
flags.DEFINE_integer("worker", -1, "Internal: the index of this worker process.")
flags.DEFINE_string("long_tail_reference", "sasrec",
                    "Model whose per-group metrics the long-tail plot divides by.")

# Models whose per-epoch test curves the figures draw (report_plots).
PER_EPOCH_TEST_MODELS = ("alterrec", "nfrec_concat", "id_only", "text_only")


def save_test_ranks(run_dir: str) -> dict:
  """Ranks the test split with a finished run's best weights (runs trained
  before `train` wrote the ranks itself); writes test_ranks.npz.

  Returns:
    The test metrics of those ranks, per head.
  """
  # (in the worker, after its thread count is set: module doc)
  from alterrec_tf.data import windows as alter_data
  from alterrec_tf.models import registry as models

  config = alter_runs.load_config(run_dir)
  manifest = schema.load_manifest(config.data_dir)
  config = alter_config.resolve_seen_items(config, manifest)  # (older runs: "auto")
  text_embeddings = schema.load_text_embeddings(config.data_dir, manifest)
  train_files = schema.split_files(config.data_dir, manifest, "train")
  test_split = alter_data.load_split(config.data_dir, manifest, "test", config.max_len,
                                     trainer.TEST_WINDOW_STRIDE)
  if test_split is None:
    return {}
  model = models.build_model(config, manifest, text_embeddings, train_files=train_files)
  if model.trainable_variables:
    model.load_weights(os.path.join(run_dir, alter_runs.BEST_WEIGHTS_FILE))
  return trainer.rank_test_split(config, model, manifest, test_split, run_dir)


def run_config(base_config: alter_config.TrainConfig, entry: str, seed: int,
               seeds: Sequence[int], runs_dir: str) -> alter_config.TrainConfig:
  """The TrainConfig of one (grid entry, seed) run of the grid.

  An entry is a model name, or "<model>+keep" for that model with
  --seen_items=keep (`models.names.split_variant`); its runs go to
  runs_dir/<entry>/seed<k>.
  """
  model, seen_items = model_names.split_variant(entry)
  # Per-epoch test curves only where the figures draw them (first seed); every
  # other run ranks the test split once, at its selected epoch.
  return base_config.replace(
      model=model, seed=seed, run_dir=alter_runs.run_dir_of(runs_dir, entry, seed),
      seen_items=seen_items or base_config.seen_items,
      test_every_epoch=base_config.test_every_epoch and (
          seed == seeds[0] and model in PER_EPOCH_TEST_MODELS))


def check_grid(base_config: alter_config.TrainConfig, models: Sequence[str],
               seeds: Sequence[int] = (), runs_dir: Optional[str] = None,
               verify_data: bool = True, clear_unstarted: bool = True) -> None:
  """Fails before training anything (not at the 30th run) when a model of the
  grid cannot run on the data, or when a run already in runs_dir was trained
  with other settings or data (it would be skipped, and the report would mix
  settings), unless --overwrite. With `clear_unstarted`, a run that crashed
  before its first epoch is cleared first (`runs.clear_unstarted_run`); the
  workers of a parallel grid must not do it, as another worker's run may have
  just started.

  Raises:
    DataError / ConfigError: naming the model (or runs) and what is wrong.
  """
  manifest = schema.load_manifest(base_config.data_dir, verify_hashes=verify_data)
  if not manifest.get("text_dim"):
    needing = [m for m in models if model_names.split_variant(m)[0] in model_names.NEEDS_TEXT]
    if needing:
      raise alter_config.ConfigError(
          f"{base_config.data_dir} has no item text, which {', '.join(needing)} need; "
          "drop them from --models or prepare the data with --text_fields")
  for entry in models:
    alter_config.check_against_dataset(
        base_config.replace(model=model_names.split_variant(entry)[0]), manifest)
  if runs_dir is None or base_config.overwrite:
    return
  conflicts = []
  for seed in seeds:
    for model in models:
      config = run_config(base_config, model, seed, seeds, runs_dir)
      if clear_unstarted:
        alter_runs.clear_unstarted_run(config.run_dir)  # crashed before its first epoch
      changed, _ = alter_runs.run_conflicts(config, manifest)
      if changed:
        conflicts.append(f"{config.run_dir}: {', '.join(changed)}")
  if conflicts:
    shown = "\n  ".join(conflicts[:5]) + (
        f"\n  ... and {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
    raise alter_config.ConfigError(
        f"{len(conflicts)} run(s) in {runs_dir} were trained with other settings:\n  {shown}\n"
        "choose another --runs_dir, or pass --overwrite to train them again")


CLAIMS_DIR = ".claims"  # under runs_dir while the workers of a grid run


def claim_run(runs_dir: str, model: str, seed: int) -> bool:
  """Takes one run of a parallel grid for this worker: True for the one
  worker whose exclusive create of runs_dir/.claims/<model>.seed<k> succeeds
  (atomic, also on network file systems that honour O_EXCL), False for the rest."""
  path = os.path.join(runs_dir, CLAIMS_DIR, f"{model}.seed{seed}")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  try:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
  except FileExistsError:
    return False
  return True


def restore_archived_runs(models: Sequence[str], seeds: Sequence[int], runs_dir: str,
                          archive_dir: str,
                          log: Optional[Callable[[str], None]] = None) -> int:
  """Copies each finished run of the grid found in archive_dir into runs_dir
  where runs_dir has no finished run of it (an unfinished one there is replaced;
  a finished one is kept, and archived again when the grid passes it); returns
  how many were copied. The grid's settings check then compares them like any
  run already in runs_dir, their data by identity (`runs.data_conflicts`: the
  archive's `runs.MIGRATION_FILE` is merged into runs_dir's for runs that only
  record the old content_hash).

  The archive is shared (committed, copied between machines): every run to
  restore is checked first (`run_archive.check_archived_run`: its files against its
  hashes.json, its test figures recomputed from its ranks), and one that fails
  is refused before anything is copied.

  Raises:
    RunFileError: naming the archived file (and metric) that fails.
  """
  run_archive.copy_migration(archive_dir, runs_dir)  # identities of pre-issue-33 runs
  to_restore = []
  for seed in seeds:
    for model in models:
      run_dir = alter_runs.run_dir_of(runs_dir, model, seed)
      archived = alter_runs.run_dir_of(archive_dir, model, seed)
      if (not os.path.exists(os.path.join(run_dir, alter_runs.RESULTS_FILE))
          and os.path.exists(os.path.join(archived, alter_runs.RESULTS_FILE))):
        checked = run_archive.check_archived_run(archived)
        if log is not None:
          log(f"{archived}: {checked}")
        to_restore.append((archived, run_dir))
  return sum(run_archive.archive_run(archived, run_dir) for archived, run_dir in to_restore)


def run_grid(base_config: alter_config.TrainConfig, models: Sequence[str], seeds: Sequence[int],
             runs_dir: str, log: Callable[[str], None] = print, shard: Tuple[int, int] = (0, 1),
             verify_data: bool = True, archive_dir: str = "") -> dict:
  """Trains every missing (model, seed) run and stores its test ranks.

  With shard=(i, n), n > 1, this is worker i of n: it goes down the grid and
  takes each run no other worker has claimed (`claim_run`), so a worker that
  finishes early takes the next free run, whichever runs were finished before
  (a fixed split would leave a worker idle on a half-finished grid). With
  archive_dir, each finished run is copied there (`run_archive.archive_run`).

  Returns:
    {"trained": n, "skipped": n, "seconds": wall seconds of this call}.
  """
  import keras  # after the thread-count env is set

  # a worker (shard[1] > 1) leaves unstarted runs alone: the parent cleared them
  check_grid(base_config, models, seeds, runs_dir, verify_data, clear_unstarted=shard[1] == 1)
  # Seed-major: an interrupted grid has whole seeds of every model, not all
  # seeds of the first models only.
  grid = [(m, s) for s in seeds for m in models]
  start = time.perf_counter()
  trained = skipped = 0
  for index, (model, seed) in enumerate(grid, 1):
    if shard[1] > 1 and not claim_run(runs_dir, model, seed):
      continue  # another worker has it
    config = run_config(base_config, model, seed, seeds, runs_dir)
    run_dir = config.run_dir
    prefix = f"[{index}/{len(grid)}] {model} seed {seed}"
    elapsed = f"{time.perf_counter() - start:.0f}s elapsed"
    finished = (not base_config.overwrite
                and os.path.exists(os.path.join(run_dir, alter_runs.RESULTS_FILE)))
    ranks_path = os.path.join(run_dir, alter_runs.TEST_RANKS_FILE)
    if finished and os.path.exists(ranks_path):
      log(f"{prefix}: finished earlier, skipped ({elapsed})")
      skipped += 1
      if archive_dir:
        run_archive.archive_run(run_dir, alter_runs.run_dir_of(archive_dir, model, seed))
      continue
    run_start = time.perf_counter()
    if not finished:
      log(f"{prefix}: training into {run_dir} ({elapsed})")
      trainer.train(config, save_test_ranks=True, verify_data=verify_data)
      trained += 1
    if not os.path.exists(ranks_path):  # floors (no best weights); runs from older versions
      if finished:
        log(f"{prefix}: trained earlier, ranking its test prefixes ({elapsed})")
      save_test_ranks(run_dir)
      alter_runs.write_hashes(run_dir)  # the ranks are part of the finished run
    results = alter_runs.read_json(os.path.join(run_dir, alter_runs.RESULTS_FILE))
    fused = results.get("test", {}).get("fused", {})
    log(f"{prefix}: done in {time.perf_counter() - run_start:.0f}s, best epoch "
        f"{results.get('best_epoch')} of {results.get('epochs_run')}, test Hits@20 "
        f"{100 * fused.get('hits@20', float('nan')):.2f} NDCG@20 "
        f"{100 * fused.get('ndcg@20', float('nan')):.2f}")
    if archive_dir:
      run_archive.archive_run(run_dir, alter_runs.run_dir_of(archive_dir, model, seed))
    keras.backend.clear_session()
    gc.collect()
  return {"trained": trained, "skipped": skipped, "seconds": time.perf_counter() - start}


def run_workers(models: Sequence[str], seeds: Sequence[int], runs_dir: str, workers: int,
                overwrite: bool = False) -> dict:
  """Runs `workers` copies of this command; each takes the next unclaimed run.

  Each gets cpu_count // workers TF threads (at least 1). Returns the grid
  summary of `run_grid` over all of them.

  Raises:
    SystemExit: a worker failed (its own error is on stderr).
  """
  threads = str(max(1, (os.cpu_count() or 1) // workers))
  env = dict(os.environ, TF_NUM_INTRAOP_THREADS=threads, TF_NUM_INTEROP_THREADS="1",
             OMP_NUM_THREADS=threads)

  def finished() -> Set[Tuple[str, int]]:
    return {(m, s) for m in models for s in seeds if os.path.exists(os.path.join(
        alter_runs.run_dir_of(runs_dir, m, s), alter_runs.RESULTS_FILE))}

  before = set() if overwrite else finished()
  start = time.perf_counter()
  claims = os.path.join(runs_dir, CLAIMS_DIR)
  shutil.rmtree(claims, ignore_errors=True)  # a killed grid's claims: its runs resume
  os.makedirs(claims)
  command = [sys.executable, "-m", "alterrec_tf.experiments"] + sys.argv[1:]
  processes = [subprocess.Popen(command + [f"--worker={i}"], env=env)
               for i in range(workers)]
  codes = [process.wait() for process in processes]
  shutil.rmtree(claims, ignore_errors=True)
  if any(codes):
    raise SystemExit(f"error: worker(s) {[i for i, c in enumerate(codes) if c]} failed; "
                     "finished runs are kept, run the same command again to resume")
  after = finished()
  return {"trained": len(after - before), "skipped": len(before),
          "seconds": time.perf_counter() - start}


def main(argv: List[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  cli.load_tensorflow(cli.flag_value("tensorflow_log", False))  # after the TF_NUM_* env
  import tensorflow as tf
  tf.get_logger().setLevel("ERROR")  # retracing notices of the per-run evaluators
  config = alter_config.TrainConfig.from_flags()
  if not config.data_dir:
    raise cli.CommandError("--data_dir is required (the output_dir of data_tools.prepare)")
  verify_data = bool(cli.flag_value("verify_data", True))
  models = list(flags.FLAGS.models)
  unknown = [m for m in models if model_names.split_variant(m)[0] not in model_names.ALL]
  if unknown:
    raise SystemExit(f"error: unknown --models {unknown}; choose from {list(model_names.ALL)} "
                     f"(each optionally with {model_names.KEEP_SEEN_SUFFIX})")
  try:
    seeds = [int(s) for s in flags.FLAGS.seeds]
    bins = [float(b) for b in flags.FLAGS.long_tail_bins]
  except ValueError as error:
    raise SystemExit(f"error: --seeds and --long_tail_bins take numbers: {error}") from None
  runs_dir, report_dir = flags.FLAGS.runs_dir, flags.FLAGS.report_dir
  workers, worker = flags.FLAGS.workers, flags.FLAGS.worker
  archive_dir = flags.FLAGS.archive_dir
  if workers < 1 or worker >= workers:
    raise SystemExit(f"error: need --workers >= 1 and --worker < --workers, got "
                     f"{workers} and {worker}")
  if worker < 0:
    print(f"grid: {len(models)} models x {len(seeds)} seeds = {len(models) * len(seeds)} "
          f"runs on {config.data_dir} -> {runs_dir}"
          + (f", {workers} workers" if workers > 1 else ""), flush=True)
    if archive_dir and not config.overwrite:
      restored = restore_archived_runs(models, seeds, runs_dir, archive_dir)
      if restored:
        print(f"grid: {restored} of {len(models) * len(seeds)} runs restored from the archive "
              f"{archive_dir} (each checked: test figures recomputed from its ranks, files "
              "against its hashes; its data is checked against --data_dir next)", flush=True)
  if workers > 1 and worker < 0:
    # here too: fail before starting workers
    check_grid(config, models, seeds, runs_dir, verify_data)
    grid = run_workers(models, seeds, runs_dir, workers, config.overwrite)
  else:
    grid = run_grid(config, models, seeds, runs_dir,
                    log=lambda line: print(line, flush=True),
                    shard=(max(worker, 0), workers if worker >= 0 else 1),
                    verify_data=verify_data, archive_dir=archive_dir)
  if worker >= 0:  # the parent process writes the report
    return
  meta = {"command": " ".join(["python -m alterrec_tf.experiments"] + sys.argv[1:]),
          "models": ",".join(models), "seeds": ",".join(map(str, seeds)),
          "runs_trained_now": grid["trained"], "runs_skipped": grid["skipped"],
          "seconds_this_invocation": round(grid["seconds"], 1)}
  output = alter_report.write_report(runs_dir, report_dir, models, seeds, bins or None,
                                     flags.FLAGS.long_tail_reference, meta)
  print(f"\nTest metrics (%), mean ± std over seeds {','.join(map(str, seeds))}, "
        f"{output['meta']['dataset']}:")
  print(tables.format_results_markdown(output["table"]))
  print(f"\n{grid['trained']} runs trained, {grid['skipped']} skipped, "
        f"{grid['seconds']:.0f}s; report: {os.path.join(report_dir, 'README.md')}")


def run() -> None:
  cli.run(main, flagfiles.PREPARE_FLAG_NAMES,
          io_hint="finished runs are kept: run the same command again to resume")


if __name__ == "__main__":
  run()
