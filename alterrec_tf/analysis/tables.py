"""The report's tables: mean ± std over seeds per model, score parts, cost, and
their Markdown (with the long-tail table and the code-commit count).

Each function takes finished runs (`analysis.runs.Run`: model, seed, results dict,
history list) and returns plain dicts of fractions; the `format_*` functions
turn them into Markdown (%).
"""

import math
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from alterrec_tf.analysis import long_tail
from alterrec_tf.models import names as model_names

if TYPE_CHECKING:
  from alterrec_tf.analysis.runs import Run

TABLE_METRICS = ("hits@10", "hits@20", "ndcg@10", "ndcg@20")
display_name = model_names.display_name


def by_model(runs: Sequence["Run"]) -> Dict[str, List["Run"]]:
  grouped: Dict[str, List["Run"]] = {}
  for run in runs:
    grouped.setdefault(run.model, []).append(run)
  return grouped


def mean_std(values: npt.ArrayLike) -> Dict[str, float]:
  """Mean, sample standard deviation (ddof=1; 0 for a single seed) and count."""
  values = np.asarray(values, dtype=np.float64)
  std = float(values.std(ddof=1)) if values.size > 1 else 0.0
  return {"mean": float(values.mean()), "std": std, "n": int(values.size)}


def summary_table(runs: Sequence["Run"], head: str = "fused",
                  metrics: Sequence[str] = TABLE_METRICS) -> Dict[str, dict]:
  """{model: {metric: {mean, std, values, seeds}}} of the test split at the
  selected epoch of each run (fractions)."""
  table = {}
  for model, model_runs in by_model(runs).items():
    row = {}
    for metric in metrics:
      pairs = [(r.seed, r.results["test"][head][metric]) for r in model_runs
               if metric in r.results.get("test", {}).get(head, {})]
      if pairs:
        row[metric] = dict(mean_std([v for _, v in pairs]), values=[v for _, v in pairs],
                           seeds=[s for s, _ in pairs])
    if row:
      table[model] = row
  return table


def parts_table(runs: Sequence["Run"],
                metrics: Sequence[str] = ("hits@20", "ndcg@20")) -> Dict[str, dict]:
  """{model: {head: {metric: {mean, std}}}} for models with more than one head."""
  parts = {}
  for model, model_runs in by_model(runs).items():
    heads = sorted(set.intersection(*(set(r.results.get("test", {})) for r in model_runs)),
                   key=lambda h: (h != "fused", h))
    if len(heads) < 2:
      continue
    parts[model] = {head: {m: mean_std([r.results["test"][head][m] for r in model_runs])
                           for m in metrics} for head in heads}
  return parts


def run_cost(run: "Run") -> Dict[str, float]:
  """Epochs, seconds and examples per second of one run (from history.json)."""
  history = run.history
  trained = [h for h in history if h.get("epoch", 0) > 0]
  train_seconds = [h["train_seconds"] for h in trained]
  eval_seconds = [h.get("eval_seconds", 0.0) for h in trained]
  if trained:
    # the first epoch also traces the graphs: the median is the steady cost
    seconds_per_epoch = float(np.median(train_seconds))
    examples = run.results.get("train_examples_per_epoch", 0)
    total = float(sum(train_seconds) + sum(eval_seconds))
    return {"epochs_run": len(trained), "best_epoch": run.results.get("best_epoch") or 0,
            "train_seconds_per_epoch": seconds_per_epoch,
            "train_examples_per_second": examples / max(seconds_per_epoch, 1e-9),
            "eval_seconds_per_epoch": float(np.median(eval_seconds)),
            "fit_seconds": 0.0, "total_seconds": total}
  fit = float(history[0]["train_seconds"]) if history else 0.0
  wall = float(run.results.get("wall_seconds_this_process", 0.0))
  return {"epochs_run": 0, "best_epoch": 0, "train_seconds_per_epoch": 0.0,
          "train_examples_per_second": 0.0, "eval_seconds_per_epoch": wall,
          "fit_seconds": fit, "total_seconds": fit + wall}


def cost_table(runs: Sequence["Run"]) -> Dict[str, dict]:
  """{model: {quantity: mean over seeds}} of `run_cost`."""
  table = {}
  for model, model_runs in by_model(runs).items():
    costs = [run_cost(r) for r in model_runs]
    table[model] = {key: float(np.mean([c[key] for c in costs])) for key in costs[0]}
    table[model]["total_seconds_all_seeds"] = float(sum(c["total_seconds"] for c in costs))
  return table


def _pct(value: float) -> str:
  return f"{100.0 * value:.2f}"


def _pct_mean_std(cell: Mapping[str, Any]) -> str:
  """'mean ± std' in %; the mean alone for one seed (no spread to show)."""
  if cell.get("n", 2) < 2:
    return _pct(cell["mean"])
  return f"{_pct(cell['mean'])} ± {_pct(cell['std'])}"


def format_results_markdown(table: Mapping[str, Mapping[str, dict]],
                            metrics: Sequence[str] = TABLE_METRICS) -> str:
  """Table 1 style: mean +- std (%) over seeds (the mean alone for one seed), best
  mean of each column in bold."""
  best = {m: max((row[m]["mean"] for row in table.values() if m in row), default=None)
          for m in metrics}
  names = {"hits@10": "Hits@10", "hits@20": "Hits@20", "ndcg@10": "NDCG@10",
           "ndcg@20": "NDCG@20", "mrr@20": "MRR@20"}
  lines = ["| Model | seeds | " + " | ".join(names.get(m, m) for m in metrics) + " |",
           "|---|---:|" + "---:|" * len(metrics)]
  for model in sorted(table, key=model_names.order_key):
    row = table[model]
    cells = []
    for metric in metrics:
      if metric not in row:
        cells.append("")
        continue
      text = _pct_mean_std(row[metric])
      column_best = best[metric]
      if column_best is not None and row[metric]["mean"] >= column_best - 1e-12:
        text = f"**{text}**"
      cells.append(text)
    seeds = len(next(iter(row.values()))["values"])
    lines.append(f"| {display_name(model)} | {seeds} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def best_floor_line(table: Mapping[str, Mapping[str, dict]],
                    metrics: Sequence[str] = TABLE_METRICS) -> str:
  """Which count floor is best: the floor with the highest mean test Hits@20, its
  figures, and which other models it stays above on Hits@20 ('' without floors)."""
  floors = [m for m in table if model_names.split_variant(m)[0] in model_names.FLOORS
            and "hits@20" in table[m]]
  if not floors:
    return ""
  best = max(floors, key=lambda m: (table[m]["hits@20"]["mean"], m))
  figures = " / ".join(_pct(table[best][m]["mean"]) for m in metrics if m in table[best])
  named = " / ".join(m.replace("hits", "Hits").replace("ndcg", "NDCG") for m in metrics
                     if m in table[best])
  below = sorted((m for m in table if m not in floors and "hits@20" in table[m]
                  and table[m]["hits@20"]["mean"] < table[best]["hits@20"]["mean"]),
                 key=model_names.order_key)
  line = f"Best count floor (test Hits@20): {display_name(best)}, {named} {figures}."
  if below:
    line += f" Below it on Hits@20: {', '.join(display_name(m) for m in below)}."
  return line


def format_parts_markdown(parts: Mapping[str, Mapping[str, dict]]) -> str:
  lines = ["| Model | head | Hits@20 | NDCG@20 |", "|---|---|---:|---:|"]
  for model in sorted(parts, key=model_names.order_key):
    for head, values in parts[model].items():
      lines.append(f"| {display_name(model)} | {head} | "
                   f"{_pct_mean_std(values['hits@20'])} | {_pct_mean_std(values['ndcg@20'])} |")
  return "\n".join(lines)


def format_cost_markdown(costs: Mapping[str, Mapping[str, float]]) -> str:
  lines = ["| Model | epochs run | best epoch | train s/epoch | train prefixes/s | "
           "eval s/epoch | fit s (floors) | compute s, all seeds |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for model in sorted(costs, key=model_names.order_key):
    c = costs[model]
    if c["epochs_run"]:  # trained by gradient descent
      training = (f"{c['epochs_run']:.1f} | {c['best_epoch']:.1f} | "
                  f"{c['train_seconds_per_epoch']:.1f} | {c['train_examples_per_second']:.0f}")
      fit = "–"
    else:  # a count-based floor: no epochs, one pass over the training sessions
      training, fit = "– | – | – | –", f"{c['fit_seconds']:.1f}"
    lines.append(f"| {display_name(model)} | {training} | {c['eval_seconds_per_epoch']:.1f} | "
                 f"{fit} | {c['total_seconds_all_seeds']:.0f} |")
  return "\n".join(lines)


def format_long_tail_markdown(analysis: dict) -> str:
  labels = analysis["labels"]
  lines = ["| Model | metric | " + " | ".join(labels) + " |",
           "|---|---|" + "---:|" * len(labels),
           "| share of test prefixes | | " + " | ".join(_pct(s) for s in analysis["share"]) + " |"]
  for model in sorted(analysis["metrics"], key=model_names.order_key):
    for metric in long_tail.METRICS:
      cells = [_pct(v) for v in analysis["metrics"][model][metric]]
      if model in analysis["improvement"]:
        cells = [f"{c} ({100.0 * i:+.0f}%)" if not math.isnan(i) else c
                 for c, i in zip(cells, analysis["improvement"][model][metric])]
      lines.append(f"| {display_name(model)} | {metric} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def code_commits(runs: Sequence["Run"]) -> Dict[str, int]:
  """How many runs were trained at each commit (results.json's code_version,
  `runs.code_version`): a grid resumed across machines may span commits."""
  counts: Dict[str, int] = {}
  for run in runs:
    version = run.results.get("code_version") or {}
    commit = version.get("git_commit")
    name = ("not recorded" if commit is None
            else commit[:12] + (" with local changes" if version.get("modified") else ""))
    counts[name] = counts.get(name, 0) + 1
  return dict(sorted(counts.items()))
