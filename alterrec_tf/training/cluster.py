"""A multi-worker cluster from TF_CONFIG: which task this process is, and its
start-up (`--distribution=multi_worker`, `--cluster_timeout_s`).

Before TensorFlow starts, the command line checks that every address of
TF_CONFIG resolves and that this worker's port can be bound (`check_cluster`).
MultiWorkerMirroredStrategy's start-up then blocks in C++ holding the GIL (no
Python thread, no Python signal handler runs) and TensorFlow takes SIGTERM for
itself, so a worker first waits in Python until every other worker answers on
its port (`wait_for_workers`: each worker listens on its own port meanwhile;
SIGTERM and SIGINT end the wait with one line); the timeout ends it with one
line naming the workers not reached. A peer that answers but never joins the
collective start-up is ended by a watchdog process after --cluster_timeout_s
more (`watchdog`: one line, then SIGKILL). A run folder that the command
created and that is still empty is removed.

No TensorFlow here: the command line asks before it starts. The strategy itself
is made in `training.distribution`.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from types import FrameType
from typing import List, Mapping, NoReturn, Optional, Tuple

from alterrec_tf import config as alter_config

MULTI_WORKER = "multi_worker"
TF_CONFIG = "TF_CONFIG"
WORKER_TASK_TYPES = ("chief", "worker")

_CREATED_RUN_DIRS: List[str] = []  # run folders that did not exist before `check_cluster`
_POLL_S = 0.2  # between two rounds of knocking on the workers' ports

_TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["localhost:12345", '
                      '"localhost:12346"]}, "task": {"type": "worker", "index": 0}}\'')


def _bad_tf_config(problem: str) -> alter_config.ConfigError:
  return alter_config.ConfigError(
      f"--distribution=multi_worker reads the cluster from the {TF_CONFIG} environment "
      f"variable, and {problem}; set it in every worker's environment, e.g. "
      f"{_TF_CONFIG_EXAMPLE} (index 1 for the second worker)")


def tf_config_task(environ: Optional[Mapping[str, str]] = None) -> Tuple[str, int, dict]:
  """This worker's task type, task index and the cluster, from TF_CONFIG.

  Args:
    environ: the environment (default os.environ).

  Raises:
    ConfigError: TF_CONFIG is missing, not JSON, or names no worker task of
      its cluster.
  """
  environ = os.environ if environ is None else environ
  text = environ.get(TF_CONFIG, "")
  if not text.strip():
    raise _bad_tf_config("it is not set")
  try:
    tf_config = json.loads(text)
  except json.JSONDecodeError as error:
    raise _bad_tf_config(f"it is not JSON ({error})") from None
  cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
  task = tf_config.get("task") if isinstance(tf_config, dict) else None
  if not isinstance(cluster, dict) or not isinstance(task, dict):
    raise _bad_tf_config("it needs a \"cluster\" and a \"task\" object")
  for task_type, addresses in cluster.items():
    if (not isinstance(addresses, list) or not addresses
        or not all(isinstance(a, str) and ":" in a for a in addresses)):
      raise _bad_tf_config(f"cluster[{task_type!r}] must be a list of \"host:port\"")
  if not any(task_type in cluster for task_type in WORKER_TASK_TYPES):
    raise _bad_tf_config("its cluster has no \"worker\" (or \"chief\") task")
  task_type, index = task.get("type"), task.get("index")
  if task_type not in WORKER_TASK_TYPES or task_type not in cluster:
    raise _bad_tf_config(f"task type {task_type!r} is not a \"worker\" or \"chief\" of "
                         "its cluster")
  if not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
    raise _bad_tf_config(f"task index {index!r} is not in 0..{len(cluster[task_type]) - 1}")
  return task_type, index, cluster


def local_tf_configs(num_workers: int) -> List[str]:
  """TF_CONFIG values (JSON) of a cluster of `num_workers` workers on this
  host, one per worker in index order, on ports that were free a moment ago."""
  sockets = [socket.socket() for _ in range(num_workers)]
  try:
    for s in sockets:
      s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()
  cluster = {"worker": [f"localhost:{port}" for port in ports]}
  return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
          for index in range(num_workers)]


def is_chief(distribution: str, environ: Optional[Mapping[str, str]] = None) -> bool:
  """Whether this process writes the run folder: always, except on a
  multi-worker cluster's non-chief workers (the chief is the "chief" task, or
  worker 0 when the cluster has none, as MultiWorkerMirroredStrategy has it).
  No TensorFlow: the command line asks before it starts.

  Raises:
    ConfigError: multi_worker without a valid TF_CONFIG (`tf_config_task`).
  """
  if distribution != MULTI_WORKER:
    return True
  task_type, index, cluster = tf_config_task(environ)
  return task_type == "chief" or ("chief" not in cluster and index == 0)


class ClusterError(alter_config.ConfigError):
  """A multi-worker cluster that cannot start: an address, a port, a worker."""


def worker_addresses(cluster: dict) -> List[Tuple[str, int, str]]:
  """(task type, index, "host:port") of every worker task of the cluster."""
  return [(task_type, index, address) for task_type in WORKER_TASK_TYPES
          for index, address in enumerate(cluster.get(task_type, []))]


def task_name(task: Tuple[str, int, str]) -> str:
  return f"{task[0]} {task[1]} ({task[2]})"


def _host_port(task: Tuple[str, int, str]) -> Tuple[str, int]:
  host, _, port = task[2].rpartition(":")
  if not port.isdigit() or not 0 < int(port) < 65536:
    raise _bad_tf_config(f"{task_name(task)} has no port in 1..65535")
  return host.strip("[]"), int(port)


def _listener(task: Tuple[str, int, str]) -> socket.socket:
  """A socket bound to this worker's port on every interface, as TensorFlow's
  server binds it.

  Raises:
    ClusterError: naming the worker, when the port cannot be bound.
  """
  _, port = _host_port(task)
  try:  # IPv6 and IPv4, like TensorFlow's "[::]:port"
    listener = socket.socket(socket.AF_INET6)
  except OSError:
    listener = socket.socket(socket.AF_INET)
  try:
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("", port))
  except OSError as error:
    listener.close()
    raise ClusterError(
        f"TF_CONFIG's {task_name(task)} is this process, and port {port} cannot be bound "
        f"({error.strerror or error}): stop whatever holds it, or give this worker "
        "another port in TF_CONFIG (the same cluster list in every worker's "
        "environment)") from None
  return listener


def check_cluster(distribution: str, run_dir: str,
                  environ: Optional[Mapping[str, str]] = None) -> bool:
  """`is_chief`, and for multi_worker the addresses of TF_CONFIG: every worker's
  host resolves, this worker's port can be bound (bound and released at once).
  No TensorFlow. Also notes whether run_dir exists yet (a run folder the
  command creates is removed again, empty, when the cluster does not start).

  Raises:
    ConfigError: a bad TF_CONFIG; ClusterError naming the worker.
  """
  chief = is_chief(distribution, environ)
  if distribution != MULTI_WORKER:
    return chief
  task_type, index, cluster = tf_config_task(environ)
  tasks = worker_addresses(cluster)
  for task in tasks:
    host, port = _host_port(task)
    try:
      socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
      reason = getattr(error, "strerror", None) or str(error)
      raise ClusterError(
          f"TF_CONFIG's {task_name(task)}: host {host!r} does not resolve ({reason}); fix "
          "the address in TF_CONFIG (the same cluster list in every worker's "
          "environment)") from None
  own = next(task for task in tasks if task[:2] == (task_type, index))
  _listener(own).close()
  if run_dir and not os.path.exists(run_dir):
    _CREATED_RUN_DIRS.append(run_dir)
  return chief


def _remove_created_run_dirs() -> None:
  for folder in _CREATED_RUN_DIRS:
    try:
      os.rmdir(folder)  # only when still empty
    except OSError:
      pass


def _answers(task: Tuple[str, int, str]) -> bool:
  try:
    socket.create_connection(_host_port(task), timeout=1.0).close()
    return True
  except OSError:
    return False


def wait_for_workers(timeout_s: float, environ: Optional[Mapping[str, str]] = None) -> None:
  """Waits until every other worker of TF_CONFIG answers on its port, this
  worker listening on its own meanwhile (released before TensorFlow binds it).

  SIGTERM and SIGINT end the wait (in the main thread: their handlers are
  restored afterwards).

  Raises:
    ClusterError: after `timeout_s`, or on a signal, naming the workers not
      reached (an empty run folder the command created is removed).
  """
  task_type, index, cluster = tf_config_task(environ)
  tasks = worker_addresses(cluster)
  waiting = [task for task in tasks if task[:2] != (task_type, index)]
  listener = _listener(next(task for task in tasks if task[:2] == (task_type, index)))
  started = time.monotonic()

  def unreached() -> str:
    return ", ".join(map(task_name, waiting))

  def stop(signum: int, frame: Optional[FrameType]) -> NoReturn:
    del frame
    raise ClusterError(
        f"stopped by {signal.Signals(signum).name} after {time.monotonic() - started:.0f} s "
        f"of waiting for the cluster of TF_CONFIG; not reached: {unreached()}")

  handlers = {}
  if threading.current_thread() is threading.main_thread():
    handlers = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
  try:
    listener.listen(64)
    listener.settimeout(_POLL_S)
    told = False
    while waiting:
      waiting = [task for task in waiting if not _answers(task)]
      if not waiting:
        break
      if not told:
        print(f"waiting up to {timeout_s:g} s (--cluster_timeout_s) for the other workers "
              f"of TF_CONFIG: {unreached()}", flush=True)
        told = True
      if time.monotonic() - started >= timeout_s:
        raise ClusterError(
            f"the cluster of TF_CONFIG did not start within --cluster_timeout_s={timeout_s:g}: "
            f"not reached: {unreached()}; start every worker (one process each, the same "
            "TF_CONFIG cluster), check that their ports are open between the machines, or "
            "raise --cluster_timeout_s")
      try:  # answer the others' knocks meanwhile (and pause)
        listener.accept()[0].close()
      except OSError:
        pass
  except ClusterError:
    _remove_created_run_dirs()
    raise
  finally:
    listener.close()
    for signum, handler in handlers.items():
      signal.signal(signum, handler)


_WATCHDOG = """
import os, select, signal, sys
timeout, parent, line = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], timeout)[0]:
  print(line, file=sys.stderr, flush=True)
  os.kill(parent, signal.SIGKILL)
  for folder in sys.argv[4:]:
    try:
      os.rmdir(folder)
    except OSError:
      pass
"""


def watchdog(timeout_s: float, workers: str) -> subprocess.Popen:
  """A process that, unless its stdin is closed within `timeout_s`, prints one
  line and kills this one (TensorFlow's collective start-up holds the GIL)."""
  line = (f"error: the workers of TF_CONFIG ({workers}) answered, but the collective "
          f"start-up did not finish within --cluster_timeout_s={timeout_s:g}; stopped "
          "(SIGKILL). Check that every worker runs this command with the same TF_CONFIG "
          "cluster, or raise --cluster_timeout_s")
  return subprocess.Popen(
      [sys.executable, "-c", _WATCHDOG, str(timeout_s), str(os.getpid()), line]
      + _CREATED_RUN_DIRS, stdin=subprocess.PIPE, start_new_session=True)
