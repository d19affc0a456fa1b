"""The reproduction report of an experiments grid: tables, figures and one JSON
(`write_report`; the command is `alterrec_tf.report`, the grid writes one too).

Reads runs_dir/<model>/seed<k>/{results.json, history.json, test_ranks.npz}
(`analysis.runs.load_runs`) and writes README.md, results.json and the figures
into report_dir (see `alterrec_tf.report`).
"""

import importlib.util
import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from alterrec_tf.analysis import long_tail, tables
from alterrec_tf.analysis.runs import Run, load_runs
from alterrec_tf.models import names as model_names


# --- figures --------------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, np.generic):
    return _json_safe(value.item())
  return value


def protocol_lines(runs: Sequence[Run]) -> List[str]:
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


def write_report(runs_dir: str, report_dir: str, models: Optional[Sequence[str]] = None,
                 seeds: Optional[Sequence[int]] = None,
                 bins: Optional[Sequence[float]] = None,
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


def _draw_figures(grouped: Mapping[str, Sequence[Run]], analysis: Optional[dict],
                  report_dir: str, dataset: str) -> Dict[str, str]:
  """The paper's figures 3, 5, 6 as PNGs in report_dir: {key: file name} of those
  drawn. They need matplotlib (the `report` extra); the tables never do."""
  if importlib.util.find_spec("matplotlib") is None:
    return {}
  from alterrec_tf.analysis import plots as report_plots
  figures = {}
  data: Any  # (each figure's function takes its own data)
  for key, name, draw, data in (("fig3", "fig3_nfrec.png", report_plots.plot_nfrec, grouped),
                                ("fig5", "fig5_alterrec.png", report_plots.plot_alterrec,
                                 grouped),
                                ("fig6", "fig6_long_tail.png", report_plots.plot_long_tail,
                                 analysis)):
    if draw(data, os.path.join(report_dir, name), dataset):
      figures[key] = name
  return figures


def _report_markdown(output: dict, runs: Sequence[Run], dataset: str, hashes: Sequence[str],
                     meta: Optional[Mapping[str, Any]]) -> List[str]:
  """The lines of the report's README.md."""
  lines = [f"# Reproduction report{': ' + dataset if dataset else ''}", ""]
  if len(hashes) > 1:
    lines += [f"**Warning:** runs come from {len(hashes)} different datasets "
              f"(content hashes {', '.join(h[:12] for h in hashes)}).", ""]
  lines += ["Test metrics (%) at the epoch of best validation Hits@20 of the fused score; "
            "mean ± sample std over seeds (the mean alone where one seed has finished); "
            "best mean of each column in bold.", "",
            tables.format_results_markdown(output["table"]), ""]
  floor_line = tables.best_floor_line(output["table"])
  if floor_line:
    lines += [floor_line, ""]
  lines += protocol_lines(runs)
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
