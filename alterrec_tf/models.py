"""Model registry: `--model` name -> a built Keras model for the trainer.

Every model offers `score_heads(batch) -> ({head: [P, V]}, targets [P])` for
the shared evaluation, and neural ones a `train_step`.
"""

from alterrec_tf import model as alter_model

ALTERREC_TOWERS = {
    "alterrec": ("id", "text"),
    "alterrec_aug": ("id", "text"),
    "alterrec_random": ("id", "text"),
    "id_only": ("id",),
    "text_only": ("text",),
}


def build_model(config, manifest, text_embeddings, train_files=None):
  """Builds (creates all variables of) the model named by `config.model`."""
  del train_files
  num_items = manifest["num_items"]
  if config.model in ALTERREC_TOWERS:
    model = alter_model.AlterRec(config, num_items, text_embeddings,
                                 towers=ALTERREC_TOWERS[config.model])
    model.build_all()
    return model
  raise ValueError(f"--model={config.model} is not available yet")
