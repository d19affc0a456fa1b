"""Model registry: `--model` name -> a built Keras model for the trainer.

Every model offers `score_heads(batch) -> ({head: [P, V]}, targets [P])` for
the shared evaluation, and neural ones a `train_step`.
"""

from alterrec_tf import baselines
from alterrec_tf import model as alter_model

ALTERREC_TOWERS = {
    "alterrec": ("id", "text"),
    "alterrec_aug": ("id", "text"),
    "alterrec_random": ("id", "text"),
    "id_only": ("id",),
    "text_only": ("text",),
}


def build_model(config, manifest, text_embeddings, train_files=None):
  """Builds (creates all variables of) the model named by `config.model`.

  `train_files` (the training TFRecords) are read only by the count-based
  floors (most_popular, session_knn).
  """
  num_items = manifest["num_items"]
  if config.model in ALTERREC_TOWERS:
    model = alter_model.AlterRec(config, num_items, text_embeddings,
                                 towers=ALTERREC_TOWERS[config.model])
    model.build_all()
    return model
  if config.model in baselines.NAMES:
    return baselines.build_baseline(config, num_items, text_embeddings, train_files)
  raise ValueError(f"--model={config.model} is not available yet")
