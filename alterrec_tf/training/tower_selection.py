"""Each network's own best epoch (`--tower_selection=each`, a lever of issue 32).

The paper tests the model of the epoch with the best validation score of the
fused head. In alternating training one network can peak long before the other
(Online Retail: the ID network's validation Hits@20 is best at epoch 13 of 30
and then falls while the text network still improves). With `each`, every
network's weights are also kept at the epoch of its own best validation
Hits@20 (run_dir/best_<tower>.weights.npz), early stopping waits until neither
the fused head nor any network has improved for `patience` epochs, and the test
model combines each network's best weights, with alpha chosen on validation for
that combination (so --tune_alpha is required). Everything is chosen on
validation; the combined weights then replace best.weights.h5, so export and
later analyses use what was tested.
"""

import os
from typing import TYPE_CHECKING, Dict, List, Sequence

import numpy as np

if TYPE_CHECKING:
  import keras

  from alterrec_tf.models.contract import AlternatingModel

SELECTION_HEADS = ("fused", "id", "text")


def tower_weights_file(run_dir: str, name: str) -> str:
  return os.path.join(run_dir, f"best_{name}.weights.npz")


def best_epochs(history: Sequence[dict], heads: Sequence[str], metric: str) -> Dict[str, int]:
  """{head: epoch of its best validation `metric`} (earliest on ties)."""
  best: Dict[str, int] = {}
  for head in heads:
    key = f"valid/{head}/{metric}"
    scored = [record for record in history if key in record]
    if scored:
      best[head] = max(scored, key=lambda record: (record[key], -record["epoch"]))["epoch"]
  return best


def improved_towers(history: Sequence[dict], towers: Sequence[str], metric: str) -> List[str]:
  """The towers whose validation `metric` in the last record is above every
  earlier record's (a frozen tower repeats its figure: not an improvement)."""
  if not history:
    return []
  last, earlier = history[-1], history[:-1]
  improved = []
  for name in towers:
    key = f"valid/{name}/{metric}"
    if key in last and all(last[key] > record.get(key, -1.0) for record in earlier):
      improved.append(name)
  return improved


def epochs_without_gain(history: Sequence[dict], metric: str) -> int:
  """Epochs since the last record that improved the fused head or a tower."""
  gains = best_epochs(history, SELECTION_HEADS, metric)
  return history[-1]["epoch"] - max(gains.values()) if gains and history else 0


def save_tower(run_dir: str, name: str, tower: "keras.layers.Layer") -> None:
  """Writes `tower`'s weights to `tower_weights_file` (temporary file + rename)."""
  path = tower_weights_file(run_dir, name)
  tmp = path[:-len(".npz")] + ".tmp.npz"
  np.savez(tmp, *[np.asarray(weight) for weight in tower.get_weights()])
  os.replace(tmp, path)


def load_towers(model: "AlternatingModel", run_dir: str) -> None:
  """Sets every tower of `model` to its own best weights.

  Raises:
    FileNotFoundError: a tower's file is missing (the run was not trained with
      --tower_selection=each).
  """
  for name in model.tower_names:
    with np.load(tower_weights_file(run_dir, name)) as arrays:
      model.tower(name).set_weights([arrays[f"arr_{i}"] for i in range(len(arrays.files))])
