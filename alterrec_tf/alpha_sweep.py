"""Sensitivity of the fused score to alpha (Eq. 12; the paper's Figure 7).

  python -m alterrec_tf.alpha_sweep --run_dir=runs/online_retail \
      --alphas=0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1

Loads a finished AlterRec run's best weights, scores each validation and test
prefix once per tower, and ranks the catalogue under
alpha * ID + (1 - alpha) * text for every alpha in the list (alpha = 1 is the
ID tower alone, 0 the text tower alone). Prints a table, marks the alpha with
the best validation Hits@20, and writes run_dir/alpha_sweep.json. The run
itself is not changed: to use a chosen alpha, train or export with --alpha.
The run, its dataset (the SHA-256 of every shard and table, --verify_data),
--alphas and that run_dir can be written are checked before TensorFlow is
loaded (`check_request`); a refused command prints one line (`alterrec_tf.cli`).
"""

import os
from typing import List, Optional, Sequence

from absl import flags, logging

from alterrec_tf import cli, flagfiles
from alterrec_tf import config as alter_config
from alterrec_tf import runs as alter_runs
from alterrec_tf.models import names as model_names
from alterrec_tf.serving.build import ExportError
from alterrec_tf.training import alpha as alter_alpha
from alterrec_tf.training import loading, trainer

SWEEP_FILE = alter_runs.SWEEP_FILE


def parse_alphas(values: Sequence[str]) -> list:
  """--alphas as sorted distinct floats in [0, 1].

  Raises:
    CommandError: naming the value that is not a number in [0, 1].
  """
  alphas = set()
  for value in values:
    try:
      alpha = float(value)
    except ValueError:
      raise cli.CommandError(f"--alphas: {value!r} is not a number") from None
    if not 0.0 <= alpha <= 1.0:
      raise cli.CommandError(f"--alphas: {value} is outside [0, 1] (the ID score's weight)")
    alphas.add(alpha)
  if not alphas:
    raise cli.CommandError("--alphas is empty; give weights in [0, 1], e.g. 0,0.5,1")
  return sorted(alphas)


def check_request(run_dir: str, data_dir: Optional[str] = None,
                  verify_data: bool = True) -> loading.CheckedRun:
  """The run (two towers, best weights), its dataset and run_dir's
  writability, checked before TensorFlow is loaded; returns `loading.check_run`'s
  (config, manifest, data_dir).

  Raises:
    ExportError, ConfigError, DataError, CommandError: one line.
  """
  checked = loading.check_run(run_dir, data_dir, verify_data)
  config = checked[0]
  if model_names.ALTERREC_TOWERS.get(config.model) != ("id", "text"):
    two_towers = [m for m, towers in model_names.ALTERREC_TOWERS.items() if len(towers) == 2]
    raise alter_config.ConfigError(
        f"{run_dir} is a --model={config.model} run: an alpha sweep needs both towers "
        f"({', '.join(two_towers)})")
  cli.check_writable(run_dir, "--run_dir")
  return checked


def run_sweep(run_dir: str, alphas: Sequence[float], data_dir: Optional[str] = None,
              verify_data: bool = True) -> dict:
  """Sweeps a run's valid and test splits; writes and returns alpha_sweep.json."""
  checked = check_request(run_dir, data_dir, verify_data)  # before TensorFlow is loaded
  from alterrec_tf.data import windows as alter_data
  model, config, manifest, data_dir = loading.load_run(run_dir, checked=checked)
  out = {"run_dir": run_dir, "alphas": [float(a) for a in alphas],
         "trained_alpha": config.alpha}
  best = None
  for split_name in ("valid", "test"):
    stride = (trainer.TEST_WINDOW_STRIDE if split_name == "test"
              else config.eval_window_stride)
    split = alter_data.load_split(data_dir, manifest, split_name, config.max_len, stride)
    if split is not None:
      values = alter_alpha.sweep(model, split, alphas, config.ks, config.mrr_k,
                                 config.eval_batch_size)
      out[split_name] = {f"{a:g}": metrics for a, metrics in values.items()}
      if split_name == "valid":
        best = alter_alpha.best_alpha(values, config.alpha)
  if best is not None:
    out["best_valid_alpha"] = best
  alter_runs.write_json_atomic(os.path.join(run_dir, SWEEP_FILE), out)
  if os.path.exists(os.path.join(run_dir, alter_runs.RESULTS_FILE)):
    alter_runs.write_hashes(run_dir)  # the sweep is part of the finished run now
  return out


def format_sweep(out: dict) -> str:
  """Markdown table: one row per alpha, valid and test Hits@20 / NDCG@20 (%)."""
  lines = ["| alpha | valid Hits@20 | valid NDCG@20 | test Hits@20 | test NDCG@20 |",
           "|---:|---:|---:|---:|---:|"]
  for alpha in out["alphas"]:
    key = f"{alpha:g}"
    cells = []
    for split in ("valid", "test"):
      metrics = out.get(split, {}).get(key)
      cells += ([f"{100 * metrics['hits@20']:.2f}", f"{100 * metrics['ndcg@20']:.2f}"]
                if metrics else ["", ""])
    marks = []
    if alpha == out.get("best_valid_alpha"):
      marks.append("best on valid")
    if alpha == out["trained_alpha"]:
      marks.append("trained with")
    label = f"{key}" + (f" ({', '.join(marks)})" if marks else "")
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def define_flags() -> None:
  # --run_dir (a finished two-tower run) and --data_dir (default: the run's own)
  # are the training flags of alterrec_tf.config.
  flags.DEFINE_list("alphas", [f"{a / 10:g}" for a in range(11)], "ID weights to try.")


def main(argv: List[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  values = flags.FLAGS
  alphas = parse_alphas(values.alphas)
  out = run_sweep(values.run_dir, alphas, values.data_dir,
                  bool(cli.flag_value("verify_data", True)))
  print(format_sweep(out))
  print(f"written: {os.path.join(values.run_dir, SWEEP_FILE)}")


def run() -> None:
  define_flags()
  cli.run(main, flagfiles.PREPARE_FLAG_NAMES, known=(ExportError,))


if __name__ == "__main__":
  run()
