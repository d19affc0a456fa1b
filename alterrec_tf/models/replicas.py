"""Train steps under tf.distribute: logged losses of the global batch, and the
Keras train function of a replicated model.

Under a strategy (`training.distribution`) each replica's train_step sees its
share of a global batch. Its loss is what its gradients come from (summed over
the replicas by the optimizer); what is logged must be the loss of the whole
global batch, the same number on every replica. Outside a strategy, or with
one replica, `sum_over_replicas` and `mean_over_replicas` return their input
unchanged, so the single-process numbers do not move.
"""

from typing import TYPE_CHECKING, Callable, Dict, Hashable, Iterator, Optional

import tensorflow as tf

if TYPE_CHECKING:
  import keras

Batch = Dict[str, tf.Tensor]
Logs = Dict[str, tf.Tensor]
StepFunction = Callable[[Batch], Logs]


def _replica_context() -> Optional[tf.distribute.ReplicaContext]:
  """The replica context when more than one replica trains in sync, else None."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return None
  return context


def sum_over_replicas(value: tf.Tensor) -> tf.Tensor:
  """A scalar summed over the replicas (e.g. a loss that is a sum over each
  replica's prefixes divided by a global constant): float scalar -> float scalar."""
  context = _replica_context()
  if context is None:
    return value
  return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def mean_over_replicas(mean: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
  """The mean over all replicas' items from each replica's mean of its `count`
  items: float scalar, int scalar -> float scalar (`mean` as is with one replica)."""
  context = _replica_context()
  if context is None:
    return mean
  count = tf.cast(count, mean.dtype)
  total, number = context.all_reduce(tf.distribute.ReduceOp.SUM, [mean * count, count])
  return total / tf.maximum(number, 1.0)


def _vector_logs(step_function: StepFunction) -> StepFunction:
  """`step_function` with every log a [1] vector instead of a scalar.

  Keras 3 reduces a multi-worker step's outputs with `strategy.reduce(MEAN,
  value, axis=0)`, which fails on scalars (tensorflow/tensorflow#72388).
  """

  def step(batch: Batch) -> Logs:
    return {name: tf.reshape(value, [1]) for name, value in step_function(batch).items()}

  return step


def replicated_train_function(model: "keras.Model", step_functions: Dict[Hashable, Callable],
                              choose: Optional[Callable[[], Hashable]] = None
                              ) -> Callable[[Iterator[Batch]], Logs]:
  """Keras' train function of a model built in a strategy's scope.

  Args:
    model: a Keras 3 model on the TensorFlow backend.
    step_functions: {key: train step, batch -> {name: scalar log}}, each traced
      once (Keras' `_make_function`: `strategy.run`, then the replicas' logs
      reduced).
    choose: which step runs next (read at every step, e.g. from a variable);
      None: the only one.

  Returns:
    iterator -> {name: scalar log} (scalars whatever the strategy).
  """
  functions = {key: model._make_function(_vector_logs(fn))
               for key, fn in step_functions.items()}
  only = next(iter(functions))

  def train_function(iterator: Iterator[Batch]) -> Logs:
    logs = functions[choose() if choose is not None else only](iterator)
    return {name: tf.reshape(value, []) for name, value in logs.items()}

  return train_function
