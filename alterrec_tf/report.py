"""Reproduction report of an experiments grid: tables, plots and one JSON.

Reads runs_dir/<model>/seed<k>/{results.json, history.json, test_ranks.npz}
(written by `alterrec_tf.experiments`) and writes into report_dir:

  README.md         Table 1-style results (mean +- std over seeds, %, best in
                    bold), score parts (fused / ID / text heads), cost per
                    model, long-tail table, and the figures
  results.json      every number of those tables (fractions, not %), per seed too
  fig3_nfrec.png    NFRec vs its ID and text parts per epoch: test Hits@20 and
                    training loss (the paper's Figure 3)
  fig5_alterrec.png AlterRec vs its ID and text parts per epoch: test Hits@20,
                    with the training phase as background (Figure 5)
  fig6_long_tail.png improvement of each model's Hits@20 and NDCG@20 over the
                    reference model (SASRec) per group of test prefixes, grouped
                    by the training popularity of the target item; bars = share
                    of the test prefixes in each group (Figure 6)

Re-draw a report without training: python -m alterrec_tf.report
--runs_dir=runs/experiments --report_dir=report
"""

import importlib.util
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from alterrec_tf import runs as alter_runs
from alterrec_tf.analysis import long_tail
from alterrec_tf.models import names as model_names

TABLE_METRICS = ("hits@10", "hits@20", "ndcg@10", "ndcg@20")
display_name = model_names.display_name


# --- reading runs -------------------------------------------------------------------
class Run:
  """One finished run: model, seed, folder, results, history, ranks file."""

  def __init__(self, model: str, seed: int, run_dir: str):
    self.model, self.seed, self.run_dir = model, seed, run_dir
    with open(os.path.join(run_dir, alter_runs.RESULTS_FILE), encoding="utf-8") as f:
      self.results = json.load(f)
    history_path = os.path.join(run_dir, alter_runs.HISTORY_FILE)
    self.history = []
    if os.path.exists(history_path):
      with open(history_path, encoding="utf-8") as f:
        self.history = json.load(f)
    ranks_path = os.path.join(run_dir, alter_runs.TEST_RANKS_FILE)
    self.ranks_path = ranks_path if os.path.exists(ranks_path) else None

  def ranks(self) -> Optional[Dict[str, np.ndarray]]:
    if self.ranks_path is None:
      return None
    with np.load(self.ranks_path) as data:
      return {key: data[key] for key in data.files}


def load_runs(runs_dir: str, models: Optional[Sequence[str]] = None,
              seeds: Optional[Sequence[int]] = None) -> List[Run]:
  """Every finished run (results.json present) under runs_dir, in model order."""
  if models is None:
    models = sorted((m for m in os.listdir(runs_dir)  # (not .claims of a running grid)
                     if os.path.isdir(os.path.join(runs_dir, m)) and not m.startswith(".")),
                    key=model_names.order_key)
  runs = []
  for model in models:
    folder = os.path.join(runs_dir, model)
    if not os.path.isdir(folder):
      continue
    found = sorted(int(name[4:]) for name in os.listdir(folder)
                   if name.startswith("seed") and name[4:].isdigit())
    for seed in found:
      if seeds is not None and seed not in seeds:
        continue
      run_dir = alter_runs.run_dir_of(runs_dir, model, seed)
      if os.path.exists(os.path.join(run_dir, alter_runs.RESULTS_FILE)):
        runs.append(Run(model, seed, run_dir))
  return runs


def _by_model(runs) -> Dict[str, List[Run]]:
  grouped: Dict[str, List[Run]] = {}
  for run in runs:
    grouped.setdefault(run.model, []).append(run)
  return grouped


# --- tables -------------------------------------------------------------------------
def mean_std(values) -> Dict[str, float]:
  """Mean and sample standard deviation (ddof=1; 0 for a single seed)."""
  values = np.asarray(values, dtype=np.float64)
  std = float(values.std(ddof=1)) if values.size > 1 else 0.0
  return {"mean": float(values.mean()), "std": std}


def summary_table(runs, head="fused", metrics=TABLE_METRICS) -> Dict[str, dict]:
  """{model: {metric: {mean, std, values, seeds}}} of the test split at the
  selected epoch of each run (fractions)."""
  table = {}
  for model, model_runs in _by_model(runs).items():
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


def parts_table(runs, metrics=("hits@20", "ndcg@20")) -> Dict[str, dict]:
  """{model: {head: {metric: {mean, std}}}} for models with more than one head."""
  parts = {}
  for model, model_runs in _by_model(runs).items():
    heads = sorted(set.intersection(*(set(r.results.get("test", {})) for r in model_runs)),
                   key=lambda h: (h != "fused", h))
    if len(heads) < 2:
      continue
    parts[model] = {head: {m: mean_std([r.results["test"][head][m] for r in model_runs])
                           for m in metrics} for head in heads}
  return parts


def run_cost(run: Run) -> Dict[str, float]:
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


def cost_table(runs) -> Dict[str, dict]:
  """{model: {quantity: mean over seeds}} of `run_cost`."""
  table = {}
  for model, model_runs in _by_model(runs).items():
    costs = [run_cost(r) for r in model_runs]
    table[model] = {key: float(np.mean([c[key] for c in costs])) for key in costs[0]}
    table[model]["total_seconds_all_seeds"] = float(sum(c["total_seconds"] for c in costs))
  return table


def _pct(value):
  return f"{100.0 * value:.2f}"


def format_results_markdown(table, metrics=TABLE_METRICS) -> str:
  """Table 1 style: mean +- std (%) over seeds, best mean of each column in bold."""
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
      text = f"{_pct(row[metric]['mean'])} ± {_pct(row[metric]['std'])}"
      column_best = best[metric]
      if column_best is not None and row[metric]["mean"] >= column_best - 1e-12:
        text = f"**{text}**"
      cells.append(text)
    seeds = len(next(iter(row.values()))["values"])
    lines.append(f"| {display_name(model)} | {seeds} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def format_parts_markdown(parts) -> str:
  lines = ["| Model | head | Hits@20 | NDCG@20 |", "|---|---|---:|---:|"]
  for model in sorted(parts, key=model_names.order_key):
    for head, values in parts[model].items():
      lines.append(f"| {display_name(model)} | {head} | "
                   f"{_pct(values['hits@20']['mean'])} ± {_pct(values['hits@20']['std'])} | "
                   f"{_pct(values['ndcg@20']['mean'])} ± {_pct(values['ndcg@20']['std'])} |")
  return "\n".join(lines)


def format_cost_markdown(costs) -> str:
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


# --- long tail ------------------------------------------------------------------------
def format_long_tail_markdown(analysis) -> str:
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


# --- figures --------------------------------------------------------------------------------
def _json_safe(value):
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, np.generic):
    return _json_safe(value.item())
  return value


def protocol_lines(runs) -> List[str]:
  """How the runs were scored (from their results.json): test protocol and
  treatment of the items already in the session."""
  protocols = sorted({r.results.get("test_protocol", "windowed (older runs)") for r in runs})
  kept = sorted({display_name(r.model) for r in runs if r.results.get("seen_items") == "keep"})
  excluded = any(r.results.get("seen_items") == "exclude" for r in runs)
  lines = [f"Test protocol: {'; '.join(protocols)}."]
  if excluded:
    lines.append("Items already in the session are scored out (never recommended, never "
                 "negatives) for every model" + (
                     f" except {', '.join(kept)}" if kept else "") + ".")
  elif kept:
    lines.append("Items already in the session are ranked like any item (--seen_items=keep).")
  return lines + [""]


_CAPTIONS = {"fig3": "Figure 3: NFRec and its ID / text parts",
             "fig5": "Figure 5: AlterRec and its ID / text networks",
             "fig6": "Figure 6: long-tail items"}


def write_report(runs_dir: str, report_dir: str, models=None, seeds=None, bins=None,
                 reference: str = "sasrec", meta: Optional[dict] = None) -> dict:
  """Writes README.md, results.json and the figures; returns the JSON dict."""
  runs = load_runs(runs_dir, models, seeds)
  if not runs:
    raise FileNotFoundError(f"no finished runs (results.json) under {runs_dir}")
  os.makedirs(report_dir, exist_ok=True)
  dataset = runs[0].results.get("dataset") or ""
  hashes = sorted({r.results.get("data_content_hash") for r in runs} - {None})
  commits = code_commits(runs)
  analysis = long_tail.long_tail_analysis(runs, bins, reference)
  output = {
      "meta": dict(meta or {}, dataset=dataset, data_content_hashes=hashes,
                   code_commits=commits,
                   runs_dir=os.path.abspath(runs_dir),
                   selection="test metrics at the epoch of best validation Hits@20 "
                             "(fused score); mean and sample std (ddof=1) over seeds"),
      "table": summary_table(runs), "parts": parts_table(runs), "cost": cost_table(runs),
      "long_tail": analysis,
      "figures": _draw_figures(_by_model(runs), analysis, report_dir, dataset),
      "runs": [{"model": r.model, "seed": r.seed, "run_dir": os.path.abspath(r.run_dir),
                "best_epoch": r.results.get("best_epoch"),
                "epochs_run": r.results.get("epochs_run"),
                "test": r.results.get("test"), "valid": r.results.get("valid"),
                "cost": run_cost(r)} for r in runs],
  }
  with open(os.path.join(report_dir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(_json_safe(output), f, indent=2, sort_keys=True)
  with open(os.path.join(report_dir, "README.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(_report_markdown(output, runs, dataset, hashes, meta)))
  return output


def _draw_figures(grouped, analysis, report_dir: str, dataset: str) -> dict:
  """The paper's figures 3, 5, 6 as PNGs in report_dir: {key: file name} of those
  drawn. They need matplotlib (the `report` extra); the tables never do."""
  if importlib.util.find_spec("matplotlib") is None:
    return {}
  from alterrec_tf.analysis import plots as report_plots  # pylint: disable=g-import-not-at-top
  figures = {}
  for key, name, draw, data in (("fig3", "fig3_nfrec.png", report_plots.plot_nfrec, grouped),
                                ("fig5", "fig5_alterrec.png", report_plots.plot_alterrec,
                                 grouped),
                                ("fig6", "fig6_long_tail.png", report_plots.plot_long_tail,
                                 analysis)):
    if draw(data, os.path.join(report_dir, name), dataset):
      figures[key] = name
  return figures


def code_commits(runs) -> Dict[str, int]:
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


def _report_markdown(output: dict, runs, dataset: str, hashes, meta) -> List[str]:
  """The lines of the report's README.md."""
  lines = [f"# Reproduction report{': ' + dataset if dataset else ''}", ""]
  if len(hashes) > 1:
    lines += [f"**Warning:** runs come from {len(hashes)} different datasets "
              f"(content hashes {', '.join(h[:12] for h in hashes)}).", ""]
  lines += ["Test metrics (%) at the epoch of best validation Hits@20 of the fused score; "
            "mean ± sample std over seeds; best mean of each column in bold.", "",
            format_results_markdown(output["table"]), ""] + protocol_lines(runs)
  lines += ["Code: " + "; ".join(f"{commit} ({count} run{'s' * (count != 1)})"
                                 for commit, count in output["meta"]["code_commits"].items())
            + ".", ""]
  if output["parts"]:
    lines += ["## Score parts", "",
              "Test metrics (%) of each head: `fused` is the model's score, `id` / `text` "
              "its parts (NFRec: Eq. 14; AlterRec: the two networks of Eq. 12).", "",
              format_parts_markdown(output["parts"]), ""]
  lines += ["## Cost", "",
            "Per run, mean over seeds: median seconds per training epoch (the first epoch "
            "also builds the graphs), training prefixes per second, evaluation seconds "
            "(valid + test) per epoch; floors: seconds to count the training sessions. "
            "Last column: training + evaluation seconds summed over all seeds.", "",
            format_cost_markdown(output["cost"]), ""]
  analysis = output["long_tail"]
  if analysis:
    lines += ["## Long tail", "",
              "Test prefixes grouped by the number of occurrences of their target item in "
              "the training sessions; Hits@20 / NDCG@20 (%) per group (mean over seeds)"
              + (f", in brackets the change relative to {display_name(analysis['reference'])}"
                 if analysis["reference"] else "") + ".", "",
              format_long_tail_markdown(analysis), ""]
  if output["figures"]:
    lines += ["## Figures", ""]
    for key, name in output["figures"].items():
      lines += [f"![{_CAPTIONS[key]}]({name})", ""]
  elif importlib.util.find_spec("matplotlib") is None:
    lines += ["## Figures", "", "Not drawn: matplotlib is not installed "
              "(`pip install 'alterrec_tf[report]'`).", ""]
  if meta:
    lines += ["## Run", ""] + [f"- {k}: `{v}`" for k, v in meta.items()] + [""]
  return lines


def main(argv=None):
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs_dir", default="runs/experiments")
  parser.add_argument("--report_dir", default="report")
  parser.add_argument("--models", default="", help="comma-separated; default: all found")
  parser.add_argument("--seeds", default="", help="comma-separated; default: all found")
  parser.add_argument("--long_tail_bins", default="",
                      help="comma-separated upper edges; default: quintiles of the data")
  parser.add_argument("--long_tail_reference", default="sasrec")
  args = parser.parse_args(argv)
  split = lambda s: [x for x in s.split(",") if x]  # pylint: disable=unnecessary-lambda-assignment
  output = write_report(args.runs_dir, args.report_dir, split(args.models) or None,
                        [int(s) for s in split(args.seeds)] or None,
                        [float(b) for b in split(args.long_tail_bins)] or None,
                        args.long_tail_reference)
  print(format_results_markdown(output["table"]))
  print(f"report: {os.path.join(args.report_dir, 'README.md')}")


if __name__ == "__main__":
  main(sys.argv[1:])
