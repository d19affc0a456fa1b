"""The one error path of every command (train, export, recommend, alpha_sweep).

  def main(argv): ...
  cli.run(main, foreign_flags=flagfiles.PREPARE_FLAG_NAMES, known=(ExportError,))

A known failure (bad flags, bad or damaged data, a run that cannot be done as
asked, a folder that cannot be written, a full disk) prints one line

  error: <what and where>; <how to fix it>

on stderr and exits with status 1. Anything else is a bug: one line names the
exception and the file holding its stack (status 1 as well). `--traceback`
shows the Python stack of either instead, for bug reports.

Commands check their flags and data before loading TensorFlow where they can,
so a refused command answers in about a second, not after TensorFlow's start-up.
This module imports neither TensorFlow nor Keras.
"""

import errno
import os
import sys
import tempfile
import traceback
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Type

from absl import app, flags

from alterrec_tf import flagfiles

ERROR_EXIT_CODE = 1


class CommandError(ValueError):
  """A command line that cannot be run as given (a missing or bad flag)."""


def define_flags(verify_data: bool = True) -> None:
  """Defines --traceback, --tensorflow_log and (for commands that read a
  dataset) --verify_data, once per process (their names: `flagfiles.FLAG_NAMES`)."""
  if "traceback" not in flags.FLAGS:
    flags.DEFINE_boolean("traceback", False,
                         "On an error, show the Python stack instead of one line "
                         "(for bug reports).")
  if "tensorflow_log" not in flags.FLAGS:
    flags.DEFINE_boolean("tensorflow_log", False,
                         "Show TensorFlow's own log lines (its C++ start-up and info lines: "
                         "CUDA probing, oneDNN notices). Hidden by default "
                         "(TF_CPP_MIN_LOG_LEVEL=3), unless that variable is set.")
  if verify_data and "verify_data" not in flags.FLAGS:
    flags.DEFINE_boolean("verify_data", True,
                         "Check the SHA-256 of every shard and table of the dataset against "
                         "its manifest before the first step (Online Retail, 8.5 MB: about "
                         "0.04 s). --noverify_data skips it, for datasets too large to hash "
                         "at every start.")


def flag_value(name: str, default: Any = None) -> Any:
  """A flag of this module, or `default` where the command did not define it."""
  if name in flags.FLAGS and flags.FLAGS.is_parsed():
    return flags.FLAGS[name].value
  return default


# --- describing errors ----------------------------------------------------------------
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "File too large")
_NOT_WRITABLE_WORDS = ("Permission denied", "Read-only file system",
                       "Operation not permitted")
# TensorFlow's file-system errors carry no errno: its NotFoundError, and the
# FileNotFoundError of a SavedModel without its variables, say so in words.
_NOT_FOUND_WORDS = ("No such file or directory", "Failed to find any matching files")
DISK_FULL_HINT = ("the disk is full (or a file-size limit was reached): free space or choose "
                  "another folder, then run the same command again")
NOT_WRITABLE_HINT = ("no permission to write there (a read-only folder or file system): "
                     "choose another folder or fix its permissions")


def _first_line(text: str) -> str:
  for line in str(text).splitlines():
    if line.strip():
      return line.strip()
  return ""


def io_problem(error: BaseException) -> Optional[str]:
  """One line for a failed read or write (disk full, no permission, no such
  file), from an OSError, an h5py error or a TensorFlow I/O error; None for
  any other error."""
  code = getattr(error, "errno", None) if isinstance(error, OSError) else None
  message = str(getattr(error, "message", "") or error)
  if code in _DISK_FULL or any(w in message for w in _DISK_FULL_WORDS):
    hint = DISK_FULL_HINT
  elif code in _NOT_WRITABLE or any(w in message for w in _NOT_WRITABLE_WORDS):
    hint = NOT_WRITABLE_HINT
  elif (code in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR)
        or isinstance(error, FileNotFoundError) or _tensorflow_not_found(error)
        or (_io_like(error) and any(w in message for w in _NOT_FOUND_WORDS))):
    hint = "check the path"
  else:
    return None
  if isinstance(error, OSError) and error.filename and error.strerror:
    where = str(error.filename) + (f" -> {error.filename2}" if error.filename2 else "")
    return f"{where}: {error.strerror}; {hint}"
  return f"{_first_line(message)}; {hint}"


def _tensorflow_not_found(error: BaseException) -> bool:
  """Whether `error` is TensorFlow's NotFoundError (TensorFlow is not imported here)."""
  errors = getattr(sys.modules.get("tensorflow"), "errors", None)
  return errors is not None and isinstance(error, errors.NotFoundError)


def _io_like(error: BaseException) -> bool:
  """An OSError or any TensorFlow OpError (whose words may tell a missing file)."""
  errors = getattr(sys.modules.get("tensorflow"), "errors", None)
  return isinstance(error, OSError) or (errors is not None and isinstance(error, errors.OpError))


def _tensorflow_error(error: BaseException) -> Optional[str]:
  """One line for TensorFlow's errors that are not bugs: I/O and out of memory."""
  tf = sys.modules.get("tensorflow")
  if tf is None or not isinstance(error, tf.errors.OpError):
    return None
  problem = io_problem(error)
  if problem:
    return problem
  if isinstance(error, tf.errors.ResourceExhaustedError) and "OOM" in str(error.message):
    return ("out of memory: " + _first_line(error.message)[:200]
            + "; lower --batch_size / --eval_batch_size or --embedding_dim")
  return None


def describe(error: BaseException, known: Sequence[Type[BaseException]] = ()) -> Optional[str]:
  """The one-line message of a known failure, else None (a bug).

  Known: this package's own error classes (ConfigError, DataError,
  CommandError and those in `known`), failed reads and writes, memory.
  """
  # The package's error classes of the modules this command loaded: importing
  # alterrec_tf.config here would define the training flags in a command (e.g.
  # data_tools.embed_items) that defines some of the same names itself.
  own: Tuple[Type[BaseException], ...] = (CommandError, app.UsageError, *known)
  for module, name in (("alterrec_tf.config", "ConfigError"),
                       ("alterrec_tf.formats.schema", "DataError")):
    error_class = getattr(sys.modules.get(module), name, None)
    if error_class is not None:
      own += (error_class,)
  if isinstance(error, own):
    return str(error)
  if isinstance(error, MemoryError):
    return "out of memory; lower --batch_size / --eval_batch_size or --embedding_dim"
  return io_problem(error) or _tensorflow_error(error)


def _save_stack(error: BaseException) -> str:
  """Writes the stack of `error` to a temporary file; returns its path."""
  fd, path = tempfile.mkstemp(prefix="alterrec_tf-error-", suffix=".txt")
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    f.write(" ".join(sys.argv) + "\n\n")
    traceback.print_exception(type(error), error, error.__traceback__, file=f)
  return path


def report(error: BaseException, known: Sequence[Type[BaseException]] = (),
           io_hint: str = "") -> int:
  """Prints the one line of `error` on stderr; returns the exit status."""
  line = describe(error, known)
  if line is None:
    try:
      where = f"the stack is in {_save_stack(error)}"
    except OSError:
      where = "rerun with --traceback for the stack"
    detail = _first_line(str(error))[:300]
    line = (f"internal error {type(error).__name__}" + (f": {detail}" if detail else "")
            + f" (a bug; {where}; please report it)")
  elif io_hint and io_problem(error):
    line += f"; {io_hint}"
  print(f"error: {line}", file=sys.stderr, flush=True)
  return ERROR_EXIT_CODE


def quiet_tensorflow(show_log: bool) -> None:
  """Hides TensorFlow's C++ log lines (start-up chatter such as "failed call to
  cuInit" on a machine without a GPU, oneDNN notices, per-op info) by setting
  TF_CPP_MIN_LOG_LEVEL=3 for this process and its children, unless `show_log`
  (--tensorflow_log) or the user set the variable. Call before TensorFlow loads."""
  if not show_log:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def load_tensorflow(show_log: bool = False) -> None:
  """Imports TensorFlow now, without the lines its libraries write to stderr
  while they load ("All log messages before absl::InitializeLog() ...", "Could
  not find cuda drivers ..."), which no log level reaches: stderr (file
  descriptor 2) goes to a scratch file during the import and is shown only if
  the import fails. Commands call it after their checks, where TensorFlow is
  needed anyway. TensorFlow's Python warnings (e.g. retracing notices) are
  hidden as well. With `show_log` (--tensorflow_log), or TF_CPP_MIN_LOG_LEVEL
  set below 3 by the user, everything is shown."""
  quiet_tensorflow(show_log)
  if (show_log or "tensorflow" in sys.modules
      or os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "3"):
    import tensorflow  # noqa: F401  (the import is the point)
    return
  _import_without_stderr()
  import tensorflow as tf
  tf.get_logger().setLevel("ERROR")  # its Python warnings (retracing notices) too


def _import_without_stderr() -> None:
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow  # noqa: F401,F811
    except BaseException:
      os.dup2(saved, 2)
      captured.seek(0)
      sys.stderr.write(captured.read().decode("utf-8", "replace"))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def guard(main: Callable, known: Sequence[Type[BaseException]] = (),
          io_hint: str = "") -> Callable:
  """`main` with every exception turned into `report`'s one line and exit 1
  (the stack itself with --traceback). SystemExit and Ctrl-C pass through.
  TensorFlow's log lines are hidden first (`quiet_tensorflow`)."""

  def guarded(argv: List[str]) -> Any:
    quiet_tensorflow(flag_value("tensorflow_log", False))
    try:
      return main(argv)
    except (SystemExit, KeyboardInterrupt):
      raise
    except Exception as error:
      if flag_value("traceback", False):
        raise
      sys.exit(report(error, known, io_hint))

  return guarded


def run(main: Callable, foreign_flags: Iterable[str] = (),
        known: Sequence[Type[BaseException]] = (), io_hint: str = "",
        verify_data: bool = True) -> None:
  """`absl.app.run(main)` with the flagfile parser and the one error path.

  Args:
    main: the command's main(argv).
    foreign_flags: flags of the other command sharing a flagfile (skipped).
    known: the command's own error classes, shown as one line.
    io_hint: added to a disk-full or permission error (e.g. how to resume).
    verify_data: define --verify_data (commands that read a dataset).
  """
  define_flags(verify_data)
  app.run(guard(main, known, io_hint), flags_parser=flagfiles.make_parser(foreign_flags))


# --- checks shared by the commands ----------------------------------------------------
def check_writable(folder: str, flag: str) -> None:
  """Creates `folder` if needed and checks that a file can be written in it.

  Raises:
    CommandError: naming the flag and the folder.
  """
  try:
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
      pass
  except OSError as error:
    reason = error.strerror or str(error)
    raise CommandError(f"{flag}={folder} cannot be written ({reason}): choose another "
                       "folder or fix its permissions") from None
