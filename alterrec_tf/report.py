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
from typing import Dict, List, Optional, Sequence

import numpy as np
from absl import flags

from alterrec_tf import cli
from alterrec_tf import runs as alter_runs
from alterrec_tf.analysis import long_tail, tables
from alterrec_tf.models import names as model_names


# --- reading runs -------------------------------------------------------------------
class Run:
  """One finished run: model, seed, folder, results, history, ranks file."""

  def __init__(self, model: str, seed: int, run_dir: str):
    self.model, self.seed, self.run_dir = model, seed, run_dir
    self.results = alter_runs.read_json(os.path.join(run_dir, alter_runs.RESULTS_FILE))
    history_path = os.path.join(run_dir, alter_runs.HISTORY_FILE)
    self.history = []
    if os.path.exists(history_path):
      self.history = alter_runs.read_json(history_path)
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
  kept = sorted({model_names.display_name(r.model) for r in runs
                 if r.results.get("seen_items") == "keep"})
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
  commits = tables.code_commits(runs)
  analysis = long_tail.long_tail_analysis(runs, bins, reference)
  output = {
      "meta": dict(meta or {}, dataset=dataset, data_content_hashes=hashes,
                   code_commits=commits,
                   runs_dir=os.path.abspath(runs_dir),
                   selection="test metrics at the epoch of best validation Hits@20 "
                             "(fused score); mean and sample std (ddof=1) over seeds"),
      "table": tables.summary_table(runs), "parts": tables.parts_table(runs),
      "cost": tables.cost_table(runs),
      "long_tail": analysis,
      "figures": _draw_figures(tables.by_model(runs), analysis, report_dir, dataset),
      "runs": [{"model": r.model, "seed": r.seed, "run_dir": os.path.abspath(r.run_dir),
                "best_epoch": r.results.get("best_epoch"),
                "epochs_run": r.results.get("epochs_run"),
                "test": r.results.get("test"), "valid": r.results.get("valid"),
                "cost": tables.run_cost(r)} for r in runs],
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


def _report_markdown(output: dict, runs, dataset: str, hashes, meta) -> List[str]:
  """The lines of the report's README.md."""
  lines = [f"# Reproduction report{': ' + dataset if dataset else ''}", ""]
  if len(hashes) > 1:
    lines += [f"**Warning:** runs come from {len(hashes)} different datasets "
              f"(content hashes {', '.join(h[:12] for h in hashes)}).", ""]
  lines += ["Test metrics (%) at the epoch of best validation Hits@20 of the fused score; "
            "mean ± sample std over seeds (the mean alone where one seed has finished); "
            "best mean of each column in bold.", "",
            tables.format_results_markdown(output["table"]), ""] + protocol_lines(runs)
  lines += ["Code: " + "; ".join(f"{commit} ({count} run{'s' * (count != 1)})"
                                 for commit, count in output["meta"]["code_commits"].items())
            + ".", ""]
  if output["parts"]:
    lines += ["## Score parts", "",
              "Test metrics (%) of each head: `fused` is the model's score, `id` / `text` "
              "its parts (NFRec: Eq. 14; AlterRec: the two networks of Eq. 12).", "",
              tables.format_parts_markdown(output["parts"]), ""]
  lines += ["## Cost", "",
            "Per run, mean over seeds: median seconds per training epoch (the first epoch "
            "also builds the graphs), training prefixes per second, evaluation seconds "
            "(valid + test) per epoch; floors: seconds to count the training sessions. "
            "Last column: training + evaluation seconds summed over all seeds.", "",
            tables.format_cost_markdown(output["cost"]), ""]
  analysis = output["long_tail"]
  if analysis:
    reference = analysis["reference"]
    lines += ["## Long tail", "",
              "Test prefixes grouped by the number of occurrences of their target item in "
              "the training sessions; Hits@20 / NDCG@20 (%) per group (mean over seeds)"
              + (f", in brackets the change relative to {model_names.display_name(reference)}"
                 if reference else "") + ".", "",
              tables.format_long_tail_markdown(analysis), ""]
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


def define_flags() -> None:
  """The command's flags, defined only when this module runs as a command:
  `experiments`, which imports it, defines its own --runs_dir, --report_dir and
  long-tail flags."""
  flags.DEFINE_string("runs_dir", "runs/experiments",
                      "Grid folder (runs_dir/<model>/seed<k>/ of `experiments`, or a "
                      "grid archive such as benchmarks/grid_runs/online_retail).")
  flags.DEFINE_string("report_dir", "report", "Folder the report is written to.")
  flags.DEFINE_list("models", [], "Grid entries to report, in order; empty: all found.")
  flags.DEFINE_list("seeds", [], "Seeds to report; empty: all found.")
  flags.DEFINE_list("long_tail_bins", [],
                    "Upper edges (inclusive) of the target-popularity groups; empty: "
                    "quintiles of the test targets.")
  flags.DEFINE_string("long_tail_reference", "sasrec",
                      "Model whose per-group metrics the long-tail plot divides by.")


def main(argv):
  del argv
  values = flags.FLAGS
  try:
    seeds = [int(seed) for seed in values.seeds]
    bins = [float(edge) for edge in values.long_tail_bins]
  except ValueError as error:
    raise cli.CommandError(f"--seeds and --long_tail_bins take numbers: {error}") from None
  unknown = [m for m in values.models if model_names.split_variant(m)[0] not in model_names.ALL]
  if unknown:
    raise cli.CommandError(f"unknown --models {unknown}; choose from {list(model_names.ALL)} "
                           f"(each optionally with {model_names.KEEP_SEEN_SUFFIX})")
  if not os.path.isdir(values.runs_dir):
    raise cli.CommandError(f"--runs_dir={values.runs_dir} is not a folder")
  if not load_runs(values.runs_dir, values.models or None, seeds or None):
    raise cli.CommandError(f"no finished run (results.json) under --runs_dir="
                           f"{values.runs_dir} for these --models / --seeds")
  cli.check_writable(values.report_dir, "--report_dir")
  output = write_report(values.runs_dir, values.report_dir, values.models or None,
                        seeds or None, bins or None, values.long_tail_reference)
  print(tables.format_results_markdown(output["table"]))
  print(f"report: {os.path.join(values.report_dir, 'README.md')}")


def run():
  define_flags()
  cli.run(main, verify_data=False)


if __name__ == "__main__":
  run()
