"""The mechanism study of issue 32: the partner's hard negatives (AlterRec)
against as many uniform negatives (AlterRec_random) as the ratio of negatives to
catalogue changes, and with each lever.

  python benchmarks/mechanism_study.py --flagfile=configs/amazon_office.flags \
      --data_dir=data/amazon_office --study_dir=benchmarks/study_runs/amazon_office \
      --cells=neg800,neg50,full,single --seeds=0,1,2 --workers=2 \
      --text_temperature=10 --m_max=20

Each cell is one `alterrec_tf.experiments` grid (AlterRec and AlterRec_random, or
the cell's models, x seeds) in study_dir/<cell>/, trained with the flagfile's
settings plus the cell's flags. Seeds go in the outer loop (every cell at seed 0
first), and `experiments` skips finished runs and resumes killed ones, so
re-running the command after an interruption finishes the study. Run it from a
checkout you do not edit meanwhile (autograph re-reads source files).

`--summarize` only reads the runs: per cell and model, the test metrics (mean
and sample standard deviation over the seeds present), the best epoch, the
seconds, and each network's validation Hits@20 after every epoch (the curves by
phase), as a Markdown table (stdout) and study_dir/summary.json.

The equal-budget tuned comparison: `--tune_dir=<studies of alterrec_tf.tune>
--cells=tuned_alterrec,tuned_alterrec_random,...` trains each model with its own
best.flags (chosen on validation only) over the flagfile's settings.
"""

import json
import os
import statistics
import subprocess
import sys
from typing import Dict, List

from absl import flags

# Cell -> (models, extra training flags). k1 = 6 everywhere (the flagfile's),
# so k2 = 6 + negatives.
CELLS: Dict[str, tuple] = {
    # The flagfile as it is (its own k2, temperature and schedule).
    "flagfile": (("alterrec", "alterrec_random"), []),
    "neg800": (("alterrec", "alterrec_random"), ["--k2=806"]),
    "neg200": (("alterrec", "alterrec_random"), ["--k2=206"]),
    "neg50": (("alterrec", "alterrec_random"), ["--k2=56"]),
    "full": (("alterrec", "alterrec_random"), ["--k2=806", "--softmax=full"]),
    "neg800_t1": (("alterrec", "alterrec_random"), ["--k2=806", "--text_temperature=1"]),
    "neg800_pure": (("alterrec",), ["--k2=806", "--random_negative_share=0"]),
    "neg800_anneal": (("alterrec",), ["--k2=806", "--random_share_decay_epochs=8"]),
    "neg800_gate": (("alterrec",), ["--k2=806", "--hard_negative_gate=0.9"]),
    "neg800_guard": (("alterrec",), ["--k2=806", "--false_negative_cosine=0.8"]),
    "neg800_cooc": (("alterrec",), ["--k2=806", "--false_negative_cooccurrence=20"]),
    # Each network kept at its own best epoch (alpha chosen on validation with them).
    "neg800_each": (("alterrec",), ["--k2=806", "--tower_selection=each"]),
    # AlterRec_aug (Eq. 10-11): the partner's top-p as extra positives, weight beta.
    "neg800_aug": (("alterrec_aug",), ["--k2=806", "--beta=0.5"]),
    "neg800_aug_beta0.1": (("alterrec_aug",), ["--k2=806", "--beta=0.1"]),
    # Online Retail, 50 negatives: the ID network falls in its first hard epoch; are the
    # partner's negatives false ones (close in text, or bought together)?
    "neg50_guard": (("alterrec",), ["--k2=56", "--false_negative_cosine=0.8"]),
    "neg50_cooc": (("alterrec",), ["--k2=56", "--false_negative_cooccurrence=20"]),
    # ... or is it the top of the partner's ranking? The band moved down: ranks 20-70.
    "neg50_band20": (("alterrec",), ["--k1=20", "--k2=70"]),
    "single": (("id_only", "text_only"), []),
    "baselines": (("sasrec", "fdsa"), []),
}
METRICS = ("hits@10", "hits@20", "ndcg@10", "ndcg@20")
# The equal-budget tuned comparison: with --tune_dir, a cell "tuned_<model>" per
# study of `alterrec_tf.tune`, trained with that model's best.flags (chosen on
# validation) over the flagfile's settings.
TUNED_PREFIX = "tuned_"

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The script's own flags (defined when it runs, so importing it defines none)."""
  flags.DEFINE_string("study_dir", "benchmarks/study_runs/study", "Folder of the study's runs.")
  flags.DEFINE_list("cells", ["neg800", "neg200", "neg50", "full"],
                    f"Cells to run, of {', '.join(CELLS)}.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
  flags.DEFINE_integer("workers", 2, "Worker processes of each cell's grid.")
  flags.DEFINE_boolean("summarize", False, "Only summarize the runs in study_dir.")
  flags.DEFINE_string("tune_dir", "", "Studies of `alterrec_tf.tune`: adds a cell "
                      "tuned_<model> per study, trained with its best.flags.")


def add_tuned_cells(tune_dir: str) -> List[str]:
  """Adds to `CELLS` a cell "tuned_<model>" for every study in tune_dir with a
  best.flags (its flags but --model); returns the new cells' names."""
  added = []
  for model in sorted(os.listdir(tune_dir)):
    best_flags = os.path.join(tune_dir, model, "best.flags")
    if not os.path.isfile(best_flags):
      continue
    with open(best_flags, encoding="utf-8") as f:
      extra = [line.strip() for line in f
               if line.strip() and not line.startswith("--model=")]
    CELLS[TUNED_PREFIX + model] = ((model,), extra)
    added.append(TUNED_PREFIX + model)
  return added


def _cell_command(cell: str, seed: str, passthrough: List[str]) -> List[str]:
  models, extra = CELLS[cell]
  root = os.path.join(FLAGS.study_dir, cell)
  return ([sys.executable, "-m", "alterrec_tf.experiments", *passthrough,
           f"--models={','.join(models)}", f"--seeds={seed}", f"--runs_dir={root}",
           f"--report_dir={os.path.join(root, 'report')}", f"--workers={FLAGS.workers}",
           "--verbose=0", *extra])


def _runs(cell: str) -> Dict[str, List[dict]]:
  """{model: [{seed, results, history}]} of one cell's finished runs."""
  found: Dict[str, List[dict]] = {}
  root = os.path.join(FLAGS.study_dir, cell)
  for model in CELLS[cell][0]:
    model_dir = os.path.join(root, model)
    if not os.path.isdir(model_dir):
      continue
    for seed_dir in sorted(os.listdir(model_dir)):
      results_file = os.path.join(model_dir, seed_dir, "results.json")
      if not os.path.isfile(results_file):
        continue
      with open(results_file, encoding="utf-8") as f:
        results = json.load(f)
      with open(os.path.join(model_dir, seed_dir, "history.json"), encoding="utf-8") as f:
        history = json.load(f)
      found.setdefault(model, []).append({"seed": seed_dir, "results": results,
                                          "history": history})
  return found


def _mean_sd(values: List[float]) -> str:
  if len(values) == 1:
    return f"{100 * values[0]:.2f}"
  return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def _per_row(ranks, metric: str):
  """Per-prefix value of `metric` from 1-based ranks [N]."""
  import numpy as np
  name, k = metric.split("@")
  hit = ranks <= int(k)
  if name == "hits":
    return hit.astype(np.float64)
  return np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)


def paired_difference(cell: str, model: str, reference: str, metric: str,
                      resamples: int = 2000, reference_cell: str = "") -> dict:
  """`model` - `reference` on the test prefixes, each prefix's metric averaged
  over the seeds both have, with a 95% interval from resampling prefixes
  (a paired bootstrap; seed 0 of the resampling). The reference is in
  `reference_cell` when given, else in `cell`."""
  import numpy as np
  folders = {model: os.path.join(FLAGS.study_dir, cell, model),
             reference: os.path.join(FLAGS.study_dir, reference_cell or cell, reference)}
  seeds = sorted(seed for seed in os.listdir(folders[model])
                 if all(os.path.isfile(os.path.join(folder, seed, "test_ranks.npz"))
                        for folder in folders.values()))
  rows = []
  for name in (model, reference):
    values = [_per_row(np.load(os.path.join(folders[name], seed, "test_ranks.npz"))["fused"],
                       metric) for seed in seeds]
    rows.append(np.mean(values, axis=0))
  difference = rows[0] - rows[1]
  rng = np.random.default_rng(0)
  draws = rng.integers(0, len(difference), size=(resamples, len(difference)))
  means = difference[draws].mean(axis=1)
  low, high = np.percentile(means, [2.5, 97.5])
  return {"seeds": len(seeds), "difference": 100 * float(difference.mean()),
          "low": 100 * float(low), "high": 100 * float(high)}


def first_hard_epochs(history: List[dict]) -> Dict[str, int]:
  """0-based history indices of the first hard epoch of the ID network
  (phase 0) and of the text network (phase 1); missing where none ran."""
  found: Dict[str, int] = {}
  for index, epoch in enumerate(history):
    if epoch.get("train/hard_negatives", 0.0) > 0:
      found.setdefault("id" if epoch.get("train/phase", 0.0) == 0 else "text", index)
  return found


def partner_strength(hard_runs: List[dict], uniform_runs: List[dict]) -> dict:
  """The regime in numbers: each network's validation Hits@20 (%) just before
  hard phases start (the partner's strength when it first ranks negatives), and
  each network's after its own first hard epoch, trained on the partner's
  negatives (AlterRec) or on uniform ones (AlterRec_random, same seed); means
  over the seeds both have."""
  uniform = {run["seed"]: run["history"] for run in uniform_runs}
  rows: Dict[str, List[float]] = {}
  for run in hard_runs:
    history, twin = run["history"], uniform.get(run["seed"])
    first = first_hard_epochs(history)
    if twin is None or "id" not in first or first["id"] == 0:
      continue
    before = history[min(first.values()) - 1]
    values = {"id_before": before["valid/id/hits@20"], "text_before": before["valid/text/hits@20"]}
    for head, index in first.items():
      if index < len(twin):
        values[f"{head}_after_hard"] = history[index][f"valid/{head}/hits@20"]
        values[f"{head}_after_uniform"] = twin[index][f"valid/{head}/hits@20"]
    for key, value in values.items():
      rows.setdefault(key, []).append(100 * value)
  return {key: round(statistics.mean(values), 2) for key, values in rows.items()} | {
      "seeds": len(rows.get("id_before", []))}


def summarize() -> dict:
  """Prints the study's table and curves; returns them (also summary.json)."""
  summary: Dict[str, dict] = {}
  print("| cell | model | seeds | " + " | ".join(METRICS) + " | best epochs | s, last process |")
  print("|---|---|---|" + "---|" * (len(METRICS) + 2))
  for cell in CELLS:
    for model, runs in _runs(cell).items():
      tests = {m: [run["results"]["test"]["fused"][m] for run in runs] for m in METRICS}
      epochs = [run["results"]["best_epoch"] for run in runs]
      seconds = [run["results"].get("wall_seconds_this_process", 0.0) for run in runs]
      curves = {run["seed"]: {head: [round(100 * e[f"valid/{head}/hits@20"], 2)
                                     for e in run["history"] if f"valid/{head}/hits@20" in e]
                              for head in ("id", "text", "fused")} for run in runs}
      summary.setdefault(cell, {})[model] = {
          "seeds": [run["seed"] for run in runs], "test": tests, "best_epochs": epochs,
          "seconds": seconds, "valid_hits20_curves": curves}
      print(f"| {cell} | {model} | {len(runs)} | "
            + " | ".join(_mean_sd(tests[m]) for m in METRICS)
            + f" | {','.join(map(str, epochs))} | {statistics.mean(seconds):.0f} |")
  print("\nAlterRec - AlterRec_random, test, paired bootstrap over prefixes (95%):")
  for cell, models in summary.items():
    if {"alterrec", "alterrec_random"} <= set(models):
      differences = {metric: paired_difference(cell, "alterrec", "alterrec_random", metric)
                     for metric in METRICS}
      models["alterrec"]["minus_random"] = differences
      print(f"- {cell} ({differences['hits@20']['seeds']} seeds): " + "; ".join(
          f"{metric} {d['difference']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
          for metric, d in differences.items()))
  tuned = {model: f"{TUNED_PREFIX}{model}" for model in ("alterrec", "alterrec_random")}
  if all(cell in summary for cell in tuned.values()):
    differences = {metric: paired_difference(
        tuned["alterrec"], "alterrec", "alterrec_random", metric,
        reference_cell=tuned["alterrec_random"]) for metric in METRICS}
    summary[tuned["alterrec"]]["alterrec"]["minus_random"] = differences
    print(f"- tuned, each its own best.flags ({differences['hits@20']['seeds']} seeds): "
          + "; ".join(f"{metric} {d['difference']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
                      for metric, d in differences.items()))
  print("\nWhen hard phases start (validation Hits@20, mean over seeds): each network "
        "before, and after its first hard epoch with the partner's / uniform negatives:")
  for cell in summary:
    runs = _runs(cell)
    if {"alterrec", "alterrec_random"} <= set(runs):
      strength = partner_strength(runs["alterrec"], runs["alterrec_random"])
      if strength["seeds"]:
        summary[cell]["alterrec"]["partner_strength"] = strength
        print(f"- {cell} ({strength['seeds']} seeds): ID {strength['id_before']:.2f}, text "
              f"{strength['text_before']:.2f} (text / ID "
              f"{strength['text_before'] / strength['id_before']:.2f}); ID after "
              f"{strength.get('id_after_hard', 0):.2f} / {strength.get('id_after_uniform', 0):.2f}"
              f", text after {strength.get('text_after_hard', 0):.2f} / "
              f"{strength.get('text_after_uniform', 0):.2f}")
  with open(os.path.join(FLAGS.study_dir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  return summary


OWN_FLAGS = ("--study_dir", "--cells", "--seeds", "--workers", "--summarize",
             "--nosummarize", "--tune_dir")


def main(argv: List[str]) -> None:
  """Runs the cells (every flag not of this script goes to `experiments`)."""
  passthrough = [arg for arg in argv[1:] if not arg.startswith(OWN_FLAGS)]
  if FLAGS.tune_dir:
    add_tuned_cells(FLAGS.tune_dir)
  unknown = [cell for cell in FLAGS.cells if cell not in CELLS]
  if unknown:
    sys.exit(f"error: unknown cells {unknown}; known: {', '.join(CELLS)}")
  del argv
  if not FLAGS.summarize:
    for seed in FLAGS.seeds:
      for cell in FLAGS.cells:
        print(f"== {cell} seed {seed}", flush=True)
        subprocess.run(_cell_command(cell, seed, passthrough), check=True)
  summarize()


if __name__ == "__main__":
  define_flags()
  FLAGS(sys.argv[:1] + [arg for arg in sys.argv[1:] if arg.startswith(OWN_FLAGS)])
  main(sys.argv)
