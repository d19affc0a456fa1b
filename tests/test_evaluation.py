"""Full-catalogue metrics: keras-rs on top-K lists and TFRS FactorizedTopK
against a numpy full-ranking reference, ties included."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import tensorflow as tf

from alterrec_tf.data import windows as alter_data
from alterrec_tf.models import towers
from alterrec_tf.training import evaluation

MAX_LEN = 4


class FixedScores:
  """A model whose prefix i scores items by queries[i] . items (padding masked)."""

  def __init__(self, queries, items):
    self.queries = tf.constant(queries)
    self.items = tf.constant(items)

  def score_heads(self, batch):
    rows = batch[alter_data.ITEM_IDS][:, 0]
    scores = tf.matmul(tf.gather(self.queries, rows), self.items, transpose_b=True)
    targets = batch[alter_data.TARGET_IDS][:, 0]
    return {"fused": towers.mask_padding(scores)}, targets


def tied_problem(num_prefixes=300, num_items=60, dim=3, seed=0):
  rng = np.random.default_rng(seed)
  # Small integer vectors make many exact ties between items.
  items = rng.integers(-2, 3, size=(num_items, dim)).astype(np.float32)
  queries = rng.integers(-2, 3, size=(num_prefixes, dim)).astype(np.float32)
  targets = rng.integers(1, num_items, size=num_prefixes).astype(np.int32)
  return queries, items, targets


def batches_for(targets):
  n = len(targets)
  item_ids = np.zeros([n, MAX_LEN], np.int32)
  item_ids[:, 0] = np.arange(n)
  target_ids = np.zeros([n, MAX_LEN], np.int32)
  target_ids[:, 0] = targets
  mask = np.zeros([n, MAX_LEN], bool)
  mask[:, 0] = True
  return tf.data.Dataset.from_tensor_slices({
      alter_data.ITEM_IDS: item_ids, alter_data.TARGET_IDS: target_ids,
      alter_data.TARGET_MASK: mask}).batch(64)


def test_keras_rs_metrics_equal_numpy_full_ranking_with_ties():
  queries, items, targets = tied_problem()
  scores = queries @ items.T
  scores[:, 0] = -1e9
  tie_count = (scores[np.arange(len(targets)), targets][:, None] == scores).sum(1) - 1
  assert (tie_count > 0).mean() > 0.5  # the problem really has ties
  reference = evaluation.metrics_from_ranks(
      evaluation.full_ranking_ranks(scores, targets), ks=(5, 10, 20), mrr_k=20)
  evaluator = evaluation.Evaluator(FixedScores(queries, items), (5, 10, 20), 20)
  results, per_prefix = evaluator(batches_for(targets), keep_ranks=True)
  for name, value in reference.items():
    np.testing.assert_allclose(results["fused"][name], value, atol=1e-6, err_msg=name)
  ranks = evaluation.full_ranking_ranks(scores, targets)
  np.testing.assert_array_equal(per_prefix["fused"], np.minimum(ranks, 21))
  np.testing.assert_array_equal(per_prefix["targets"], targets)


def test_tfrs_factorized_top_k_agrees_with_numpy_reference(tmp_path):
  queries, items, targets = tied_problem(seed=1)
  scores = queries @ items.T
  scores[:, 0] = -1e9
  reference = evaluation.metrics_from_ranks(
      evaluation.full_ranking_ranks(scores, targets), ks=(10, 20), mrr_k=20)
  np.savez(tmp_path / "problem.npz", queries=queries, items=items, targets=targets)
  # TFRS 0.7.7 imports only with the legacy Keras 2 (tf_keras): run it in its own process.
  script = textwrap.dedent(f"""
      import json, os
      os.environ["TF_USE_LEGACY_KERAS"] = "1"
      import numpy as np, tensorflow as tf, tensorflow_recommenders as tfrs
      p = np.load({str(tmp_path / "problem.npz")!r})
      items = tf.constant(p["items"][1:])            # padding is not a candidate
      ids = tf.range(1, p["items"].shape[0])
      index = tfrs.layers.factorized_top_k.BruteForce(k=20)
      index.index(items, identifiers=ids)
      metric = tfrs.metrics.FactorizedTopK(candidates=index, ks=[10, 20])
      targets = tf.constant(p["targets"])
      metric.update_state(tf.constant(p["queries"]), tf.gather(tf.constant(p["items"]), targets),
                          true_candidate_ids=targets)
      print(json.dumps({{m.name: float(m.result()) for m in metric._top_k_metrics}}))
  """)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env=env, timeout=300, check=True).stdout.strip().splitlines()[-1]
  tfrs_results = json.loads(out)
  for k in (10, 20):
    np.testing.assert_allclose(tfrs_results[f"factorized_top_k/top_{k}_categorical_accuracy"],
                               reference[f"hits@{k}"], atol=1e-6)
