"""Finished runs as the report reads them: `Run` (model, seed, results,
history, test ranks) and `load_runs` (every finished run of a grid folder).

Read by the report (`analysis.report`), its tables and long-tail analysis, and
the grid (`alterrec_tf.experiments`).
"""

import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from alterrec_tf import runs as alter_runs
from alterrec_tf.models import names as model_names


class Run:
  """One finished run: model, seed, folder, results, history, ranks file."""

  def __init__(self, model: str, seed: int, run_dir: str) -> None:
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
