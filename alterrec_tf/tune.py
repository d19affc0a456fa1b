"""Tune every neural model with the same budget, on validation only.

  python -m alterrec_tf.tune --flagfile=configs/amazon_office.flags \
      --data_dir=data/amazon_office --tune_dir=runs/tune/amazon_office \
      --models=alterrec,alterrec_random,id_only,text_only,sasrec,fdsa --trials=12

One Optuna study per model in tune_dir/<model>/ (study.db, a trial's run in
trials/<n>/, the best trial in best.json and best.flags), the same number of
trials and the same kind of search space for each (`training.tuning`); the
test split is never ranked. Running the command again resumes every study.
Finally tune_dir/tuning.md holds the budget table. Train the chosen settings at
several seeds with `alterrec_tf.experiments --flagfile=<tune_dir>/<model>/best.flags`.
"""

import os
from typing import List

from absl import flags, logging

from alterrec_tf import cli, flagfiles
from alterrec_tf import config as alter_config
from alterrec_tf.training import trainer, tuning

flags.DEFINE_list("models", list(tuning.TUNABLE), "Models to tune, each with the same budget.")
flags.DEFINE_integer("trials", 12, "Trials per model.")
flags.DEFINE_string("tune_dir", "runs/tune", "Folder of the studies.")
flags.DEFINE_integer("tune_max_epochs", 20, "Epoch cap of every trial (early stopping within).")
flags.DEFINE_integer("tune_patience", 5, "Early-stopping patience of every trial.")
flags.DEFINE_integer("sampler_seed", 0, "Seed of the TPE sampler of every study.")


def main(argv: List[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  config = alter_config.TrainConfig.from_flags()
  if not config.data_dir:
    raise cli.CommandError("--data_dir is required (the output_dir of data_tools.prepare)")
  options = flags.FLAGS
  unknown = [model for model in options.models if model not in tuning.TUNABLE]
  if unknown:
    raise cli.CommandError(f"--models: cannot tune {', '.join(unknown)}; tunable models are "
                           f"{', '.join(tuning.TUNABLE)}")
  if options.trials < 1 or options.tune_max_epochs < 1 or options.tune_patience < 1:
    raise cli.CommandError("--trials, --tune_max_epochs and --tune_patience must be at least 1")
  from alterrec_tf.formats import schema
  manifest = schema.load_manifest(config.data_dir,
                                  verify_hashes=bool(cli.flag_value("verify_data", True)))
  cli.check_writable(options.tune_dir, "--tune_dir")
  cli.load_tensorflow(cli.flag_value("tensorflow_log", False))
  budget = tuning.TuningBudget(options.trials, options.tune_max_epochs, options.tune_patience,
                               options.sampler_seed)
  records = []
  for model in options.models:
    records.append(tuning.tune_model(
        config, model, manifest["num_items"] - 1, os.path.join(options.tune_dir, model),
        budget, lambda trial, rank_test: trainer.train(trial, rank_test=rank_test,
                                                       verify_data=False),
        log=lambda line: print(line, flush=True)))
  table = tuning.budget_table(records)
  with open(os.path.join(options.tune_dir, "tuning.md"), "w", encoding="utf-8") as f:
    f.write(f"Tuned on validation ({tuning.OBJECTIVE}) of {config.data_dir}; every model: "
            f"{budget.trials} trials, at most {budget.max_epochs} epochs, patience "
            f"{budget.patience}, TPE seed {budget.sampler_seed}.\n\n{table}\n")
  print(table)


def run() -> None:
  cli.run(main, flagfiles.PREPARE_FLAG_NAMES,
          io_hint="the studies resume when the same command runs again")


if __name__ == "__main__":
  run()
