"""Loading a trained run: its config, dataset and Keras model with the best weights.

The export (`alterrec_tf.export`), the alpha sweep and the benchmarks read a run
through here; `check_run` answers before TensorFlow is loaded, `load_run`
builds the model (`models.registry`) and loads best.weights.h5 into it. The
export command hands the loaded run to `alterrec_tf.serving.pipeline`, which
never imports this module.
"""

import os
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from alterrec_tf import config as alter_config
from alterrec_tf import runs as alter_runs
from alterrec_tf.formats import schema
from alterrec_tf.models import names as model_names
from alterrec_tf.serving.build import ExportError

if TYPE_CHECKING:
  import keras

WEIGHTS_FILE = alter_runs.BEST_WEIGHTS_FILE
# (TrainConfig with --seen_items resolved, manifest, data_dir) of `check_run`.
CheckedRun = Tuple["alter_config.TrainConfig", Dict[str, Any], str]
# (Keras model with the best weights, TrainConfig, manifest, data_dir) of `load_run`: the
# registry's model (a `contract.RankingModel`; an AlterRec for export and the alpha sweep).
LoadedRun = Tuple["keras.Model", "alter_config.TrainConfig", Dict[str, Any], str]


def load_config(run_dir: str) -> "alter_config.TrainConfig":
  """The run's TrainConfig (config.json); a missing or damaged one is an ExportError."""
  try:
    return alter_runs.load_config(run_dir)
  except alter_config.ConfigError as error:
    raise ExportError(str(error)) from None


def check_run(run_dir: str, data_dir: Optional[str] = None, verify_data: bool = True,
              weights: bool = True) -> CheckedRun:
  """(TrainConfig, manifest, data_dir) of an exportable run, its dataset
  verified (`verify_data`) and (`weights`) its best weights present; nothing is
  built, TensorFlow is not loaded. The config's --seen_items is resolved against
  the dataset (runs store it resolved; older runs may hold "auto").

  Raises:
    ExportError, DataError: one line naming the run, file or flag.
  """
  config = load_config(run_dir)
  if config.model not in model_names.ALTERREC_TOWERS:
    raise ExportError(f"{run_dir} is a --model={config.model} run, which cannot be "
                      f"exported; exportable: {', '.join(model_names.ALTERREC_TOWERS)}")
  data_dir = data_dir or config.data_dir
  manifest = schema.load_manifest(data_dir, verify_hashes=verify_data)
  config = alter_config.resolve_seen_items(config, manifest)
  if weights:
    check_weights(run_dir)
  return config, manifest, data_dir


def check_weights(run_dir: str) -> None:
  """Refuses a run without best weights (one that never finished an epoch)."""
  weights = os.path.join(run_dir, WEIGHTS_FILE)
  if not os.path.exists(weights):
    reason = ("the run has not finished an epoch" if not alter_runs.load_results(run_dir)
              else "the run finished without best weights")
    raise ExportError(f"{weights} is missing ({reason}); train it to the end with "
                      "python -m alterrec_tf.train and export again")


def load_run(run_dir: str, data_dir: Optional[str] = None, verify_data: bool = True,
             checked: Optional[CheckedRun] = None) -> LoadedRun:
  """(Keras model with the best weights, TrainConfig, manifest, data_dir) of a run.

  The config's alpha is the one the run chose on validation where it tuned it
  (results.json "alpha", `train --tune_alpha`).

  Args:
    checked: the result of `check_run` / `check_request` (not checked again).
  """
  from alterrec_tf.models import registry as models
  config, manifest, data_dir = checked or check_run(run_dir, data_dir, verify_data)
  results = alter_runs.load_results(run_dir) or {}
  if "alpha" in results:  # chosen on validation after training (--tune_alpha)
    config = config.replace(alpha=float(results["alpha"]))
  text_embeddings = schema.load_text_embeddings(data_dir, manifest)
  weights = os.path.join(run_dir, WEIGHTS_FILE)
  model = models.build_model(config, manifest, text_embeddings)
  model.load_weights(weights)
  return model, config, manifest, data_dir
