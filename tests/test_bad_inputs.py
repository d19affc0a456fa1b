"""Every bad input is refused with one named line, every dataset verified (issue 13).

The training, export and serving side: each case runs the command line in its
own process (`python -m alterrec_tf.<command>`) and checks the exit status, the
one `error:` line's key words and what is left on disk. Refusals happen before
TensorFlow is loaded (about a second each); only the corrected run after a
crash and the export on a full disk load it.
"""

import concurrent.futures
import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

from alterrec_tf import cli
from alterrec_tf import runs as alter_runs
from alterrec_tf.config import TrainConfig
from alterrec_tf.formats import schema
from tests import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
TRAIN_SHARD = schema.shard_name("train", 0, 1)
TINY = ["--m_max=1", "--m_random=1", "--embedding_dim=8", "--max_len=8", "--k1=2", "--k2=10",
        "--batch_size=64", "--eval_batch_size=256", "--num_layers=1", "--verbose=0"]


def command(module, *args, timeout=120, prelude=""):
  """Runs `python -m alterrec_tf.<module> args` from the repository root.

  With `prelude`, a Python statement runs first in the same process (a file
  size limit, dropped capabilities), which then executes the command.
  """
  argv = ["-m", f"alterrec_tf.{module}", *map(str, args)]
  if prelude:
    argv = ["-c", f"{prelude}; import os, sys; os.execv(sys.executable, [sys.executable] + "
            "sys.argv[1:])", *argv]
  return subprocess.run([sys.executable, *argv], cwd=REPO, env=ENV, capture_output=True,
                        text=True, timeout=timeout, check=False)


def error_line(out, *words):
  """The one `error:` line of a refused command, holding every word."""
  assert out.returncode == 1, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, out.stderr[-3000:]
  for word in words:
    assert word in lines[0], (word, lines[0])
  return lines[0]


def write_manifest(data_dir, manifest):
  """Writes `manifest` with hashes of the files as they are now (a prepare that
  really wrote them so)."""
  names = schema.listed_files(manifest)
  manifest["file_hashes"] = {n: schema.file_sha256(os.path.join(data_dir, n)) for n in names}
  manifest["content_hash"] = schema.content_hash(manifest["file_hashes"])
  with open(os.path.join(data_dir, schema.MANIFEST_FILE), "w", encoding="utf-8") as f:
    json.dump(manifest, f)


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture(scope="module")
def data(shared_dir):
  """A tiny prepared dataset (never changed: tests change copies)."""
  folder = os.path.join(shared_dir, "data")
  synthetic.write_dataset(folder, num_items=40, num_sessions=40, text_dim=8,
                          max_session_length=10)
  return folder


@pytest.fixture
def copy(data, tmp_path):
  """A fresh copy of the dataset to damage."""
  folder = str(tmp_path / "data")
  shutil.copytree(data, folder)
  return folder


def config_run(shared_dir, data, name, **changes):
  """A run folder holding only config.json (what check_run reads first)."""
  run_dir = os.path.join(shared_dir, name)
  alter_runs.write_config(run_dir, TrainConfig(data_dir=data, run_dir=run_dir).replace(
      embedding_dim=8, max_len=8, k1=2, k2=10, **changes))
  return run_dir


# Under root, drop the capabilities that let root write into a read-only folder
# (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH; they leave at the next exec), so that
# the folder's mode bits apply as for any user.
AS_A_USER = ("import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
             "assert os.geteuid() != 0 or (libc.prctl(24, 1, 0, 0, 0) == 0 "
             "and libc.prctl(24, 2, 0, 0, 0) == 0), 'cannot drop CAP_DAC_OVERRIDE'")
# Writes beyond 32 KiB fail (EFBIG) as on a full disk; the SavedModel's
# saved_model.pb of the tiny run is about 77 KiB, its other files smaller.
FULL_DISK = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (32768, 32768))"


# --- the dataset is verified before the first step -------------------------------------
def swap(path, other):
  shutil.copyfile(os.path.join(other, TRAIN_SHARD), path)


def truncate(path, _):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def flip_byte(path, _):
  with open(path, "r+b") as f:
    f.seek(100)
    byte = f.read(1)
    f.seek(100)
    f.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize("damage", [swap, truncate, flip_byte], ids=lambda d: d.__name__)
def test_a_changed_shard_is_refused_before_training_with_its_name(copy, tmp_path, damage):
  other = str(tmp_path / "other")  # other valid records: another synthetic dataset
  synthetic.write_dataset(other, num_items=40, num_sessions=40, text_dim=8,
                          max_session_length=10, seed=7)
  damage(os.path.join(copy, TRAIN_SHARD), other)
  run_dir = tmp_path / "run"
  out = command("train", f"--data_dir={copy}", f"--run_dir={run_dir}", *TINY)
  error_line(out, os.path.join(copy, TRAIN_SHARD), "SHA-256", "nothing was trained")
  assert not run_dir.exists()


def test_export_and_alpha_sweep_verify_the_dataset_too(copy, shared_dir, tmp_path):
  run_dir = config_run(shared_dir, copy, "run_on_changed_data")
  truncate(os.path.join(copy, TRAIN_SHARD), None)
  out = command("export", f"--run_dir={run_dir}", f"--export_dir={tmp_path / 'models'}")
  error_line(out, TRAIN_SHARD, "SHA-256")
  assert not (tmp_path / "models").exists()
  out = command("alpha_sweep", f"--run_dir={run_dir}")
  error_line(out, TRAIN_SHARD, "SHA-256")
  assert sorted(os.listdir(run_dir)) == [alter_runs.CONFIG_FILE]


def test_verification_costs_one_read_per_process_and_sees_a_later_change(copy):
  manifest = schema.load_manifest(copy, verify_hashes=True)
  schema.verify_dataset(copy, manifest)  # memoised: no second read
  flip_byte(os.path.join(copy, TRAIN_SHARD), None)
  with pytest.raises(schema.DataError, match=TRAIN_SHARD):
    schema.verify_dataset(copy, manifest)


def test_noverify_data_names_the_damaged_shard_when_reading_fails(copy, tmp_path):
  # what the command line does with a read error of train() (--noverify_data)
  import tensorflow as tf

  from alterrec_tf import train as alter_train
  from alterrec_tf.training import trainer
  flip_byte(os.path.join(copy, TRAIN_SHARD), None)
  config = TrainConfig(data_dir=copy, run_dir=str(tmp_path / "run"), embedding_dim=8,
                       max_len=8, k1=2, k2=10, m_max=1, verbose=0)
  with pytest.raises(tf.errors.DataLossError) as raised:
    trainer.train(config, verify_data=False)
  error = alter_train.damaged_data(raised.value, copy)
  assert isinstance(error, schema.DataError)
  assert f"{os.path.join(copy, TRAIN_SHARD)} record 1: corrupted record" in str(error)
  assert "\n" not in str(error)


# --- what the model needs of the data ------------------------------------------------------
def test_a_text_model_on_an_all_zero_text_table_is_refused(copy, tmp_path):
  # what prepare --norequire_text writes when no item's text matched
  manifest = schema.load_manifest(copy)
  np.save(os.path.join(copy, schema.TEXT_EMBEDDINGS_FILE), np.zeros([40, 8], np.float32))
  write_manifest(copy, manifest)
  out = command("train", f"--data_dir={copy}", f"--run_dir={tmp_path / 'run'}", *TINY,
                "--model=alterrec")
  error_line(out, "--model=alterrec", "needs item text", "zero", "--norequire_text")
  assert not (tmp_path / "run").exists()


def test_a_text_model_on_data_without_text_is_refused(tmp_path):
  synthetic.write_dataset(str(tmp_path / "data"), num_items=40, num_sessions=20, text_dim=0)
  out = command("train", f"--data_dir={tmp_path / 'data'}", f"--run_dir={tmp_path / 'run'}",
                *TINY, "--model=text_only")
  error_line(out, "--model=text_only", "needs item text", "--text_fields")
  assert not (tmp_path / "run").exists()


def test_data_without_a_validation_split_is_refused(copy, tmp_path):
  # prepared with --valid_fraction=0: train claimed a best epoch and wrote no weights
  manifest = schema.load_manifest(copy)
  os.remove(os.path.join(copy, manifest["files"]["valid"][0]))
  manifest["files"]["valid"] = []
  write_manifest(copy, manifest)
  out = command("train", f"--data_dir={copy}", f"--run_dir={tmp_path / 'run'}", *TINY)
  error_line(out, "no validation split", "--valid_fraction")
  assert not (tmp_path / "run").exists()


# --- flags ---------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--batch_size=0", "--embedding_dim=0", "--m_max=0"])
def test_training_flags_out_of_range_are_refused_by_name(data, tmp_path, flag):
  out = command("train", f"--data_dir={data}", f"--run_dir={tmp_path / 'run'}", *TINY, flag)
  error_line(out, flag, "at least 1")
  assert not (tmp_path / "run").exists()


def test_a_missing_flagfile_is_one_line(data, tmp_path):
  missing = tmp_path / "nope.flags"
  out = command("train", f"--flagfile={missing}", f"--data_dir={data}")
  error_line(out, str(missing), "flagfile")
  out = command("export", f"--flagfile={missing}")
  error_line(out, str(missing), "flagfile")


@pytest.mark.parametrize("k, words", [(0, ("--k=0", "at least 1")),
                                      (40, ("--k=40", "[1, 39]"))])
def test_export_k_outside_the_catalogue_is_refused(data, shared_dir, tmp_path, k, words):
  run_dir = config_run(shared_dir, data, f"run_k{k}")
  out = command("export", f"--run_dir={run_dir}", f"--export_dir={tmp_path / 'models'}",
                f"--k={k}")
  error_line(out, *words)
  assert not (tmp_path / "models").exists()


def test_export_negative_serving_chunk_size_is_refused(tmp_path):
  # refused before the run is read
  out = command("export", f"--run_dir={tmp_path / 'no_run'}",
                f"--export_dir={tmp_path / 'models'}", "--serving_chunk_size=-1")
  error_line(out, "--serving_chunk_size=-1", ">= 0")
  assert not (tmp_path / "models").exists()


def test_recommend_k_below_one_is_refused(tmp_path):
  out = command("recommend", f"--export_dir={tmp_path}", "--items=SKU00001", "--k=-3")
  error_line(out, "--k=-3", "at least 1")


def test_traceback_shows_the_stack_for_bug_reports(data, tmp_path):
  out = command("train", f"--data_dir={data}", f"--run_dir={tmp_path / 'run'}", *TINY,
                "--batch_size=0", "--traceback")
  assert out.returncode != 0 and "Traceback" in out.stderr
  assert "ConfigError: --batch_size=0" in out.stderr


def test_an_unexpected_error_is_one_line_with_its_stack_saved(capsys):
  def buggy_main(argv):
    del argv
    return {}["missing"]

  with pytest.raises(SystemExit) as exited:
    cli.guard(buggy_main)(["command"])
  assert exited.value.code == 1
  line = capsys.readouterr().err.strip()
  assert line.startswith("error: internal error KeyError") and "\n" not in line
  stack_file = line.split("the stack is in ")[1].split(";")[0]
  with open(stack_file, encoding="utf-8") as f:
    assert "buggy_main" in f.read()
  os.remove(stack_file)


# --- folders that cannot be written ----------------------------------------------------------
def read_only_folder(shared_dir, name):
  folder = os.path.join(shared_dir, name)
  os.makedirs(folder)
  os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH
           | stat.S_IXOTH)
  return folder


def test_a_read_only_run_dir_is_refused_before_training(data, shared_dir):
  parent = read_only_folder(shared_dir, "read_only_runs")
  out = command("train", f"--data_dir={data}", f"--run_dir={parent}/run", *TINY,
                prelude=AS_A_USER)
  error_line(out, f"--run_dir={parent}/run", "cannot be written")
  assert os.listdir(parent) == []


def test_a_read_only_export_dir_is_refused(data, shared_dir):
  run_dir = config_run(shared_dir, data, "run_for_read_only_export")
  export_dir = read_only_folder(shared_dir, "read_only_models")
  out = command("export", f"--run_dir={run_dir}", f"--export_dir={export_dir}", "--k=5",
                prelude=AS_A_USER)
  error_line(out, f"--export_dir={export_dir}", "cannot be written")
  assert os.listdir(export_dir) == []


# --- damaged run files and exports (issue 34) -------------------------------------------------
def cut(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("name", [alter_runs.CONFIG_FILE, alter_runs.RESULTS_FILE])
def test_a_cut_run_file_is_named_by_train_and_export(data, shared_dir, tmp_path, name):
  run_dir = config_run(shared_dir, data, f"cut_{name}")
  alter_runs.write_json_atomic(os.path.join(run_dir, alter_runs.RESULTS_FILE), {"test": {}})
  with open(os.path.join(run_dir, alter_runs.BEST_WEIGHTS_FILE), "wb") as f:
    f.write(b"weights")  # (never read: the cut file is found first)
  cut(os.path.join(run_dir, name))
  before = {n: open(os.path.join(run_dir, n), "rb").read() for n in os.listdir(run_dir)}
  out = command("train", f"--data_dir={data}", f"--run_dir={run_dir}", *TINY)
  line = error_line(out, f"{os.path.join(run_dir, name)} is damaged", "--overwrite")
  assert "internal error" not in line
  out = command("export", f"--run_dir={run_dir}", f"--export_dir={tmp_path / 'models'}",
                "--k=5")
  error_line(out, f"{os.path.join(run_dir, name)} is damaged", "train that run again")
  assert not (tmp_path / "models").exists()  # no empty --export_dir left behind
  assert {n: open(os.path.join(run_dir, n), "rb").read() for n in os.listdir(run_dir)} == before


def test_an_export_refused_after_creating_export_dir_leaves_none(data, shared_dir, tmp_path):
  run_dir = config_run(shared_dir, data, "run_without_weights")  # refused after the write check
  out = command("export", f"--run_dir={run_dir}", f"--export_dir={tmp_path / 'a' / 'models'}",
                "--k=5")
  error_line(out, "best.weights.h5 is missing")
  assert not (tmp_path / "a" / "models").exists()


def test_run_files_are_written_through_a_rename(tmp_path, monkeypatch):
  # a write that fails half-way (a full disk) leaves the old file whole and no temporary
  run_dir = str(tmp_path / "run")
  config = TrainConfig(data_dir="data", run_dir=run_dir)
  alter_runs.write_config(run_dir, config)
  path = os.path.join(run_dir, alter_runs.CONFIG_FILE)
  before = open(path, encoding="utf-8").read()

  def fail(fd):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "fsync", fail)
  with pytest.raises(OSError):
    alter_runs.write_config(run_dir, config.replace(seed=5))
  assert open(path, encoding="utf-8").read() == before
  assert os.listdir(run_dir) == [alter_runs.CONFIG_FILE]


@pytest.fixture(scope="module")
def tiny_saved_model(shared_dir):
  """A SavedModel folder as recommend finds one (a version with its vocabulary)."""
  import tensorflow as tf
  module = tf.Module()
  module.v = tf.Variable([1.0, 2.0])
  module.f = tf.function(lambda x: x * module.v, input_signature=[tf.TensorSpec([2])])
  folder = os.path.join(shared_dir, "tiny_saved_model", "1")
  tf.saved_model.save(module, folder)
  os.makedirs(os.path.join(folder, "assets"), exist_ok=True)
  with open(os.path.join(folder, "assets", "serving_vocab.tsv"), "w", encoding="utf-8") as f:
    f.write("0\t[PAD]\t\n1\tSKU1\tmug\n")
  return folder


@pytest.mark.parametrize("damage", ["cut_saved_model", "no_variables"])
def test_recommend_on_a_damaged_export_names_it_and_says_export_again(
    tiny_saved_model, tmp_path, damage):
  export_dir = str(tmp_path / "models")
  shutil.copytree(tiny_saved_model, os.path.join(export_dir, "1"))
  if damage == "cut_saved_model":
    named = os.path.join(export_dir, "1", "saved_model.pb")
    cut(named)
  else:
    named = os.path.join(export_dir, "1", "variables")
    shutil.rmtree(named)
  out = command("recommend", f"--export_dir={export_dir}", "--items=SKU1")
  line = error_line(out, named, "export the run again", "python -m alterrec_tf.export")
  assert "a bug" not in line and "internal error" not in line


def test_tensorflow_not_found_errors_are_io_errors():
  import tensorflow as tf
  error = tf.errors.NotFoundError(None, None, "/x/variables.index; No such file or directory")
  assert cli.describe(error) == ("/x/variables.index; No such file or directory; "
                                 "check the path")
  assert cli.describe(FileNotFoundError("Unsuccessful TensorSliceReader constructor: "
                                        "Failed to find any matching files for /x/v"))
  assert cli.describe(ValueError("No such file or directory")) is None  # not an I/O error


# --- a crash before the first epoch; the run it leaves; a full disk ---------------------------
@pytest.fixture(scope="module", autouse=True)
def background(data, shared_dir):
  """The two cases whose command loads TensorFlow, started before the other
  tests and run one after the other in the background while those run:

  1. A run that crashed before its first epoch (here: out of memory reading
     the data, with a too large --embedding_dim) leaves config.json; its
     corrected command (other flags) used to be refused as "a run trained
     with other settings".
  2. The export of the run it trained, on a full disk.
  """
  from alterrec_tf.data import windows
  from alterrec_tf.training import trainer
  run_dir = os.path.join(shared_dir, "crashed")
  config = TrainConfig(data_dir=data, run_dir=run_dir, model="id_only", embedding_dim=4096,
                       max_len=8, k1=2, k2=10, m_max=1, verbose=0)
  original = windows.load_split

  def out_of_memory(*args, **kwargs):
    raise MemoryError()

  windows.load_split = out_of_memory
  try:
    with pytest.raises(MemoryError):
      trainer.train(config)
  finally:
    windows.load_split = original
  assert os.listdir(run_dir) == [alter_runs.CONFIG_FILE]  # what the crash leaves
  export_dir = os.path.join(shared_dir, "full_disk_models")
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as chain:
    yield {
        "run_dir": run_dir, "export_dir": export_dir,
        "train": chain.submit(command, "train", f"--data_dir={data}", f"--run_dir={run_dir}",
                              *TINY, "--model=id_only", timeout=600),
        "export": chain.submit(command, "export", f"--run_dir={run_dir}",
                               f"--export_dir={export_dir}", "--k=5", prelude=FULL_DISK,
                               timeout=600),
    }


def test_the_corrected_command_after_a_crash_before_the_first_epoch_trains(background):
  out = background["train"].result()
  assert out.returncode == 0, out.stderr[-3000:]
  assert "never finished an epoch" in out.stdout
  run_dir = background["run_dir"]
  with open(os.path.join(run_dir, alter_runs.CONFIG_FILE), encoding="utf-8") as f:
    assert json.load(f)["embedding_dim"] == 8
  results = alter_runs.load_results(run_dir)
  assert results["best_epoch"] == 1 and results["test"]["id"]
  assert os.path.exists(os.path.join(run_dir, alter_runs.BEST_WEIGHTS_FILE))


def test_the_finished_run_is_shown_and_a_changed_flag_refused_by_name(background, data):
  background["train"].result()
  run_dir = background["run_dir"]
  shown = command("train", f"--data_dir={data}", f"--run_dir={run_dir}", *TINY,
                  "--model=id_only")
  assert shown.returncode == 0, shown.stderr[-3000:]
  assert "already holds this finished run" in shown.stdout and "| id |" in shown.stdout
  out = command("train", f"--data_dir={data}", f"--run_dir={run_dir}", *TINY,
                "--model=id_only", "--embedding_dim=16")
  error_line(out, "--embedding_dim=8 (now 16)", "--overwrite")


def test_a_full_disk_during_export_is_one_line_and_leaves_nothing(background):
  error_line(background["export"].result(), "nothing was exported", "File too large",
             "disk is full")
  assert not os.path.exists(background["export_dir"])  # no version, no temporary folder, and
  # not the --export_dir it created either


# --- serving: the padding token is not an item ------------------------------------------------
def test_recommend_counts_the_padding_token_as_an_unknown_id(tmp_path):
  from alterrec_tf import recommend
  assets = tmp_path / "assets"
  assets.mkdir()
  (assets / recommend.VOCAB_ASSET).write_text("0\t[PAD]\t\n1\tSKU1\tmug\n2\tSKU2\tlamp\n")
  titles = recommend.read_titles(str(tmp_path))
  assert schema.PADDING_TOKEN not in titles and titles["SKU1"] == "mug"
  request, padding = recommend.split_padding(["SKU1", schema.PADDING_TOKEN, "SKU2"])
  assert request == ["SKU1", "SKU2"] and padding == 1
  text = recommend.format_recommendations(["SKU1", schema.PADDING_TOKEN], [(1, "SKU2", 0.5)],
                                          padding, False, titles)
  assert "(unknown id: ignored)" in next(line for line in text.splitlines() if "[PAD]" in line)
  assert "1 unknown item id(s) ignored" in text


def test_serving_counts_a_raw_padding_token_as_unknown(tmp_path):
  import tensorflow as tf

  from alterrec_tf.serving import module as serving
  vocab = tmp_path / serving.VOCAB_ASSET
  vocab.write_text("0\t[PAD]\t\n1\tSKU1\tmug\n2\tSKU2\tlamp\n")
  part = serving.TowerPart("id", None, 2, 1.0, 3)
  module = serving.ServingModule(np.zeros([3, 2], np.float32), [part], np.zeros([3]),
                                 str(vocab), max_len=4, k=1, exclude_session_items=False)
  request = tf.constant([["SKU1", schema.PADDING_TOKEN, ""]])
  dense, ignored = module._from_raw(request)
  assert dense.numpy().tolist() == [[1, 0, 0]]
  assert ignored.numpy().tolist() == [1]
