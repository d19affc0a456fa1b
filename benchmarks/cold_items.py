"""Cold items on the trained scale: a zero ID part vs one imputed from text.

  python benchmarks/cold_items.py --trained_run=runs/online_retail \\
      [--hidden_share=0.1] [--hidden_seed=0]

Hides a share of the trained items' ID rows (treats them as items added after
training), imputes them from the other trained items, and
ranks every scored prefix of the validation and test splits (exact protocol:
each prefix with exactly its last max_len items, seen items as the run was
evaluated) with the hidden items' ID rows

  real     their trained rows (what they would score had they been trained)
  zero     zeros (the fused score has the text term only)
  ridge    a ridge regression of ID rows on text rows (the obvious baseline)
  imputed  `cold_items`: the similarity-weighted ID rows of the trained items
           nearest in text (what the export does; one line per k, temperature)

Only the candidate rows change; a hidden item inside a session is read with its
trained rows, so the figures isolate the question of the scale of cold items'
scores. Printed per split: Hits@20 / NDCG@20 (%) of the prefixes whose target
is a hidden item, and Hits@20 of all prefixes (cold rows can also push trained
targets down).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

import alterrec_tf  # noqa: F401,E402  (before TensorFlow)

flags.DEFINE_string("trained_run", None, "A trained AlterRec run folder.", required=True)
flags.DEFINE_float("hidden_share", 0.1, "Share of the trained items treated as new.")
flags.DEFINE_integer("hidden_seed", 0, "Seed of the choice of hidden items.")
flags.DEFINE_list("splits", ["valid", "test"], "Splits to rank.")
flags.DEFINE_list("num_neighbours", ["20"], "k of the imputed variants (one line each).")
flags.DEFINE_list("temperatures", ["0.02"], "Softmax temperatures of the imputed variants.")
flags.DEFINE_float("ridge_l2", 0.01, "Also impute by a ridge regression text -> ID row "
                   "(strength relative to the mean squared text vector norm); < 0: skip.")
FLAGS = flags.FLAGS
K = 20


def main(argv):
  del argv
  import numpy as np
  import tensorflow as tf

  from alterrec_tf.data import windows
  from alterrec_tf.formats import schema
  from alterrec_tf.models import cold_items, towers
  from alterrec_tf.training import loading, trainer

  model, config, manifest, data_dir = loading.load_run(FLAGS.trained_run)
  num_items = manifest["num_items"]
  counts = windows.item_counts(schema.split_files(data_dir, manifest, "train"),
                               num_items).numpy()
  trained = np.flatnonzero(counts > 0)
  trained = trained[trained > 0]
  rng = np.random.default_rng(FLAGS.hidden_seed)
  hidden = np.sort(rng.choice(trained, int(round(FLAGS.hidden_share * len(trained))),
                              replace=False))
  kept = np.setdiff1d(trained, hidden)
  id_matrix = np.asarray(model.tower("id").item_matrix(training=False))
  text_matrix = np.asarray(model.tower("text").item_matrix(training=False))
  variants = {"real": id_matrix[hidden], "zero": np.zeros_like(id_matrix[hidden])}
  if FLAGS.ridge_l2 >= 0:
    x, y = text_matrix[kept].astype(np.float64), id_matrix[kept].astype(np.float64)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc = x - x_mean
    gram = xc.T @ xc + FLAGS.ridge_l2 * np.mean(np.sum(xc * xc, axis=1)) * np.eye(x.shape[1])
    weights = np.linalg.solve(gram, xc.T @ (y - y_mean))
    variants[f"ridge l2={FLAGS.ridge_l2:g}"] = (
        (text_matrix[hidden] - x_mean) @ weights + y_mean).astype(np.float32)
  for k in map(int, FLAGS.num_neighbours):
    for temperature in map(float, FLAGS.temperatures):
      imputer = cold_items.ColdIdImputer(kept, text_matrix[kept], id_matrix[kept], k,
                                         temperature)
      variants[f"imputed k={k} t={temperature:g}"] = imputer(text_matrix[hidden])
  d_id = id_matrix.shape[1]
  hidden_text = tf.constant(text_matrix[hidden])
  hidden_index = tf.constant(hidden[:, None], tf.int32)
  variant_rows = {name: tf.constant(rows) for name, rows in variants.items()}
  is_hidden = np.zeros(num_items, bool)
  is_hidden[hidden] = True
  print(f"run {FLAGS.trained_run}: {len(trained)} trained items, {len(hidden)} hidden "
        f"({FLAGS.hidden_share:.0%}, seed {FLAGS.hidden_seed}); imputed from the other "
        f"{len(kept)}; "
        f"seen items: {config.seen_items}")

  @tf.function(reduce_retracing=True)
  def ranks(batch):
    heads, targets, queries = model.score_heads_and_queries(batch)
    fused = heads["fused"]  # [P, V], seen items already at NEG_INF
    excluded = tf.gather(fused, hidden, axis=1) <= towers.NEG_INF / 2
    text_part = tf.matmul(queries[:, d_id:], hidden_text, transpose_b=True)
    out = {}
    for name, rows in variant_rows.items():
      cold = text_part + tf.matmul(queries[:, :d_id], rows, transpose_b=True)
      cold = tf.where(excluded, tf.cast(towers.NEG_INF, cold.dtype), cold)
      scores = tf.transpose(tf.tensor_scatter_nd_update(
          tf.transpose(fused), hidden_index, tf.transpose(cold)))
      target_scores = tf.gather(scores, targets, batch_dims=1)
      out[name] = 1 + tf.reduce_sum(tf.cast(scores > target_scores[:, None], tf.int32), 1)
    return out, targets

  for split_name in FLAGS.splits:
    split = windows.load_split(data_dir, manifest, split_name, config.max_len,
                               trainer.TEST_WINDOW_STRIDE)
    start = time.perf_counter()
    collected = {name: [] for name in variants}
    all_targets = []
    for batch in split.batches(config.eval_batch_size):
      out, targets = ranks(batch)
      all_targets.append(targets.numpy())
      for name, value in out.items():
        collected[name].append(value.numpy())
    targets = np.concatenate(all_targets)
    cold_targets = is_hidden[targets]
    print(f"\n{split_name}: {len(targets)} prefixes, {int(cold_targets.sum())} with a hidden "
          f"target ({time.perf_counter() - start:.0f}s)")
    print(f"  {'ID rows of hidden items':<24} {'cold H@20':>9} {'cold N@20':>9} "
          f"{'all H@20':>9}")
    for name, parts in collected.items():
      rank = np.concatenate(parts)
      hit = rank <= K
      ndcg = np.where(hit, 1.0 / np.log2(rank + 1.0), 0.0)
      print(f"  {name:<24} {100 * hit[cold_targets].mean():9.2f} "
            f"{100 * ndcg[cold_targets].mean():9.2f} {100 * hit.mean():9.2f}")


if __name__ == "__main__":
  app.run(main)
