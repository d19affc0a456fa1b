"""TFRS FactorizedTopK Hits@K vs the evaluator's keras-rs Hits@K on a trained run.

  python benchmarks/tfrs_agreement.py --trained_run=runs/online_retail [--split=test]

Loads the run's best weights, ranks the split with the exact test protocol
(every scored prefix, exactly its last max_len items) twice: with the TFRS
retrieval metric (`training.retrieval`: a BruteForce index of the fused item
matrix) and without it, and prints both Hits@K, the prefixes that differ and
the seconds of each pass.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

import alterrec_tf  # noqa: F401,E402  (before TensorFlow: TF_USE_LEGACY_KERAS for TFRS)

flags.DEFINE_string("trained_run", None, "A trained AlterRec run folder.", required=True)
flags.DEFINE_enum("split", "test", ["valid", "test"], "Split to rank.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from alterrec_tf.data import windows
  from alterrec_tf.training import evaluation, loading, trainer

  model, config, manifest, data_dir = loading.load_run(FLAGS.trained_run)
  split = windows.load_split(data_dir, manifest, FLAGS.split, config.max_len,
                             trainer.TEST_WINDOW_STRIDE)
  timings = {}
  for tfrs_metrics in (True, False):
    evaluator = evaluation.Evaluator(model, config.ks, config.mrr_k, tfrs_metrics)
    start = time.perf_counter()
    results = evaluator(split.batches(config.eval_batch_size))
    timings[tfrs_metrics] = time.perf_counter() - start
    if tfrs_metrics:
      fused = results["fused"]
  print(f"run {FLAGS.trained_run}, {FLAGS.split} split, {split.num_examples} prefixes, "
        f"seen items: {config.seen_items}")
  for k in config.ks:
    keras_rs_hits, tfrs_hits = fused[f"hits@{k}"], fused[f"tfrs_hits@{k}"]
    print(f"  Hits@{k}: keras-rs {100 * keras_rs_hits:.4f}%  TFRS {100 * tfrs_hits:.4f}%  "
          f"difference {round((tfrs_hits - keras_rs_hits) * split.num_examples):+d} prefixes")
  print(f"  seconds: with TFRS {timings[True]:.1f}, without {timings[False]:.1f}")


if __name__ == "__main__":
  app.run(main)
