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

Cluster start-up (`--cluster_timeout_s`): `training.cluster` reads TF_CONFIG
and waits for the other workers before the strategy is made here.

This module imports TensorFlow only inside the functions that need it, so the
command line can check TF_CONFIG before TensorFlow starts.
"""

import atexit
import dataclasses
import shutil
import tempfile
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Union

from alterrec_tf import config as alter_config
from alterrec_tf.training import cluster

if TYPE_CHECKING:
  import keras
  import tensorflow as tf

NONE = "none"
MIRRORED = "mirrored"
MULTI_WORKER = cluster.MULTI_WORKER

# What the chief found in run_dir (`chief_verdict`).
_TRAIN, _FINISHED, _REFUSED = 0, 1, 2
_PLACEMENTS: Dict[str, "Placement"] = {}  # the strategies of this process (`place`)
DEFAULT_CLUSTER_TIMEOUT_S = alter_config.TrainConfig().cluster_timeout_s


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
  _, _, cluster_spec = cluster.tf_config_task()
  cluster.wait_for_workers(cluster_timeout_s)
  options = tf.distribute.experimental.CommunicationOptions(
      implementation=tf.distribute.experimental.CommunicationImplementation.RING)
  workers = ", ".join(map(cluster.task_name, cluster.worker_addresses(cluster_spec)))
  watchdog = cluster.watchdog(cluster_timeout_s, workers)
  try:
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
  finally:
    if watchdog.stdin is not None:
      watchdog.stdin.close()  # the watchdog ends quietly
    watchdog.wait()
  count = sum(len(cluster_spec.get(task_type, [])) for task_type in cluster.WORKER_TASK_TYPES)
  return Placement(MULTI_WORKER, strategy, cluster.is_chief(MULTI_WORKER), count)


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
