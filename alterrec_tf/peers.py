"""RecBole 1.2.1's baselines on exactly our splits (issue 35): export, train, import.

  make peers   # once: .venv-peers, RecBole 1.2.1 with its numpy 1.26 / pandas 1.5
  python -m alterrec_tf.peers --flagfile=configs/amazon_office.flags \\
      --models=sasrec,gru4rec,bert4rec,srgnn,core,fdsa,s3rec --peers_dir=runs/peers/office
  python -m alterrec_tf.report --runs_dir=runs/peers/office/runs --report_dir=report/peers

1. Export: the dataset's scored prefixes become RecBole atomic benchmark files,
   one row per prefix, in our order (`recbole.atomic`; reused while the data and
   settings are the same): <peers_dir>/atomic/<name>/.
2. For each model, a job file and the peers venv's python on
   `peers/recbole_run.py` (RecBole's trainer with validation early stopping, our
   seen-item rule, the top-k lists of every validation and test row):
   <peers_dir>/work/recbole_<model>/.
3. Import: the lists ranked by our metrics into a run folder the report reads:
   <peers_dir>/runs/recbole_<model>/seed<seed>/ (`recbole.lists`).

The models train on our flags' budget (`recbole.jobs`: d, layers, heads, dropout,
learning rate, epochs, patience, batch in prefixes, seed); --peers_config
overrides any RecBole entry. Resumable: a finished model is skipped when its
settings are the same and its data too, up to the float rounding of the text
table (so also on a machine whose CPU rounds the sentence encoder differently:
`recbole.lists.finished_run_conflicts`); one whose RecBole run finished but was
not imported is only imported, and one killed while training goes on after its
last finished epoch (the RecBole side's resume.pt); --overwrite trains the
listed models again from the start. A model that fails is named with its log
and the others go on; the command then exits with status 1.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

from absl import flags, logging

from alterrec_tf import cli, flagfiles
from alterrec_tf import config as alter_config
from alterrec_tf import runs as alter_runs
from alterrec_tf.formats import schema
from alterrec_tf.recbole import jobs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECBOLE_SCRIPT = os.path.join(REPO_ROOT, "peers", "recbole_run.py")
# The RecBole side's checkpoints in a model's work folder (peers/recbole_run.py).
RESUME_FILE = "resume.pt"
S3REC_PRETRAINED = "s3rec_pretrained.pth"


def define_flags() -> None:
  """The command's own flags (the training flags come from `alterrec_tf.config`)."""
  flags.DEFINE_list("models", list(jobs.MODELS),
                    f"RecBole models to run, in order: {', '.join(jobs.MODELS)}.")
  flags.DEFINE_string("peers_dir", "",
                      "Folder of the export, the RecBole runs and their run folders "
                      "(atomic/, work/, runs/); empty: runs/peers/<dataset name>.")
  flags.DEFINE_string("peers_venv", ".venv-peers",
                      "Virtual environment with RecBole 1.2.1 (`make peers`).")
  flags.DEFINE_integer("peers_threads", 0,
                       "torch threads of each RecBole run; 0: every core this process may use.")
  flags.DEFINE_integer("peers_batch_size", 0,
                       "Training rows (prefixes) per step; 0: as many as --batch_size of our "
                       "windows hold on average (--train_window_stride).")
  flags.DEFINE_integer("peers_eval_batch_size", 256, "Rows per full-catalogue scoring batch.")
  flags.DEFINE_string("peers_config", "",
                      "JSON object of RecBole config entries overriding every model's, e.g. "
                      "'{\"hidden_dropout_prob\": 0.5}'.")
  flags.DEFINE_integer("s3rec_pretrain_epochs", 10,
                       "S3Rec's pre-training epochs before fine-tuning (RecBole's default 500).")
  flags.DEFINE_integer("text_code_subspaces", 8,
                       "Item attributes of FDSA and S3Rec: the text vectors cut into this many "
                       "slices, each k-means coded (0: no attributes).")
  flags.DEFINE_integer("text_code_size", 32, "Clusters per text slice.")
  flags.DEFINE_integer("text_code_seed", 0,
                       "Seed of the text codes' k-means: a property of the export, not of a "
                       "run, so every --seed trains on the same attributes and export.")


class PeerError(cli.CommandError):
  """A RecBole run that failed or cannot be started."""


def _threads(requested: int) -> int:
  if requested > 0:
    return requested
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # (not on Linux)
    return os.cpu_count() or 1


def check_request(config: alter_config.TrainConfig, values: flags.FlagValues,
                  manifest: dict) -> Dict:
  """Checks the flags before TensorFlow; returns the parsed --peers_config."""
  unknown = [m for m in values.models if m not in jobs.MODELS]
  if unknown or not values.models:
    raise cli.CommandError(f"--models: {', '.join(unknown) or '(empty)'}; choose from "
                           f"{', '.join(jobs.MODELS)}")
  python = os.path.join(values.peers_venv, "bin", "python")
  if not os.access(python, os.X_OK):
    raise cli.CommandError(f"--peers_venv={values.peers_venv} has no bin/python: create it with "
                           "`make peers` (RecBole 1.2.1 in its own virtual environment)")
  if not os.path.isfile(RECBOLE_SCRIPT):
    raise cli.CommandError(f"{RECBOLE_SCRIPT} is missing: run the command from a checkout "
                           "of the repository")
  try:
    extra = json.loads(values.peers_config) if values.peers_config else {}
  except ValueError as error:
    raise cli.CommandError(f"--peers_config is not JSON ({error})") from None
  if not isinstance(extra, dict):
    raise cli.CommandError("--peers_config must be a JSON object of RecBole config entries")
  attributes = [m for m in values.models if m in jobs.NEEDS_TEXT_CODES]
  if attributes and not (manifest.get("text_dim") and values.text_code_subspaces > 0):
    raise cli.CommandError(
        f"{', '.join(attributes)} need item attributes, made from the item text vectors: "
        + ("this dataset has no text table" if not manifest.get("text_dim")
           else "--text_code_subspaces=0 turns them off") + f"; drop {', '.join(attributes)} "
        "from --models or prepare the dataset with --text_fields")
  return extra


def _train_batch_size(config: alter_config.TrainConfig, values: flags.FlagValues,
                      manifest: dict, train_rows: int) -> int:
  if values.peers_batch_size > 0:
    return values.peers_batch_size
  from alterrec_tf.data import windows
  files = schema.split_files(config.data_dir, manifest, "train")
  count = windows.count(windows.windows_dataset(files, config.max_len, config.train_window_stride))
  return jobs.prefixes_per_step(config.batch_size, train_rows, count)


def _stored_job_id(work_dir: str) -> Optional[str]:
  path = os.path.join(work_dir, "job.json")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    try:
      return jobs.job_id(json.load(f))
    except (ValueError, KeyError):
      return None


def run_recbole(python: str, job: dict, work_dir: str, threads: int) -> float:
  """Runs peers/recbole_run.py on `job` in the peers venv; returns its wall seconds.

  Raises:
    PeerError: the process failed (its log named).
  """
  os.makedirs(work_dir, exist_ok=True)
  alter_runs.write_json_atomic(os.path.join(work_dir, "job.json"), job)
  env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
  env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
  start = time.perf_counter()
  completed = subprocess.run([os.path.abspath(python), RECBOLE_SCRIPT,
                              os.path.join(work_dir, "job.json")],
                             cwd=work_dir, env=env, check=False)
  if completed.returncode != 0:
    raise PeerError(f"RecBole's {job['model']} failed (exit {completed.returncode}); its log: "
                    f"{os.path.join(work_dir, 'recbole.log')}")
  return time.perf_counter() - start


def main(argv: List[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  values = flags.FLAGS
  config = alter_config.TrainConfig.from_flags()
  if not config.data_dir:
    raise cli.CommandError("--data_dir is empty: name a folder of data_tools.prepare "
                           "(or pass a dataset's --flagfile)")
  manifest = schema.load_manifest(config.data_dir,
                                  verify_hashes=bool(cli.flag_value("verify_data", True)))
  extra = check_request(config, values, manifest)
  name = manifest.get("dataset_name") or os.path.basename(os.path.normpath(config.data_dir))
  peers_dir = values.peers_dir or os.path.join("runs", "peers", name)
  cli.check_writable(peers_dir, "--peers_dir")
  cli.load_tensorflow(cli.flag_value("tensorflow_log", False))
  from alterrec_tf.recbole import atomic, lists
  start = time.perf_counter()
  atomic_dir = os.path.join(peers_dir, "atomic", name)
  export = atomic.export(config.data_dir, atomic_dir, config.max_len,
                         values.text_code_subspaces, values.text_code_size,
                         values.text_code_seed)
  rows = export["rows"]
  print(f"export {atomic_dir}: {rows['train']} / {rows['valid']} / {rows['test']} train / "
        f"valid / test prefixes, {export['num_items'] - 1} items, max_len {export['max_len']} "
        f"({time.perf_counter() - start:.0f} s)", flush=True)
  targets = atomic.read_targets(atomic_dir)
  test_order = atomic.evaluation_order(config.data_dir, config.max_len, config.eval_batch_size)
  batch_size = _train_batch_size(config, values, manifest, rows["train"])
  threads = _threads(values.peers_threads)
  data = alter_runs.dataset_identity(config.data_dir, manifest)
  python = os.path.join(values.peers_venv, "bin", "python")
  finished: List[str] = []
  failures: List[str] = []
  for model in values.models:
    job = {"model": model, "dataset": name, "data_path": os.path.abspath(os.path.dirname(
        atomic_dir)), "max_len": export["max_len"], "num_items": export["num_items"],
        "targets": os.path.abspath(os.path.join(atomic_dir, atomic.TARGETS_FILE)),
        "text_codes": model in jobs.NEEDS_TEXT_CODES, "export_id": export["export_id"],
        "top_k": config.max_k, "threads": threads,
        "config": jobs.model_config(model, config, batch_size, values.peers_eval_batch_size,
                                    values.s3rec_pretrain_epochs, extra)}
    work_dir = os.path.abspath(os.path.join(peers_dir, "work", lists.run_name(model)))
    job["output_dir"] = work_dir
    run_dir = alter_runs.run_dir_of(os.path.join(peers_dir, "runs"), lists.run_name(model),
                                    config.seed)
    identity = jobs.job_id(job)
    conflicts = lists.finished_run_conflicts(run_dir, job, export, config.data_dir, manifest)
    if conflicts is not None and (conflicts or config.overwrite):
      if not config.overwrite:
        failures.append(f"{run_dir} holds a {model} run with other settings or data: "
                        f"{'; '.join(conflicts)}; --overwrite trains it again")
        continue
      shutil.rmtree(run_dir)
      conflicts = None
    if conflicts is not None:
      print(f"{model}: finished already ({run_dir})", flush=True)
      finished.append(run_dir)
      continue
    result_dir = os.path.join(work_dir, lists.RESULT_DIR)
    process_seconds = None
    if config.overwrite or _stored_job_id(work_dir) != identity or not os.path.isdir(result_dir):
      print(f"{model}: training RecBole's model ({batch_size} prefixes per step, up to "
            f"{config.m_max} epochs, {threads} threads)", flush=True)
      shutil.rmtree(result_dir, ignore_errors=True)
      if config.overwrite:  # from the start: no checkpoint of this job is resumed
        for name in (RESUME_FILE, S3REC_PRETRAINED):
          if os.path.isfile(os.path.join(work_dir, name)):
            os.remove(os.path.join(work_dir, name))
      try:
        process_seconds = run_recbole(python, job, work_dir, threads)
      except PeerError as error:
        print(f"{model}: {error}", file=sys.stderr, flush=True)
        failures.append(str(error))
        continue
    try:
      results = lists.write_run(result_dir, export, targets, job, run_dir, config.ks,
                                config.mrr_k, process_seconds, test_order, data)
    except lists.ListsError as error:
      failures.append(f"RecBole's {model} lists do not fit the export ({error}): "
                      f"{result_dir}")
      continue
    test = results["test"]["fused"]
    print(f"{model}: test Hits@10 {100 * test['hits@10']:.2f}, Hits@20 "
          f"{100 * test['hits@20']:.2f}, NDCG@10 {100 * test['ndcg@10']:.2f}, NDCG@20 "
          f"{100 * test['ndcg@20']:.2f} (best epoch {results['best_epoch']} of "
          f"{results['epochs_run']}, {results['wall_seconds_this_process']:.0f} s) -> {run_dir}",
          flush=True)
    finished.append(run_dir)
  print(f"{len(finished)} of {len(values.models)} models finished; report: python -m "
        f"alterrec_tf.report --runs_dir={os.path.join(peers_dir, 'runs')} --report_dir=<dir>")
  if failures:
    raise PeerError(f"{len(failures)} failed: " + "; ".join(failures))


def run() -> None:
  define_flags()
  cli.run(main, flagfiles.PREPARE_FLAG_NAMES, known=(PeerError,),
          io_hint="finished models are skipped when the same command runs again")


if __name__ == "__main__":
  run()
