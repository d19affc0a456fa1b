"""Model registry: `--model` name -> a built model for the trainer.

Every model it returns satisfies `contract.RankingModel` (AlterRec and its
ablations also `contract.AlternatingModel`); the names are `models.names`.
"""

from alterrec_tf import config as alter_config
from alterrec_tf.models import alterrec as alter_model
from alterrec_tf.models import baselines, contract
from alterrec_tf.models.names import ALTERREC_TOWERS, BASELINES
from alterrec_tf.models.settings import ModelSettings


def build_model(config, manifest, text_embeddings, train_files=None) -> contract.RankingModel:
  """Builds (creates all variables of) the model named by `config.model`.

  The model receives `ModelSettings.of(config)` (with --seen_items resolved
  from the manifest), not the trainer's config. `train_files` (the training
  TFRecords) are read only by the count-based floors (models.names.FLOORS).
  """
  settings = ModelSettings.of(alter_config.resolve_seen_items(config, manifest))
  num_items = manifest["num_items"]
  if settings.model in ALTERREC_TOWERS:
    model = alter_model.AlterRec(settings, num_items, text_embeddings,
                                 towers=ALTERREC_TOWERS[settings.model])
    model.build_all()
  elif settings.model in BASELINES:
    model = baselines.build_baseline(settings, num_items, text_embeddings, train_files)
  else:
    raise ValueError(f"--model={config.model} is not available yet")
  if not isinstance(model, contract.RankingModel):
    raise TypeError(f"{type(model).__name__} does not satisfy models.contract.RankingModel")
  return model
