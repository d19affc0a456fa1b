"""The pieces of an AlterRec training step, timed alone (used by train_throughput.py).

`breakdown` times the parts of a hard-negative step of each tower on one batch
(partner scores, top_k over them, the whole partner signal, the trained
tower's forward and forward+backward, the optimizer); `input_pipeline_rate`
times SplitData.epochs_of_batches without a model. `print_tables` prints both
from a train_throughput result.
"""

import time

from benchmarks import common


def breakdown(model, batch, config, repeats=3):
  """Median seconds of the pieces of the hard-negative steps of each tower."""
  import tensorflow as tf

  from alterrec_tf.data.windows import scored_positions
  from alterrec_tf.models import negatives as alter_negatives
  from alterrec_tf.models import partner as alter_partner
  batch = {k: tf.constant(v) for k, v in batch.items()}
  positions, targets = scored_positions(batch)
  item_ids = batch["item_ids"]
  seed = tf.constant([config.seed, 0], tf.int32)
  out = {}
  for name in model.tower_names:
    partner = model.tower("text" if name == "id" else "id")
    tower = model.tower(name)

    @tf.function(autograph=False)
    def partner_scores(partner=partner):
      matrix = partner.item_matrix(training=False)
      vectors = tf.gather_nd(partner.prefix_vectors(item_ids, matrix, training=False),
                             positions)
      return partner.scores(vectors, matrix)

    scores = partner_scores()
    top_k = tf.function(lambda s: tf.math.top_k(s, k=config.k2, sorted=True).indices,
                        autograph=False)
    negatives = alter_negatives.partner_ranking(
        *tf.math.top_k(scores, k=config.k2, sorted=False), config.k1, 0)[0]

    @tf.function(autograph=False)
    def whole_signal(name=name):
      return alter_partner.partner_signal(
          model, name, item_ids, positions, targets, seed)

    @tf.function(autograph=False)
    def forward_only(tower=tower, negatives=negatives):
      matrix = tower.item_matrix(training=True)
      vectors = tf.gather_nd(tower.prefix_vectors(item_ids, matrix, training=True),
                             positions)
      return alter_negatives.sampled_softmax_loss(tower.scores(vectors, matrix), targets,
                                                  negatives)

    @tf.function(autograph=False)
    def forward_backward(tower=tower, negatives=negatives):
      with tf.GradientTape() as tape:
        matrix = tower.item_matrix(training=True)
        vectors = tf.gather_nd(tower.prefix_vectors(item_ids, matrix, training=True),
                               positions)
        loss = alter_negatives.sampled_softmax_loss(tower.scores(vectors, matrix), targets,
                                                    negatives)
      return loss, tape.gradient(loss, tower.trainable_variables)

    _, gradients = forward_backward()
    optimizer = model.optimizer_of(name)

    @tf.function(autograph=False)
    def apply(optimizer=optimizer, tower=tower, gradients=gradients):
      optimizer.apply(gradients, tower.trainable_variables)
      return tf.constant(0)

    def timed(fn):
      return common.median(common.time_calls(fn, warmup=1, repeats=repeats))

    out[name] = {
        "partner_scores": timed(partner_scores),
        "top_k": timed(lambda: top_k(scores)),
        "partner_signal_total": timed(whole_signal),
        "trained_tower_forward": timed(forward_only),
        "trained_tower_forward_backward": timed(forward_backward),
        "optimizer_apply": timed(apply),
    }
  return out


def input_pipeline_rate(split, config):
  """Seconds to the first batch and windows/s of one epoch of epochs_of_batches."""
  start = time.perf_counter()
  iterator = iter(split.epochs_of_batches(config.batch_size, config.seed, 0, 1))
  first = next(iterator)
  first_seconds = time.perf_counter() - start
  rows = 0
  start = time.perf_counter()
  for batch in iterator:
    rows += int(batch["item_ids"].shape[0])
  seconds = time.perf_counter() - start
  return {"seconds_to_first_batch": first_seconds,
          "windows_per_second_after_first": rows / seconds if seconds else float("nan"),
          "epoch_seconds": first_seconds + seconds,
          "first_batch_rows": int(first["item_ids"].shape[0])}


def print_tables(result, k2):
  """The breakdown and input-pipeline lines of a train_throughput result."""
  if result["breakdown_seconds"]:
    b = result["breakdown_batch"]
    print(f"\nWhere a hard-negative step goes (one batch: {b['rows']} x {b['width']} windows, "
          f"{b['prefixes']} prefixes; median of 3, ms):")
    rows = []
    for name, pieces in result["breakdown_seconds"].items():
      rows.append([name] + [f"{1e3 * pieces[k]:.0f}" for k in (
          "partner_scores", "top_k", "partner_signal_total", "trained_tower_forward",
          "trained_tower_forward_backward", "optimizer_apply")])
    print(common.table(["trained tower", "partner scores", f"top_k (k={k2})",
                        "partner signal (scores+top_k+mix)", "trained fwd",
                        "trained fwd+bwd", "optimizer"], rows))
  p = result["input_pipeline"]
  print(f"\nInput pipeline (SplitData.epochs_of_batches): first batch after "
        f"{p['seconds_to_first_batch']:.2f} s, then "
        f"{p['windows_per_second_after_first']:,.0f} windows/s (one epoch: "
        f"{p['epoch_seconds']:.1f} s); process peak RSS "
        f"{common.mib(result['process_max_rss_bytes'])}")
