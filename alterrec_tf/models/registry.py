"""Model registry: `--model` name -> a built model for the trainer.

Every model it returns satisfies `contract.RankingModel` (AlterRec and its
ablations also `contract.AlternatingModel`); the names are `models.names`, and
an AlterRec ablation is built from its `names.AlterRecVariant`.
"""

from typing import TYPE_CHECKING, Optional, Protocol, Sequence

from alterrec_tf.data import cooccurrence
from alterrec_tf.models import alterrec as alter_model
from alterrec_tf.models import baselines, contract
from alterrec_tf.models.baselines import floors
from alterrec_tf.models.names import ALTERREC_VARIANTS, BASELINES
from alterrec_tf.models.settings import SEEN_ITEMS, ModelSettings

if TYPE_CHECKING:
  import numpy as np


class ModelConfig(Protocol):
  """What `build_model` reads of a config besides the `ModelSettings` fields it
  narrows to (a `TrainConfig`; models import no flag module)."""

  @property
  def model(self) -> str: ...

  @property
  def seen_items(self) -> str: ...


def build_model(config: ModelConfig, manifest: dict,
                text_embeddings: Optional["np.ndarray"],
                train_files: Optional[Sequence[str]] = None,
                prefixes_per_batch: Optional[float] = None) -> contract.RankingModel:
  """Builds (creates all variables of) the model named by `config.model`.

  The model receives `ModelSettings.of(config)`, not the trainer's config;
  `config.seen_items` must be resolved already ("exclude" or "keep": resolved
  once where the config entered, see `models.settings`). `train_files` (the
  training TFRecords) are read only by the count-based floors
  (models.names.FLOORS) and by AlterRec's co-occurrence guard
  (`--false_negative_cooccurrence`). `prefixes_per_batch` (the training split's mean
  scored prefixes per batch; the trainer passes it with
  `--loss_weighting=prefix`) makes a trained model's batch loss the sum over
  its prefixes divided by it; None: the batch mean.

  Raises:
    ValueError: an unresolved --seen_items ("auto") or an unknown --model.
  """
  if config.seen_items not in SEEN_ITEMS:
    raise ValueError(f"--seen_items={config.seen_items} must be resolved against the "
                     f"dataset to one of {', '.join(SEEN_ITEMS)} before a model is built "
                     "(alterrec_tf.config.resolve_seen_items)")
  settings = ModelSettings.of(config)
  num_items = manifest["num_items"]
  if settings.model in ALTERREC_VARIANTS:
    partner_lists = None
    if settings.false_negative_cooccurrence > 0:
      if train_files is None:
        raise ValueError("--false_negative_cooccurrence counts the training sessions: "
                         "pass train_files")
      partner_lists = cooccurrence.top_cooccurring(
          floors.read_sessions(train_files), num_items, settings.false_negative_cooccurrence)
    model = alter_model.AlterRec(settings, num_items, text_embeddings,
                                 variant=ALTERREC_VARIANTS[settings.model],
                                 prefixes_per_batch=prefixes_per_batch,
                                 partner_lists=partner_lists)
    model.build_all()
  elif settings.model in BASELINES:
    model = baselines.build_baseline(settings, num_items, text_embeddings, train_files,
                                     prefixes_per_batch)
  else:
    raise ValueError(f"--model={config.model} is not available yet")
  if not isinstance(model, contract.RankingModel):
    raise TypeError(f"{type(model).__name__} does not satisfy models.contract.RankingModel")
  return model
