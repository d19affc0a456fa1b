"""Timing AlterRec train steps on in-memory batches (train_throughput.py, scale.py).

`sample_batches` picks full batches of epoch 0 spread over their number of
scored prefixes, `BatchStream` feeds them to Keras' compiled `train_function`
from memory (so input is not timed), and `time_train_function` times its calls.
"""

import time


def check_config(config, num_items):
  """`config` with k2 lowered to num_items - 2 when the catalogue is too small for it."""
  if config.k2 >= num_items - 1:
    k2 = num_items - 2
    print(f"note: k2={config.k2} >= items-1; using k2={k2}")
    config = config.replace(k2=k2)
  return config


def batch_info(batch) -> dict:
  """Rows, width and scored prefixes of a batch (numpy dict)."""
  return {"rows": int(batch["item_ids"].shape[0]), "width": int(batch["item_ids"].shape[1]),
          "prefixes": int(batch["target_mask"].sum())}


def sample_batches(split, config, count):
  """`count` full batches of epoch 0 at evenly spaced quantiles of their number
  of scored prefixes (so the sample's mix of short and long windows matches the
  epoch's), and stats of the epoch.

  Two passes over the epoch (its order depends only on the seed): the first
  counts, the second keeps the chosen batches, so memory does not grow with
  the split.
  """
  def epoch_batches():
    return split.epochs_of_batches(config.batch_size, config.seed, 0, 1)

  infos = [{"rows": int(b["item_ids"].shape[0]), "width": int(b["item_ids"].shape[1]),
            "prefixes": int(b["target_mask"].numpy().sum())} for b in epoch_batches()]
  full = sorted((i for i, b in enumerate(infos) if b["rows"] == config.batch_size),
                key=lambda i: (infos[i]["prefixes"], i))
  if not full:
    raise SystemExit("error: no full training batch; lower --batch_size")
  count = min(count, len(full))
  picks = [full[(2 * j + 1) * len(full) // (2 * count)] for j in range(count)]
  chosen = set(picks)
  kept = {i: {k: v.numpy() for k, v in b.items()}
          for i, b in enumerate(epoch_batches()) if i in chosen}
  for i in picks:
    if batch_info(kept[i]) != infos[i]:
      raise RuntimeError("epoch_batches gave another order on its second pass")
  epoch = {"batches": len(infos),
           "prefixes_per_batch_mean": sum(i["prefixes"] for i in infos) / len(infos),
           "width_mean": sum(i["width"] for i in infos) / len(infos)}
  return [kept[i] for i in picks], epoch


class BatchStream:
  """An endless tf.data iterator over in-memory batches and what each holds.

  With `expand`, every batch is replaced by its per-prefix expansion (rows
  padded to `max_len`) before anything is timed, and one tiny expanded batch
  (the first window's prefixes) comes first: the call that traces the train
  function then costs a fraction of a full reference step.
  """

  def __init__(self, batches, expand=False, max_len=None):
    import tensorflow as tf

    from alterrec_tf.data import per_prefix
    if expand:
      batches = [{k: v.numpy() for k, v in per_prefix.expand_to_prefixes(b, max_len).items()}
                 for b in batches]
    self.infos = [dict(batch_info(b), index=i) for i, b in enumerate(batches)]
    dataset = None
    for b in batches:
      one = tf.data.Dataset.from_tensors({k: tf.constant(v) for k, v in b.items()})
      dataset = one if dataset is None else dataset.concatenate(one)
    dataset = dataset.repeat()
    self.position = 0
    if expand:
      first = {k: v[:1] for k, v in batches[0].items()}  # one prefix
      tiny = tf.data.Dataset.from_tensors({k: tf.constant(v) for k, v in first.items()})
      dataset = tiny.concatenate(dataset)
      self.position = -1
    self.iterator = iter(dataset.prefetch(2))

  def next_info(self):
    """Info of the element the next train_function call consumes (None: tiny)."""
    info = None if self.position < 0 else self.infos[self.position % len(self.infos)]
    self.position += 1
    return info


def time_train_function(model, stream, warmup, steps):
  """[(seconds, info)] of `steps` calls of model.train_function after `warmup`."""
  import numpy as np
  if stream.position < 0:  # the tiny tracing batch
    stream.next_info()
    float(model.train_function(stream.iterator)["loss"])
  timed = []
  for step in range(warmup + steps):
    info = stream.next_info()
    start = time.perf_counter()
    loss = float(model.train_function(stream.iterator)["loss"])
    elapsed = time.perf_counter() - start
    if not np.isfinite(loss):
      raise RuntimeError(f"non-finite loss {loss}")
    if step >= warmup:
      timed.append((elapsed, info))
  return timed
