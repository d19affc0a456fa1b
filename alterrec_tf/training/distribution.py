"""Training under tf.distribute (`--distribution`): the strategy, which worker is
the chief, what the chief decides for everyone, and each replica's share of a batch.

  none          no strategy: Keras' default, the single-process path unchanged.
  mirrored      `tf.distribute.MirroredStrategy` over this machine's devices.
  multi_worker  `tf.distribute.MultiWorkerMirroredStrategy` over the cluster of
                the TF_CONFIG environment variable, ring all-reduce over gRPC
                (works between CPU processes on localhost); one process per worker.

Batches: every worker builds the single-process stream of global batches (same
shuffle seeds, same length buckets) and keeps its replicas' rows of each one:
replica r of R takes rows [r * m, (r + 1) * m) of a global batch of B windows,
m = ceil(B / R), the last slices padded with empty windows (no scored prefix:
they add nothing to a loss). So R replicas of a global batch see together
exactly the windows the single process sees in one step, and the number of
steps per epoch is unchanged. tf.data's auto-sharding is not used (policy OFF,
through `distribute_datasets_from_function`): FILE sharding would give each
worker other sessions, DATA sharding other whole batches, and both other steps
than the single-process run.

Losses: with `--loss_weighting=prefix` a replica's loss is the sum over its
prefixes divided by the split's global mean prefixes per batch (a constant),
and Keras' TensorFlow optimizer all-reduces the replicas' gradients by SUM
(`keras/src/backend/tensorflow/optimizer.py`, `_all_reduce_sum_gradients`), so
the applied gradient is the single-process one up to the order of float sums.
`--loss_weighting=batch` (a per-batch mean) is refused under a strategy.

Run folder: only the chief writes run_dir; another worker writes into a
temporary folder (removed at exit) and, to resume, reads the chief's backup.
Whether run_dir holds a finished run (shown, not retrained) or a conflicting
one (refused) is read by the chief alone and sent to every worker
(`chief_verdict`), so all of them train, or none does.

Cluster start-up (`--cluster_timeout_s`): before TensorFlow starts, the
command line checks that every address of TF_CONFIG resolves and that this
worker's port can be bound (`check_cluster`). MultiWorkerMirroredStrategy's
start-up then blocks in C++ holding the GIL (no Python thread, no Python signal
handler runs) and TensorFlow takes SIGTERM for itself, so a worker first waits
in Python until every other worker answers on its port (`wait_for_workers`:
each worker listens on its own port meanwhile; SIGTERM and SIGINT end the wait
with one line); the timeout ends it with one line naming the workers not
reached. A peer that answers but never joins the collective start-up is ended
by a watchdog process after --cluster_timeout_s more (one line, then SIGKILL).
A run folder that the command created and that is still empty is removed.

This module imports TensorFlow only inside the functions that need it, so the
command line can check TF_CONFIG before TensorFlow starts.
"""

import atexit
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from types import FrameType
from typing import (
  TYPE_CHECKING,
  Any,
  Callable,
  Dict,
  List,
  Mapping,
  NoReturn,
  Optional,
  Tuple,
  Union,
)

from alterrec_tf import config as alter_config

if TYPE_CHECKING:
  import keras
  import tensorflow as tf

NONE = "none"
MIRRORED = "mirrored"
MULTI_WORKER = "multi_worker"
TF_CONFIG = "TF_CONFIG"
WORKER_TASK_TYPES = ("chief", "worker")

# What the chief found in run_dir (`chief_verdict`).
_TRAIN, _FINISHED, _REFUSED = 0, 1, 2
_PLACEMENTS: Dict[str, "Placement"] = {}  # the strategies of this process (`place`)
_CREATED_RUN_DIRS: List[str] = []  # run folders that did not exist before `check_cluster`
DEFAULT_CLUSTER_TIMEOUT_S = alter_config.TrainConfig().cluster_timeout_s
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


def _addresses(cluster: dict) -> List[Tuple[str, int, str]]:
  """(task type, index, "host:port") of every worker task of the cluster."""
  return [(task_type, index, address) for task_type in WORKER_TASK_TYPES
          for index, address in enumerate(cluster.get(task_type, []))]


def _name(task: Tuple[str, int, str]) -> str:
  return f"{task[0]} {task[1]} ({task[2]})"


def _host_port(task: Tuple[str, int, str]) -> Tuple[str, int]:
  host, _, port = task[2].rpartition(":")
  if not port.isdigit() or not 0 < int(port) < 65536:
    raise _bad_tf_config(f"{_name(task)} has no port in 1..65535")
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
        f"TF_CONFIG's {_name(task)} is this process, and port {port} cannot be bound "
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
  tasks = _addresses(cluster)
  for task in tasks:
    host, port = _host_port(task)
    try:
      socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
      reason = getattr(error, "strerror", None) or str(error)
      raise ClusterError(
          f"TF_CONFIG's {_name(task)}: host {host!r} does not resolve ({reason}); fix "
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
  tasks = _addresses(cluster)
  waiting = [task for task in tasks if task[:2] != (task_type, index)]
  listener = _listener(next(task for task in tasks if task[:2] == (task_type, index)))
  started = time.monotonic()

  def unreached() -> str:
    return ", ".join(map(_name, waiting))

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


def _watchdog(timeout_s: float, workers: str) -> subprocess.Popen:
  """A process that, unless its stdin is closed within `timeout_s`, prints one
  line and kills this one (TensorFlow's collective start-up holds the GIL)."""
  line = (f"error: the workers of TF_CONFIG ({workers}) answered, but the collective "
          f"start-up did not finish within --cluster_timeout_s={timeout_s:g}; stopped "
          "(SIGKILL). Check that every worker runs this command with the same TF_CONFIG "
          "cluster, or raise --cluster_timeout_s")
  return subprocess.Popen(
      [sys.executable, "-c", _WATCHDOG, str(timeout_s), str(os.getpid()), line]
      + _CREATED_RUN_DIRS, stdin=subprocess.PIPE, start_new_session=True)


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where a run trains.

  Attributes:
    distribution: the --distribution value.
    strategy: the `tf.distribute.Strategy` (the default one for "none").
    chief: whether this process writes the run folder.
    workers: processes taking part (1 unless multi-worker).
  """
  distribution: str
  strategy: Any
  chief: bool
  workers: int

  @property
  def replicas(self) -> int:
    """Replicas in sync over all workers."""
    return int(self.strategy.num_replicas_in_sync)


def place(distribution: str, cluster_timeout_s: float = DEFAULT_CLUSTER_TIMEOUT_S) -> Placement:
  """Creates the strategy of `distribution`.

  A multi-worker strategy must exist before TensorFlow runs any op, so this is
  the first thing a run does. A strategy is created once per process (later
  calls return it: several runs of one process share it).

  Args:
    distribution: the --distribution value.
    cluster_timeout_s: multi_worker: the longest wait for the other workers,
      then as long again for the collective start-up (module docstring).

  Raises:
    ConfigError: multi_worker without a valid TF_CONFIG; ClusterError: a worker
      not reached in time.
  """
  import tensorflow as tf
  if distribution == NONE:
    return Placement(NONE, tf.distribute.get_strategy(), True, 1)
  if distribution not in (MIRRORED, MULTI_WORKER):
    raise alter_config.ConfigError(f"--distribution={distribution} is not one of "
                                   f"{NONE}, {MIRRORED}, {MULTI_WORKER}")
  # One strategy of each kind per process: a multi-worker one configures the
  # collectives once, and two strategies' collectives would share keys.
  if distribution not in _PLACEMENTS:
    _PLACEMENTS[distribution] = (
        Placement(MIRRORED, tf.distribute.MirroredStrategy(local_devices()), True, 1)
        if distribution == MIRRORED else _multi_worker(cluster_timeout_s))
  return _PLACEMENTS[distribution]


def _multi_worker(cluster_timeout_s: float) -> Placement:
  import tensorflow as tf
  _, _, cluster = tf_config_task()
  wait_for_workers(cluster_timeout_s)
  options = tf.distribute.experimental.CommunicationOptions(
      implementation=tf.distribute.experimental.CommunicationImplementation.RING)
  watchdog = _watchdog(cluster_timeout_s, ", ".join(map(_name, _addresses(cluster))))
  try:
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
  finally:
    if watchdog.stdin is not None:
      watchdog.stdin.close()  # the watchdog ends quietly
    watchdog.wait()
  workers = sum(len(cluster.get(task_type, [])) for task_type in WORKER_TASK_TYPES)
  return Placement(MULTI_WORKER, strategy, is_chief(MULTI_WORKER), workers)


def local_devices() -> List[str]:
  """The devices of --distribution=mirrored: this machine's GPUs, else its
  (logical) CPUs (one, unless split with `tf.config.set_logical_device_configuration`)."""
  import tensorflow as tf
  devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
  return [device.name for device in devices]


def write_dir(placement: Placement, run_dir: str) -> str:
  """The folder this process writes: run_dir on the chief, else a temporary
  folder removed when the process exits."""
  if placement.chief:
    return run_dir
  folder = tempfile.mkdtemp(prefix="alterrec_worker_")
  atexit.register(shutil.rmtree, folder, True)
  return folder


def _from_chief(placement: Placement, value: int) -> int:
  """The chief's `value` on every worker (a collective: every worker calls it,
  the others with any value). Replica 0 lives on the chief."""
  import tensorflow as tf

  def contribution() -> "tf.Tensor":
    first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
    return tf.where(first, tf.constant(value, tf.int32), 0)

  per_replica = placement.strategy.run(tf.function(contribution))
  return int(placement.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))


def chief_verdict(placement: Placement, previous_run: Callable[[], Optional[dict]],
                  run_dir: str) -> Optional[dict]:
  """What run_dir holds, as the chief reads it, on every worker.

  Args:
    placement: see `place`.
    previous_run: reads run_dir on the chief: the finished run's results, or
      None to train; raises ConfigError for a run with other settings (and
      with --overwrite removes the old run first).
    run_dir: the chief's run folder (read by the other workers for a finished
      run's results).

  Returns:
    The finished run's results, or None: train.

  Raises:
    ConfigError: the chief refused run_dir (on the chief: its own error).
  """
  if placement.workers == 1:
    return previous_run()
  results, verdict, refusal = None, _TRAIN, None
  if placement.chief:
    try:
      results = previous_run()
      verdict = _FINISHED if results is not None else _TRAIN
    except alter_config.ConfigError as error:
      verdict, refusal = _REFUSED, error
  verdict = _from_chief(placement, verdict)
  if refusal is not None:
    raise refusal
  if verdict == _REFUSED:
    raise alter_config.ConfigError(
        f"the chief refused {run_dir} (a run trained with other settings: see its output)")
  if verdict == _FINISHED and results is None:
    from alterrec_tf import runs as alter_runs
    results = alter_runs.load_results(run_dir)
  return results


def compile_model(placement: Placement, model: "keras.Model") -> None:
  """`model.compile` in the strategy's scope, for a model whose variables all
  exist (`build_all`, built in that scope).

  Under a strategy, Keras 3's fit first builds an unbuilt model from the first
  distributed batch (`TensorFlowTrainer._maybe_symbolic_build`, through
  `strategy.reduce` of the batch, which fails on a dict of per-replica
  tensors); there is nothing to build, so it is skipped, as Keras skips it
  without a strategy.
  """
  with placement.strategy.scope():
    model.compile(jit_compile=False)
  if placement.distribution != NONE:
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


# --- batches ------------------------------------------------------------------------
def replica_slice(batch: Dict[str, "tf.Tensor"], replica: Union[int, "tf.Tensor"],
                  num_replicas: int) -> Dict[str, "tf.Tensor"]:
  """Replica `replica`'s rows of a global window batch.

  Args:
    batch: {key: [B, n]} (`data.windows` keys).
    replica: int scalar in [0, num_replicas).
    num_replicas: R.

  Returns:
    {key: [ceil(B / R), n]}: rows [replica * m, (replica + 1) * m) of the
    batch, m = ceil(B / R), padded at the end with empty windows (item 0,
    target 0, not scored) where the batch has fewer.
  """
  import tensorflow as tf
  rows = tf.shape(next(iter(batch.values())))[0]
  share = (rows + num_replicas - 1) // num_replicas
  start = tf.minimum(tf.cast(replica, tf.int32) * share, rows)
  stop = tf.minimum(start + share, rows)
  missing = share - (stop - start)
  return {key: tf.pad(value[start:stop], [[0, missing], [0, 0]])
          for key, value in batch.items()}


def distribute_batches(placement: Placement, batches: "tf.data.Dataset"
                       ) -> Union["tf.data.Dataset", "tf.distribute.DistributedDataset"]:
  """The training stream for `model.fit` under `placement`.

  Args:
    batches: tf.data.Dataset of global window batches {key: [B, n]}.

  Returns:
    `batches` itself without a strategy; else a distributed dataset whose
    replica r gets `replica_slice(batch, r, R)` of every global batch.
  """
  if placement.distribution == NONE:
    return batches
  import tensorflow as tf
  num_replicas = placement.replicas

  def worker_batches(context: "tf.distribute.InputContext") -> "tf.data.Dataset":
    local = context.num_replicas_in_sync // context.num_input_pipelines
    first = context.input_pipeline_id * local

    def slices(batch: Dict[str, "tf.Tensor"]) -> "tf.data.Dataset":
      # this worker's replicas, in replica order (round robin)
      return tf.data.Dataset.range(first, first + local).map(
          lambda r: replica_slice(batch, r, num_replicas))

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF)
    return batches.flat_map(slices).with_options(options)

  return placement.strategy.distribute_datasets_from_function(worker_batches)
