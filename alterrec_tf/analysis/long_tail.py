"""The long-tail analysis of the paper's Figure 6.

Test prefixes are grouped by the training popularity of their target item;
each model's Hits@20 / NDCG@20 per group (mean over seeds) is compared with a
reference model's. Reads the per-prefix ranks each run stores (test_ranks.npz).
"""

import math
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import numpy as np
import numpy.typing as npt

from alterrec_tf.training import evaluation

if TYPE_CHECKING:
  from alterrec_tf.analysis.runs import Run

METRICS = ("hits@20", "ndcg@20")


def long_tail_groups(target_counts: npt.ArrayLike, bins: Sequence[float]) -> np.ndarray:
  """Group index of each test prefix from its target's training count.

  Args:
    target_counts: training occurrences of each prefix's target item [N].
    bins: increasing upper edges e_0 < e_1 < ... (inclusive): group 0 is
      [0, e_0], group g is (e_{g-1}, e_g], the last group len(bins) is > e_last.

  Returns:
    int64 [N] in 0..len(bins); every prefix is in exactly one group.
  """
  edges = np.asarray(bins, dtype=np.float64)
  if edges.ndim != 1 or np.any(np.diff(edges) <= 0):
    raise ValueError(f"long-tail bins must be strictly increasing, got {edges.tolist()}")
  counts = np.asarray(target_counts, dtype=np.float64)
  return np.searchsorted(edges, counts, side="left").astype(np.int64)


def group_labels(bins: Sequence[float]) -> List[str]:
  edges = [f"{b:g}" for b in bins]
  labels = [f"[0,{edges[0]}]"] if edges else []
  labels += [f"({a},{b}]" for a, b in zip(edges[:-1], edges[1:])]
  labels.append(f">{edges[-1]}" if edges else "all")
  return labels


def _nice(value: float) -> float:
  """Rounds to 2 significant digits (17 -> 17, 137 -> 140, 1234 -> 1200)."""
  if value <= 0:
    return 0.0
  digits = int(math.floor(math.log10(value))) - 1
  return float(round(value, -digits)) if digits > 0 else float(round(value))


def auto_bins(target_counts: npt.ArrayLike, num_groups: int = 5) -> List[float]:
  """Edges that split the test prefixes into about equal groups by the
  training popularity of their target (quantiles, rounded to 2 digits)."""
  counts = np.asarray(target_counts, dtype=np.float64)
  if counts.size == 0:
    return []
  quantiles = np.quantile(counts, [i / num_groups for i in range(1, num_groups)])
  edges = sorted({_nice(q) for q in quantiles})
  return [e for e in edges if e < counts.max()] or [float(np.median(counts))]


def metrics_of_ranks(ranks: np.ndarray) -> Dict[str, float]:
  """Hits@20 and NDCG@20 of a group's ranks (NaN for an empty group)."""
  if len(ranks) == 0:
    return {m: float("nan") for m in METRICS}
  values = evaluation.metrics_from_ranks(ranks, ks=(20,), mrr_k=20)
  return {m: values[m] for m in METRICS}


def long_tail_analysis(runs: Sequence["Run"], bins: Optional[Sequence[float]] = None,
                       reference: str = "sasrec", head: str = "fused") -> Optional[dict]:
  """Per-group Hits@20/NDCG@20 of every model (mean over seeds), share of each
  group, and the improvement ratio model / reference - 1 per group.

  Args:
    runs: `analysis.runs.Run`s (model, run_dir, ranks_path, ranks()).
    bins: upper edges of the groups (`long_tail_groups`); None: quintiles.
    reference: model the improvements are relative to.
    head: score head whose ranks are grouped.
  """
  with_ranks = [r for r in runs if r.ranks_path]
  if not with_ranks:
    return None
  first = with_ranks[0].ranks()  # (not None: a run with a ranks file, as every run below)
  counts = first["target_train_counts"]  # type: ignore[index]
  bins = list(bins) if bins else auto_bins(counts)
  groups = long_tail_groups(counts, bins)
  num_groups = len(bins) + 1
  sizes = np.bincount(groups, minlength=num_groups)
  per_model = {}
  by_model: Dict[str, list] = {}
  for run in with_ranks:
    by_model.setdefault(run.model, []).append(run)
  for model, model_runs in by_model.items():
    per_seed = []
    for run in model_runs:
      ranks = run.ranks()
      if not np.array_equal(ranks["targets"], first["targets"]):  # type: ignore[index]
        raise ValueError(f"{run.run_dir}: test targets differ from {with_ranks[0].run_dir}; "
                         "were the runs made on the same data?")
      per_seed.append([metrics_of_ranks(ranks[head][groups == g]) for g in range(num_groups)])
    per_model[model] = {m: [float(np.mean([seed[g][m] for seed in per_seed]))
                            for g in range(num_groups)] for m in METRICS}
  improvement = {}
  if reference in per_model:
    for model, values in per_model.items():
      if model == reference:
        continue
      improvement[model] = {
          m: [(v / r - 1.0) if r > 0 else float("nan")
              for v, r in zip(values[m], per_model[reference][m])]
          for m in METRICS}
  return {"bins": [float(b) for b in bins], "labels": group_labels(bins),
          "prefixes": [int(s) for s in sizes],
          "share": [float(s) / max(int(sizes.sum()), 1) for s in sizes],
          "reference": reference if reference in per_model else None,
          "metrics": per_model, "improvement": improvement}
