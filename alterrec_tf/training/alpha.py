"""Alpha, the ID score's weight in the fused score (Eq. 12), chosen on validation.

The two towers are trained apart; alpha only mixes their scores at inference:
fused = alpha * ID + (1 - alpha) * text. The paper tunes it (its Figure 7).
`sweep` ranks a split once per tower and scores every alpha of a grid from the
same two score matrices; `tune` picks the alpha with the best validation
Hits@20 (the selection metric of the epochs), used by `train --tune_alpha` and
reported by `alterrec_tf.alpha_sweep`.
"""

from typing import TYPE_CHECKING, Dict, Sequence

if TYPE_CHECKING:
  from alterrec_tf.config import TrainConfig
  from alterrec_tf.data.windows import SplitData
  from alterrec_tf.models.contract import AlternatingModel

ALPHA_GRID = tuple(i / 10 for i in range(11))
SELECTION_METRIC = "hits@20"


def sweep(model: "AlternatingModel", split: "SplitData", alphas: Sequence[float],
          ks: Sequence[int] = (10, 20), mrr_k: int = 20,
          batch_size: int = 128) -> Dict[float, Dict[str, float]]:
  """Fused metrics of a two-tower AlterRec for every alpha, one pass over a split.

  Args:
    model: a `models.contract.AlternatingModel` with both towers (AlterRec).
    split: a `data.SplitData`.
    alphas: weights of the ID score.

  Returns:
    {alpha: {metric: value}} (keras-rs metrics, as the trainer's).
  """
  # TensorFlow on first use: `alpha_sweep` imports this module and checks its
  # command before TensorFlow starts.
  import numpy as np
  import tensorflow as tf

  from alterrec_tf.data import windows as alter_data
  from alterrec_tf.data.windows import scored_positions
  from alterrec_tf.training import evaluation

  if tuple(model.tower_names) != ("id", "text"):
    raise ValueError(f"an alpha sweep needs both towers; {model.settings.model} has "
                     f"{model.tower_names}")
  max_k = max(max(ks), mrr_k)
  spec = {alter_data.ITEM_IDS: tf.TensorSpec([None, None], tf.int32),
          alter_data.TARGET_IDS: tf.TensorSpec([None, None], tf.int32),
          alter_data.TARGET_MASK: tf.TensorSpec([None, None], tf.bool)}

  @tf.function(input_signature=[spec])
  def ranks_per_alpha(batch: Dict[str, tf.Tensor]) -> tf.Tensor:
    positions, targets = scored_positions(batch)
    heads = model.prefix_scores(batch[alter_data.ITEM_IDS], positions)
    return tf.stack([evaluation.target_ranks(a * heads["id"] + (1.0 - a) * heads["text"],
                                             targets, max_k) for a in alphas])

  ranks = np.concatenate([ranks_per_alpha(batch).numpy()
                          for batch in split.batches(batch_size)], axis=1)
  return {float(a): evaluation.ranking_metrics(ranks[i], ks, mrr_k)
          for i, a in enumerate(alphas)}


def best_alpha(metrics_by_alpha: Dict[float, Dict[str, float]], reference: float,
               metric: str = SELECTION_METRIC) -> float:
  """The alpha with the best `metric`; ties go to the one nearest `reference`."""
  return float(max(metrics_by_alpha,
                   key=lambda a: (metrics_by_alpha[a][metric], -abs(a - reference))))


def tune(model: "AlternatingModel", split: "SplitData", config: "TrainConfig",
         alphas: Sequence[float] = ALPHA_GRID) -> dict:
  """Chooses alpha on `split` (validation) for a trained two-tower model.

  Returns:
    {"alpha": the chosen alpha, "trained_with": config.alpha, "metric": ...,
     "valid": {"<alpha>": {metric: value}}}.
  """
  values = sweep(model, split, alphas, config.ks, config.mrr_k, config.eval_batch_size)
  return {"alpha": best_alpha(values, config.alpha), "trained_with": config.alpha,
          "metric": f"valid fused {SELECTION_METRIC}",
          "valid": {f"{a:g}": metrics for a, metrics in values.items()}}
