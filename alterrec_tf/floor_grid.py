"""Choose a count floor's parameters on the validation split (the test split is never read).

  python -m alterrec_tf.floor_grid --flagfile=configs/online_retail.flags \
      --data_dir=data/online_retail --model=stan \
      --grid=neighbours=100,500 --grid=lambda_1=1,2.5 --output=runs/floor_grid/stan.json

Builds the floor named by --model from the training split once for every
combination of the --grid values (each "parameter=value,value,..."; the floor's
other parameters at their defaults, `models.baselines.floor_registry.parameters`)
and ranks the validation split as training does each epoch (--max_len,
--eval_window_stride, --seen_items, --ks). Prints one row per combination
(Hits@K / NDCG@K %, seconds), marks the best validation Hits@20 (the first of
equals), and writes the rows to --output as JSON. The chosen values become the
floor's defaults in its module (train evaluates a floor at its defaults).
"""

import itertools
import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import flags, logging

from alterrec_tf import cli, flagfiles
from alterrec_tf import config as alter_config
from alterrec_tf.models import names as model_names

flags.DEFINE_multi_string("grid", [], "parameter=value,value,... (repeat the flag for "
                          "several parameters; every combination is ranked).")
flags.DEFINE_string("output", "", "JSON file for the rows (none: only printed).")

SELECTION_METRIC = "hits@20"
# One row of the output: {"params": {parameter: value}, "valid": {metric: value},
# "seconds"}.
Row = Dict[str, Any]


def parse_grid(model: str, entries: Sequence[str]) -> Dict[str, List[Any]]:
  """--grid entries -> {parameter: values}, each value of its default's type.

  Raises:
    CommandError: an entry that is not parameter=values, a parameter the floor lacks,
      or a value of the wrong type.
  """
  from alterrec_tf.models.baselines import floor_registry
  defaults = floor_registry.parameters(model)
  grid: Dict[str, List[Any]] = {}
  for entry in entries:
    name, _, values = entry.partition("=")
    if not values:
      raise cli.CommandError(f"--grid={entry}: write parameter=value,value,...")
    if name not in defaults:
      raise cli.CommandError(f"--grid: {model} has no parameter {name!r}; its parameters are "
                             f"{', '.join(defaults) or 'none'}")
    grid[name] = [_typed(name, value, defaults[name]) for value in values.split(",")]
  return grid


def _typed(name: str, value: str, default: Any) -> Any:
  if isinstance(default, str):
    return value
  try:
    number = float(value)
  except ValueError:
    raise cli.CommandError(f"--grid: {name}={value!r} is not a number") from None
  return int(number) if isinstance(default, int) and number.is_integer() else number


def combinations(grid: Dict[str, List[Any]]) -> List[Dict[str, Any]]:
  """Every combination of the grid's values ([{}] for an empty grid)."""
  names = list(grid)
  return [dict(zip(names, values)) for values in itertools.product(*grid.values())]


def rank_validation(config: alter_config.TrainConfig, manifest: dict, model: str,
                    settings: List[Dict[str, Any]],
                    log: Callable[[str], None] = print) -> List[Row]:
  """Validation metrics of floor `model` at each of `settings`: list of rows
  {"params", "valid": {metric: value}, "seconds"}."""
  from alterrec_tf.data import windows as alter_data
  from alterrec_tf.formats import schema
  from alterrec_tf.models.baselines import floor_registry
  from alterrec_tf.training import evaluation
  valid = alter_data.load_split(config.data_dir, manifest, "valid", config.max_len,
                                config.eval_window_stride)
  if valid is None:
    raise cli.CommandError(f"{config.data_dir} has no validation split to choose on")
  train_files = schema.split_files(config.data_dir, manifest, "train")
  rows = []
  for params in settings:
    start = time.perf_counter()
    floor = floor_registry.build_floor(model, train_files, manifest["num_items"],
                                       exclude_seen=config.seen_items == "exclude", **params)
    evaluator = evaluation.Evaluator(floor, config.ks, config.mrr_k)
    metrics = evaluator(valid.batches(config.eval_batch_size))["fused"]
    rows.append({"params": params, "valid": metrics,
                 "seconds": round(time.perf_counter() - start, 1)})
    log(format_row(rows[-1], config.ks))
  return rows


def format_row(row: Row, ks: Sequence[int], best: bool = False) -> str:
  params = ", ".join(f"{k}={v}" for k, v in row["params"].items()) or "defaults"
  cells = [f"{100 * row['valid'][f'{name}@{k}']:.2f}" for name in ("hits", "ndcg")
           for k in ks]
  return (f"| {params}{' (best)' if best else ''} | " + " | ".join(cells)
          + f" | {row['seconds']:.0f} |")


def best_row(rows: List[Row]) -> Optional[Row]:
  """The row of the best validation Hits@20 (the first of equals)."""
  return max(rows, key=lambda row: row["valid"][SELECTION_METRIC]) if rows else None


def main(argv: List[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  config = alter_config.TrainConfig.from_flags()
  if config.model not in model_names.FLOORS:
    raise cli.CommandError(f"--model={config.model} is not a count floor; choose from "
                           f"{', '.join(model_names.FLOORS)}")
  if not config.data_dir:
    raise cli.CommandError("--data_dir is required (the output_dir of data_tools.prepare)")
  settings = combinations(parse_grid(config.model, flags.FLAGS.grid))
  from alterrec_tf.formats import schema
  manifest = schema.load_manifest(config.data_dir,
                                  verify_hashes=bool(cli.flag_value("verify_data", True)))
  config = alter_config.resolve_seen_items(config, manifest)
  alter_config.check_against_dataset(config, manifest)
  if not manifest["files"].get("valid"):
    raise cli.CommandError(f"{config.data_dir} has no validation split to choose on")
  output = flags.FLAGS.output
  if output:
    cli.check_writable(os.path.dirname(os.path.abspath(output)), "--output")
  cli.load_tensorflow(cli.flag_value("tensorflow_log", False))
  print(f"{config.model} on {config.data_dir}: validation (%), --seen_items="
        f"{config.seen_items}; {len(settings)} settings", flush=True)
  header = ("| parameters | " + " | ".join(f"{name}@{k}" for name in ("Hits", "NDCG")
                                            for k in config.ks) + " | s |")
  print(header, flush=True)
  rows = rank_validation(config, manifest, config.model, settings,
                         log=lambda line: print(line, flush=True))
  best: Row  # (settings, so rows, is never empty: [{}] without --grid)
  best = best_row(rows)  # type: ignore[assignment]
  print(f"best validation {SELECTION_METRIC}: {format_row(best, config.ks, best=True)}")
  if output:
    with open(output, "w", encoding="utf-8") as f:
      json.dump({"model": config.model, "data_dir": config.data_dir,
                 "seen_items": config.seen_items, "rows": rows,
                 "best": best["params"]}, f, indent=1)
    print(f"written: {output}")


def run() -> None:
  cli.run(main, flagfiles.PREPARE_FLAG_NAMES)


if __name__ == "__main__":
  run()
