"""Training flags, grouped by concern, and the frozen `TrainConfig` built from them.

Defaults follow the paper (section 5.1.3, Appendix G) and, where the paper is
silent, the authors' reference code (see BUILD_NOTES.md, "Paper vs reference").
Each behaviour where the reference code differs from the paper is a flag that
defaults to the paper.
"""

import dataclasses
import json
import os
from typing import FrozenSet

from absl import flags

_DEFINED = set()


def _define(kind, name, default, *args, **kwargs):
  """DEFINE_<kind>(name, default, ...) that also records the flag's name."""
  _DEFINED.add(name)
  return getattr(flags, "DEFINE_" + kind)(name, default, *args, **kwargs)


# --- data and run --------------------------------------------------------------
_define("string", "data_dir", None, "Folder written by data_tools.prepare.")
_define("string", "run_dir", "runs/default",
        "Folder for checkpoints, TensorBoard logs and results.json.")
_define("enum", "model", "alterrec",
        ["alterrec", "alterrec_aug", "alterrec_random", "id_only", "text_only",
         "nfrec_sum", "nfrec_concat", "sasrec", "fdsa", "most_popular", "session_knn"],
        "Which model to train; see README for each.")
_define("integer", "seed", 0, "Global seed (weights, shuffling, negatives, dropout).")
_define("integer", "max_len", 50, "Items of context kept per prefix (the last max_len).")
_define("integer", "train_window_stride", 25,
        "Stride of the windows cut from sessions longer than max_len+1 in training.")
_define("integer", "eval_window_stride", 25,
        "Stride of the windows cut from long sessions in evaluation. 1 gives every "
        "prefix exactly its last max_len items (the per-prefix reference), at a cost "
        "of one encoder pass per prefix beyond max_len; see BUILD_NOTES.md.")
_define("integer", "batch_size", 64, "Windows (sessions) per training batch.")
_define("integer", "eval_batch_size", 128, "Windows per evaluation batch.")

# --- architecture --------------------------------------------------------------
_define("integer", "embedding_dim", 300, "d: size of ID/text item and session vectors.")
_define("enum", "id_encoder", "mean", ["mean", "transformer"], "ID session encoder.")
_define("enum", "text_encoder", "transformer", ["mean", "transformer"],
        "Text session encoder.")
_define("integer", "num_layers", 2, "Transformer layers.")
_define("integer", "num_heads", 2, "Transformer attention heads.")
_define("float", "dropout", 0.1, "Dropout rate.")
_define("enum", "nfrec_fusion", "concat", ["sum", "concat"],
        "NFRec fusion (model=nfrec_* overrides it).")

# --- optimisation ----------------------------------------------------------------
_define("float", "learning_rate", 1e-3, "Adam learning rate of each tower.")
_define("float", "lr_decay", 1.0,
        "Reference code: multiply a tower's learning rate by this every "
        "lr_decay_epochs_{id,text} epochs it trains (paper: 1.0 = none; ref: 0.1).")
_define("integer", "lr_decay_epochs_id", 2, "See lr_decay.")
_define("integer", "lr_decay_epochs_text", 5, "See lr_decay.")
_define("boolean", "id_table_norm", False,
        "LayerNorm the ID embedding table (reference code); the paper's table is "
        "plain (default). See BUILD_NOTES.md for the measured effect.")
_define("enum", "init", "keras", ["keras", "uniform"],
        "Parameter initialisation: Keras defaults (paper) or uniform +-1/sqrt(d) "
        "for every parameter (reference code).")

# --- AlterRec ----------------------------------------------------------------------
_define("integer", "k1", 6, "First partner rank used as a hard negative (0-based).")
_define("integer", "k2", 2000, "End (exclusive) of the hard-negative ranks.")
_define("integer", "p", 5, "Augmented positives: the partner's top-p (aug model).")
_define("float", "beta", 0.5, "Weight of augmented positives (Eq. 10-11).")
_define("float", "alpha", 0.5, "Inference weight of the ID score (Eq. 12).")
_define("integer", "m_random", 2, "Epochs per tower with random negatives.")
_define("integer", "m_gap", 2, "Epochs per turn of alternation.")
_define("integer", "m_max", 30, "Total epochs (including 2 * m_random).")
_define("float", "random_negative_share", 0.0,
        "Share of negatives drawn uniformly in the hard-negative phases "
        "(paper 0.0; reference code 0.5, the rest a random subset of ranks k1..k2).")
_define("float", "text_temperature", 1.0,
        "Text scores are divided by this in training and in the fused score "
        "(paper 1.0; reference code 0.07).")
_define("enum", "augmentation_source", "partner", ["partner", "id"],
        "Where augmented positives come from (paper: partner; reference: always ID).")

# --- evaluation and operations -------------------------------------------------
_define("list", "ks", ["10", "20"], "Cut-offs for Hits@K and NDCG@K.")
_define("integer", "mrr_k", 20, "Cut-off of MRR.")
_define("integer", "early_stopping_patience", 15,
        "Stop after this many epochs without a better validation Hits@20.")
_define("boolean", "test_every_epoch", True,
        "Rank the test split after every epoch (per-epoch test curves, TensorBoard). "
        "Off: only validation each epoch, then the test split once with the selected "
        "epoch's weights (same test figures, about a third less time per epoch).")
_define("boolean", "resume", True, "Resume from run_dir's backup if one exists.")
_define("boolean", "overwrite", False,
        "Replace the run in run_dir. Without it, a finished run with the same flags "
        "is shown, not retrained, and a run with other flags is refused.")
_define("integer", "verbose", 1, "Keras progress output: 0 silent, 1 bar, 2 line.")


class ConfigError(ValueError):
  """Flags that contradict each other or the dataset."""


def defined_flag_names() -> FrozenSet[str]:
  """Every flag this module defines (for the shared flagfile parser)."""
  return frozenset(_DEFINED)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every knob of a training run; built from flags or directly in tests."""
  data_dir: str = ""
  run_dir: str = "runs/default"
  model: str = "alterrec"
  seed: int = 0
  max_len: int = 50
  train_window_stride: int = 25
  eval_window_stride: int = 25
  batch_size: int = 64
  eval_batch_size: int = 128
  embedding_dim: int = 300
  id_encoder: str = "mean"
  text_encoder: str = "transformer"
  num_layers: int = 2
  num_heads: int = 2
  dropout: float = 0.1
  nfrec_fusion: str = "concat"
  learning_rate: float = 1e-3
  lr_decay: float = 1.0
  lr_decay_epochs_id: int = 2
  lr_decay_epochs_text: int = 5
  id_table_norm: bool = False
  init: str = "keras"
  k1: int = 6
  k2: int = 2000
  p: int = 5
  beta: float = 0.5
  alpha: float = 0.5
  m_random: int = 2
  m_gap: int = 2
  m_max: int = 30
  random_negative_share: float = 0.0
  text_temperature: float = 1.0
  augmentation_source: str = "partner"
  ks: tuple = (10, 20)
  mrr_k: int = 20
  early_stopping_patience: int = 15
  test_every_epoch: bool = True
  resume: bool = True
  overwrite: bool = False
  verbose: int = 1

  @classmethod
  def from_flags(cls) -> "TrainConfig":
    values = {}
    for field in dataclasses.fields(cls):
      value = flags.FLAGS[field.name].value
      if field.name == "ks":
        value = tuple(sorted(int(k) for k in value))
      values[field.name] = value
    return cls(**values)

  def replace(self, **changes) -> "TrainConfig":
    return dataclasses.replace(self, **changes)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @property
  def num_negatives(self) -> int:
    return self.k2 - self.k1

  @property
  def max_k(self) -> int:
    return max(max(self.ks), self.mrr_k)


RUN_CONFIG_FILE = "config.json"


def load_run_config(run_dir: str) -> TrainConfig:
  """The `TrainConfig` a run was trained with (run_dir/config.json); settings
  this version no longer knows are ignored.

  Raises:
    ConfigError: run_dir holds no config.json.
  """
  path = os.path.join(run_dir, RUN_CONFIG_FILE)
  if not os.path.exists(path):
    raise ConfigError(f"{run_dir} is not a training run ({path} missing)")
  with open(path, encoding="utf-8") as f:
    values = json.load(f)
  known = {field.name for field in dataclasses.fields(TrainConfig)}
  values = {key: value for key, value in values.items() if key in known}
  if "ks" in values:
    values["ks"] = tuple(values["ks"])
  return TrainConfig(**values)
