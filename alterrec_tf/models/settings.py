"""`ModelSettings`: what a model needs of a run's configuration, and nothing else.

Models (AlterRec, its ablations, the baselines, the floors) receive these
settings, not the trainer's whole `TrainConfig`: data paths, batch sizes, the
epoch schedule, early stopping and evaluation cut-offs are the trainer's
business. `ModelSettings.of(config)` narrows any object holding these field
names (a `TrainConfig`, another `ModelSettings`). The fields have no
defaults: each default is written once, in the flag definitions of
`alterrec_tf.config`, and a model built by hand narrows a `TrainConfig`:
`AlterRec(ModelSettings.of(TrainConfig(embedding_dim=16)), ...)`.

`--seen_items` reaches a model as one typed value, `SeenItems`: the command
resolves the flag's "auto" against the dataset once where a config enters
(`alterrec_tf.config.resolve_seen_items`: the command line, `trainer.train`
for library callers, `training.loading` for a trained run), and
`models.registry.build_model` refuses a config that was not resolved.
"""

import dataclasses
from typing import Any, Literal, get_args

# What a built model does with the items already in the prefix: score them out
# ("exclude": never recommended, never negatives) or rank them like any item.
SeenItems = Literal["exclude", "keep"]
SEEN_ITEMS = get_args(SeenItems)


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """Architecture, optimiser and negative-sampling settings of one model.

  Attributes:
    model: the `--model` name (baselines are built by it; AlterRec's ablation
      behaviour is its `names.AlterRecVariant`, not this name).
    seed: seed of initial weights, negatives and dropout.
    max_len: items of context per prefix (window length L).
    embedding_dim: d, the size of item and session vectors.
    id_encoder, text_encoder: "mean" or "transformer" session encoders.
    num_layers, num_heads, dropout: Transformer encoder settings.
    nfrec_fusion: "sum" or "concat" (NFRec).
    learning_rate: Adam learning rate (one optimizer per tower).
    id_table_norm: LayerNorm the ID item table (reference code).
    init: "keras" or "uniform" (+-1/sqrt(d), reference code).
    k1, k2: the partner's ranks [k1, k2) used as hard negatives.
    hard_negative_selection: "top_k" or "argpartition".
    p, beta: augmented positives (the partner's top-p) and their weight.
    alpha: inference weight of the ID score (Eq. 12).
    random_negative_share: share of uniform negatives in hard phases.
    text_temperature: divisor of the text scores.
    augmentation_source: "partner" or "id".
    seen_items: "exclude" or "keep" (resolved; never "auto" in a built model).
    softmax: "sampled" (paper) or "full" (whole catalogue, plus a hard term).
    hard_negative_weight: weight of that hard term (softmax "full").
    false_negative_cosine: drop hard negatives this close to the target by
      text cosine (0: off).
    false_negative_cooccurrence: drop hard negatives among the target's N most
      frequent partners in the training sessions (0: off).
    random_share_decay_epochs: anneal random_negative_share to 0 over this
      many hard epochs (0: constant; the share is then a static count).
    score_chunk_size: items scored at once (0: the whole catalogue).
  """

  model: str
  seed: int
  max_len: int
  embedding_dim: int
  id_encoder: str
  text_encoder: str
  num_layers: int
  num_heads: int
  dropout: float
  nfrec_fusion: str
  learning_rate: float
  id_table_norm: bool
  init: str
  k1: int
  k2: int
  hard_negative_selection: str
  p: int
  beta: float
  alpha: float
  random_negative_share: float
  text_temperature: float
  augmentation_source: str
  seen_items: SeenItems
  score_chunk_size: int
  softmax: str
  hard_negative_weight: float
  false_negative_cosine: float
  false_negative_cooccurrence: int
  random_share_decay_epochs: int

  @classmethod
  def of(cls, config: Any) -> "ModelSettings":
    """The settings held by `config` (any object with these attribute names;
    a `ModelSettings` is returned as it is)."""
    if isinstance(config, cls):
      return config
    missing = [f.name for f in dataclasses.fields(cls) if not hasattr(config, f.name)]
    if missing:
      raise TypeError(f"{type(config).__name__} lacks the model settings {missing}")
    return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})

  def replace(self, **changes) -> "ModelSettings":
    return dataclasses.replace(self, **changes)

  @property
  def num_negatives(self) -> int:
    """Hard negatives per prefix: the partner's ranks k1..k2."""
    return self.k2 - self.k1
