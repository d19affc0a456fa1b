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

import os
from typing import List

from absl import flags

from alterrec_tf import cli
from alterrec_tf.analysis import tables
from alterrec_tf.analysis.report import write_report
from alterrec_tf.analysis.runs import load_runs
from alterrec_tf.models import names as model_names


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


def main(argv: List[str]) -> None:
  del argv
  values = flags.FLAGS
  try:
    seeds = [int(seed) for seed in values.seeds]
    bins = [float(edge) for edge in values.long_tail_bins]
  except ValueError as error:
    raise cli.CommandError(f"--seeds and --long_tail_bins take numbers: {error}") from None
  known = model_names.ALL + model_names.PEERS
  unknown = [m for m in values.models if model_names.split_variant(m)[0] not in known]
  if unknown:
    raise cli.CommandError(f"unknown --models {unknown}; choose from {list(known)} "
                           f"(ours optionally with {model_names.KEEP_SEEN_SUFFIX})")
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


def run() -> None:
  define_flags()
  cli.run(main, verify_data=False)


if __name__ == "__main__":
  run()
