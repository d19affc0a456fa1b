"""Train and evaluate a model on a prepared dataset.

  python -m alterrec_tf.train --flagfile=configs/online_retail.flags \
      --data_dir=data/online_retail --run_dir=runs/online_retail

Writes into run_dir: config.json, history.json (every epoch, every head and
metric, valid and test), best.weights.h5, TensorBoard logs in tb/, and
results.json (test metrics at the epoch of best validation Hits@20 of the fused
score). A killed run resumes from run_dir/backup on the next start.

Before TensorFlow is loaded, the command line checks the flags, the dataset (the
SHA-256 of every shard and table, --verify_data) and the flags against it, and
that run_dir can be written (`check_command`); a refused command prints one line
(`alterrec_tf.cli`). The trainer itself is `alterrec_tf.training.trainer.train`.
"""

import os
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from absl import flags, logging

from alterrec_tf import cli, flagfiles
from alterrec_tf import config as alter_config
from alterrec_tf import runs as alter_runs
from alterrec_tf.models import names as model_names
from alterrec_tf.training import progress, trainer

if TYPE_CHECKING:
  from alterrec_tf.formats.schema import DataError

flags.DEFINE_list("floors", [],
                  "Count floors to rank on the same test split after training and show "
                  f"beside the table, of {', '.join(model_names.FLOORS)} (each a run in "
                  "run_dir/floors/<name>, reused when the command runs again). `make demo` "
                  "shows all four.")


# --- command line -----------------------------------------------------------------------
def check_command(config: alter_config.TrainConfig,
                  verify_data: bool = True) -> Optional[Dict[str, Any]]:
  """What the command line checks before TensorFlow is loaded (about a second):
  the flags' ranges and TF_CONFIG, the dataset (manifest, and with `verify_data`
  the SHA-256 of every shard and table), the flags against the dataset, and (on
  the chief) run_dir: a run there with other settings is refused, as in `train`.

  Returns:
    The results of the same finished run in run_dir (shown, not retrained),
    else None.

  Raises:
    CommandError, ConfigError, DataError: one line naming the flag or file.
  """
  from alterrec_tf.formats import schema
  if not config.data_dir:
    raise cli.CommandError("--data_dir is required (the output_dir of data_tools.prepare)")
  from alterrec_tf.training import cluster
  alter_config.check_flags(config)
  chief = cluster.check_cluster(config.distribution, config.run_dir)  # TF_CONFIG
  manifest = schema.load_manifest(config.data_dir, verify_hashes=verify_data)
  alter_config.check_against_dataset(alter_config.resolve_seen_items(config, manifest),
                                     manifest)
  if not chief:  # the chief reads run_dir for every worker
    return None
  if config.overwrite:
    cli.check_writable(config.run_dir, "--run_dir")
    return None
  if alter_runs.clear_unstarted_run(config.run_dir):
    print(f"{config.run_dir}: removed the config of a run that never finished an epoch "
          "(nothing to resume)", flush=True)
  changed, results = alter_runs.run_conflicts(config, manifest)
  if changed:  # the message of `trainer._previous_run`, before TensorFlow is loaded
    raise alter_config.ConfigError(
        f"{config.run_dir} holds a run trained with other settings: {', '.join(changed)}; "
        "choose another --run_dir, or pass --overwrite to replace it")
  if results is None:
    cli.check_writable(config.run_dir, "--run_dir")
  return results


def damaged_data(error: BaseException, data_dir: str) -> Optional["DataError"]:
  """A DataError naming the damaged shard behind a TensorFlow read or parse
  error of training (data not verified, --noverify_data), else None."""
  from alterrec_tf.formats import schema
  tf = sys.modules.get("tensorflow")
  if tf is None or not isinstance(error, (tf.errors.DataLossError,
                                          tf.errors.InvalidArgumentError)):
    return None
  problems = schema.find_damaged_shards(data_dir, schema.load_manifest(data_dir))
  if not problems:
    return None
  more = f" (and {len(problems) - 1} more shards)" if len(problems) > 1 else ""
  return schema.DataError(
      f"{problems[0]}{more}; restore the shard or prepare the dataset again (--verify_data, "
      "the default, refuses a changed shard before training)")


def floor_configs(config: alter_config.TrainConfig,
                  names: Sequence[str]) -> Dict[str, alter_config.TrainConfig]:
  """{floor: its TrainConfig} (run_dir/floors/<floor>), checked before TensorFlow.

  Raises:
    CommandError: a name that is not a count floor.
  """
  unknown = [name for name in names if name not in model_names.FLOORS]
  if unknown:
    raise cli.CommandError(f"--floors: {', '.join(unknown)} is not a count floor; choose from "
                           f"{', '.join(model_names.FLOORS)}")
  return {name: config.replace(model=name,
                               run_dir=os.path.join(config.run_dir, "floors", name))
          for name in names}


def _train(config: alter_config.TrainConfig, verify_data: bool) -> Dict[str, Any]:
  """trainer.train, with a damaged shard named (`damaged_data`)."""
  try:
    return trainer.train(config, verify_data=verify_data)
  except Exception as error:
    damaged = damaged_data(error, config.data_dir)
    if damaged is None:
      raise
    raise damaged from error


def main(argv: List[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  config = alter_config.TrainConfig.from_flags()
  verify_data = bool(cli.flag_value("verify_data", True))
  floors = floor_configs(config, flags.FLAGS.floors)
  results = check_command(config, verify_data)
  cli.load_tensorflow(cli.flag_value("tensorflow_log", False))
  if results is not None:
    print(f"{config.run_dir} already holds this finished run: showing its results "
          "(--overwrite trains it again)", flush=True)
  else:
    results = _train(config, verify_data)
  floor_results = {}
  if floors:
    print(f"ranking the test split with the count floors: {', '.join(floors)}", flush=True)
  for name, floor_config in floors.items():
    floor_results[name] = _train(floor_config, verify_data=False)  # (checked above)
  print(f"\n{config.model} on {results['dataset']} (seed {config.seed}), test metrics (%) "
        f"at best validation epoch {results['best_epoch']} of {results['epochs_run']} "
        f"(--m_max={config.m_max})"
        + (f", alpha {results['alpha']:g} chosen on validation" if "alpha" in results else "")
        + ":")
  print(progress.results_table(results, floor_results))
  seen = results.get("seen_items", config.seen_items)
  print("items already in the session: " + (
      "scored out, never recommended (--seen_items=exclude)" if seen == "exclude" else
      "ranked like any item (--seen_items=keep)"))
  print(f"results: {os.path.join(config.run_dir, alter_runs.RESULTS_FILE)}")


def run() -> None:
  cli.run(main, flagfiles.PREPARE_FLAG_NAMES,
          io_hint="a run resumes from its last finished epoch when the same command runs again")


if __name__ == "__main__":
  run()
