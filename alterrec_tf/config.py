"""Training flags, grouped by concern, and the frozen `TrainConfig` built from them.

Defaults follow the paper (section 5.1.3, Appendix G) and, where the paper is
silent, the authors' reference code (see BUILD_NOTES.md, "Paper vs reference").
Each behaviour where the reference code differs from the paper is a flag that
defaults to the paper.
"""

import dataclasses
import json
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, List, Optional, Set

from absl import flags

from alterrec_tf.models import names as model_names

if TYPE_CHECKING:
  import numpy as np

_DEFINED: Set[str] = set()


def _define(kind: str, name: str, default: Any, *args, **kwargs) -> flags.FlagHolder:
  """DEFINE_<kind>(name, default, ...) that also records the flag's name."""
  _DEFINED.add(name)
  return getattr(flags, "DEFINE_" + kind)(name, default, *args, **kwargs)


# --- data and run --------------------------------------------------------------
_define("string", "data_dir", "", "Folder written by data_tools.prepare.")
_define("string", "run_dir", "runs/default",
        "Folder for checkpoints, TensorBoard logs and results.json.")
_define("enum", "model", "alterrec",
        list(model_names.ALL),
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
_define("enum", "loss_weighting", "prefix", ["prefix", "batch"],
        "'prefix': a batch's loss is the sum over its scored prefixes divided by the "
        "training split's mean prefixes per batch, so every prefix weighs the same in "
        "every step (the paper's sum over sessions, Eq. 8-9, up to one constant). "
        "'batch': the mean over the batch's prefixes (earlier behaviour: prefixes of "
        "short-window batches weigh more).")
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
_define("enum", "hard_negative_selection", "top_k", ["top_k", "argpartition"],
        "How the partner's top k2 are found for the hard negatives: 'top_k' "
        "(tf.math.top_k, unsorted; in the graph on any device) or 'argpartition' "
        "(numpy's introselect on the host, ~6x faster on CPU at k2=2000: the same "
        "set of items except among scores tied at the k2-th place; BUILD_NOTES.md, "
        "\"Hard-negative selection\"). Catalogues scored in chunks always use top_k.")
_define("integer", "p", 5, "Augmented positives: the partner's top-p (aug model).")
_define("float", "beta", 0.5, "Weight of augmented positives (Eq. 10-11).")
_define("float", "alpha", 0.5, "Inference weight of the ID score (Eq. 12).")
_define("boolean", "tune_alpha", False,
        "After training, choose alpha on the validation split (grid 0, 0.1, ..., 1; the "
        "best fused Hits@20 at the selected epoch's weights, ties to --alpha): the test "
        "figures, results.json ('alpha') and the export use it. The paper tunes alpha "
        "(its Figure 7); off: --alpha as given.")
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

# --- levers of the mechanism study (issue 32); each default is the paper ------
_define("enum", "softmax", "sampled", ["sampled", "full"],
        "Each tower's loss: 'sampled' (paper, Eq. 8-9: softmax over the target and the "
        "k2-k1 negatives) or 'full' (softmax over the whole catalogue; in hard phases "
        "plus --hard_negative_weight times the sampled loss over the partner's negatives). "
        "Not with --score_chunk_size.")
_define("float", "hard_negative_weight", 1.0,
        "--softmax=full: weight of the hard-negative term added in hard phases (0: the "
        "full softmax alone, i.e. independent training).")
_define("float", "hard_negative_gate", 0.0,
        "Competence gate: a hard epoch of a tower uses its partner's negatives only if the "
        "partner's last validation Hits@20 is at least this times the tower's own; else "
        "uniform negatives (paper 0: always). E.g. 0.9.")
_define("integer", "random_share_decay_epochs", 0,
        "Anneal --random_negative_share linearly to 0 over this many hard epochs (counted "
        "over both towers); 0: constant share (paper / reference code).")
_define("enum", "tower_selection", "fused", ["fused", "each"],
        "Which weights are tested: those of the epoch with the best validation Hits@20 "
        "of the fused score (paper) or, 'each', every network at the epoch of its own "
        "best validation Hits@20, with alpha chosen on validation for that combination "
        "(needs --tune_alpha; training.tower_selection).")
_define("float", "false_negative_cosine", 0.0,
        "False-negative guard: drop a hard negative whose item text (the frozen SBERT "
        "vectors) has at least this cosine with the target's (0: off, the paper). Needs "
        "item text; not with --score_chunk_size.")
_define("integer", "false_negative_cooccurrence", 0,
        "False-negative guard by co-occurrence: drop a hard negative that is among the "
        "target's N most frequent partners in the training sessions (items sharing the "
        "most sessions with it; 0: off, the paper). E.g. 20.")

# --- evaluation and operations -------------------------------------------------
_define("enum", "seen_items", "auto", ["auto", "exclude", "keep"],
        "Items already in the prefix: 'exclude' scores them out (-1e9) in training "
        "(never a negative or an augmented positive), evaluation and export; 'keep' "
        "ranks them like any item (the paper's plain setting); 'auto' excludes them "
        "when the dataset's manifest says sessions were de-duplicated (so such an "
        "item is never the answer), else keeps them. The run's config.json records "
        "the resolved value.")
_define("integer", "score_chunk_size", 0,
        "Items scored at once (0: the whole catalogue). With a catalogue larger than "
        "this, evaluation and hard-negative selection rank it in chunks with a running "
        "top-k (same ranks; memory set by the chunk, not the catalogue), and the trained "
        "tower scores only the items its loss reads. For catalogues of ~100k items or "
        "more (BUILD_NOTES.md, \"Catalogues of a million items\").")
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
_define("integer", "verbose", 1,
        "Progress: 0 silent, 1 one line per epoch (phase, each head's validation "
        "Hits@20 / NDCG@20, time), 2 also Keras' progress bar.")
_define("enum", "distribution", "none", ["none", "mirrored", "multi_worker"],
        "tf.distribute strategy of training: 'none' (one process, no strategy), "
        "'mirrored' (MirroredStrategy over this machine's devices), 'multi_worker' "
        "(MultiWorkerMirroredStrategy over the cluster of the TF_CONFIG environment "
        "variable; start one process per worker). Each global batch of --batch_size "
        "windows is split between the replicas; only the chief writes run_dir. See "
        "BUILD_NOTES.md, 'Training under tf.distribute'.")
_define("float", "cluster_timeout_s", 300.0,
        "--distribution=multi_worker: seconds to wait for every worker of TF_CONFIG to "
        "answer and the cluster to start; then the run ends with one line naming the "
        "workers not reached.")


class ConfigError(ValueError):
  """Flags that contradict each other or the dataset."""


def defined_flag_names() -> FrozenSet[str]:
  """Every flag this module defines (for the shared flagfile parser)."""
  return frozenset(_DEFINED)


def _default(name: str) -> Any:
  """The default of flag `name`, as TrainConfig holds it: each default is
  written once, in the flag definition above."""
  value: Any = flags.FLAGS[name].default
  if name == "ks":
    return tuple(sorted(int(k) for k in value))
  return value


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every knob of a training run; built from flags or directly in tests.

  Each field's default is its flag's default (`_default`).
  """
  data_dir: str = _default("data_dir")
  run_dir: str = _default("run_dir")
  model: str = _default("model")
  seed: int = _default("seed")
  max_len: int = _default("max_len")
  train_window_stride: int = _default("train_window_stride")
  eval_window_stride: int = _default("eval_window_stride")
  batch_size: int = _default("batch_size")
  eval_batch_size: int = _default("eval_batch_size")
  embedding_dim: int = _default("embedding_dim")
  id_encoder: str = _default("id_encoder")
  text_encoder: str = _default("text_encoder")
  num_layers: int = _default("num_layers")
  num_heads: int = _default("num_heads")
  dropout: float = _default("dropout")
  nfrec_fusion: str = _default("nfrec_fusion")
  learning_rate: float = _default("learning_rate")
  loss_weighting: str = _default("loss_weighting")
  lr_decay: float = _default("lr_decay")
  lr_decay_epochs_id: int = _default("lr_decay_epochs_id")
  lr_decay_epochs_text: int = _default("lr_decay_epochs_text")
  id_table_norm: bool = _default("id_table_norm")
  init: str = _default("init")
  k1: int = _default("k1")
  k2: int = _default("k2")
  hard_negative_selection: str = _default("hard_negative_selection")
  p: int = _default("p")
  beta: float = _default("beta")
  alpha: float = _default("alpha")
  tune_alpha: bool = _default("tune_alpha")
  m_random: int = _default("m_random")
  m_gap: int = _default("m_gap")
  m_max: int = _default("m_max")
  random_negative_share: float = _default("random_negative_share")
  text_temperature: float = _default("text_temperature")
  augmentation_source: str = _default("augmentation_source")
  softmax: str = _default("softmax")
  hard_negative_weight: float = _default("hard_negative_weight")
  hard_negative_gate: float = _default("hard_negative_gate")
  random_share_decay_epochs: int = _default("random_share_decay_epochs")
  false_negative_cosine: float = _default("false_negative_cosine")
  false_negative_cooccurrence: int = _default("false_negative_cooccurrence")
  tower_selection: str = _default("tower_selection")
  seen_items: str = _default("seen_items")
  score_chunk_size: int = _default("score_chunk_size")
  ks: tuple = _default("ks")
  mrr_k: int = _default("mrr_k")
  early_stopping_patience: int = _default("early_stopping_patience")
  test_every_epoch: bool = _default("test_every_epoch")
  resume: bool = _default("resume")
  overwrite: bool = _default("overwrite")
  verbose: int = _default("verbose")
  distribution: str = _default("distribution")
  cluster_timeout_s: float = _default("cluster_timeout_s")

  @classmethod
  def from_flags(cls) -> "TrainConfig":
    values: Dict[str, Any] = {}
    for field in dataclasses.fields(cls):
      value: Any = flags.FLAGS[field.name].value
      if field.name == "ks":
        value = tuple(sorted(int(k) for k in value))
      values[field.name] = value
    return cls(**values)

  def replace(self, **changes) -> "TrainConfig":
    return dataclasses.replace(self, **changes)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  def to_flags(self) -> List[str]:
    """The `alterrec_tf.train` flags of this config that differ from the
    defaults: ["--name=value", ...] (lists comma-joined, booleans lower case)."""
    defaults = TrainConfig()
    flag_list = []
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value == getattr(defaults, field.name):
        continue
      if isinstance(value, (tuple, list)):
        value = ",".join(map(str, value))
      flag_list.append(f"--{field.name}={str(value).lower() if isinstance(value, bool) else value}")
    return flag_list

  @property
  def num_negatives(self) -> int:
    return self.k2 - self.k1

  @property
  def max_k(self) -> int:
    return max(max(self.ks), self.mrr_k)


def resolve_seen_items(config: TrainConfig, manifest: dict) -> TrainConfig:
  """`config` with --seen_items=auto resolved from the manifest (idempotent)."""
  if config.seen_items != "auto":
    return config
  deduplicated = bool(manifest.get("sessions_deduplicated", False))
  return config.replace(seen_items="exclude" if deduplicated else "keep")


def _need(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def check_flags(config: TrainConfig) -> None:
  """Refuses flag values outside their range (no dataset needed, nothing built).

  Raises:
    ConfigError: naming the flag, its value and the range it must be in.
  """
  positive = ("batch_size", "eval_batch_size", "embedding_dim", "max_len",
              "train_window_stride", "eval_window_stride", "num_layers", "num_heads",
              "m_max", "m_gap", "lr_decay_epochs_id", "lr_decay_epochs_text", "mrr_k",
              "early_stopping_patience")
  for name in positive:
    value = getattr(config, name)
    _need(value >= 1, f"--{name}={value} must be at least 1")
  _need(config.seed >= 0, f"--seed={config.seed} must be 0 or more")
  _need(config.m_random >= 0, f"--m_random={config.m_random} must be 0 or more")
  _need(config.score_chunk_size >= 0,
        f"--score_chunk_size={config.score_chunk_size} must be 0 (whole catalogue) or more")
  _need(config.num_heads <= config.embedding_dim,
        f"--num_heads={config.num_heads} must be at most --embedding_dim="
        f"{config.embedding_dim} (each head has embedding_dim / num_heads dimensions)")
  _need(0.0 <= config.dropout < 1.0, f"--dropout={config.dropout} must be in [0, 1)")
  _need(config.learning_rate > 0.0, f"--learning_rate={config.learning_rate} must be above 0")
  _need(0.0 < config.lr_decay <= 1.0, f"--lr_decay={config.lr_decay} must be in (0, 1] "
        "(1 = no decay)")
  for name in ("alpha", "random_negative_share"):
    value = getattr(config, name)
    _need(0.0 <= value <= 1.0, f"--{name}={value} must be in [0, 1]")
  _need(config.beta >= 0.0, f"--beta={config.beta} must be 0 or more")
  for name in ("hard_negative_weight", "hard_negative_gate"):
    value = getattr(config, name)
    _need(value >= 0.0, f"--{name}={value} must be 0 or more")
  _need(config.random_share_decay_epochs >= 0,
        f"--random_share_decay_epochs={config.random_share_decay_epochs} must be 0 or more")
  _need(config.tower_selection == "fused" or config.tune_alpha,
        "--tower_selection=each needs --tune_alpha (alpha is chosen on validation for the "
        "combination of each network's best weights)")
  _need(0.0 <= config.false_negative_cosine <= 1.0,
        f"--false_negative_cosine={config.false_negative_cosine} must be in [0, 1] (0: off)")
  _need(config.false_negative_cooccurrence >= 0,
        f"--false_negative_cooccurrence={config.false_negative_cooccurrence} must be 0 "
        "(off) or more")
  for name, on in (("softmax", config.softmax == "full"),
                   ("false_negative_cosine", config.false_negative_cosine > 0.0)):
    _need(not (on and config.score_chunk_size),
          f"--{name}={getattr(config, name)} cannot be combined with --score_chunk_size="
          f"{config.score_chunk_size} (it reads the [prefixes, items] score matrix)")
  _need(config.text_temperature > 0.0,
        f"--text_temperature={config.text_temperature} must be above 0")
  _need(bool(config.ks) and min(config.ks) >= 1,
        f"--ks={','.join(map(str, config.ks))} must be cut-offs of at least 1")
  _need(config.verbose in (0, 1, 2), f"--verbose={config.verbose} must be 0, 1 or 2")
  _need(config.cluster_timeout_s > 0.0,
        f"--cluster_timeout_s={config.cluster_timeout_s} must be above 0")
  _need(config.distribution == "none" or config.loss_weighting == "prefix",
        f"--distribution={config.distribution} needs --loss_weighting=prefix (a batch's "
        "loss is then a sum over prefixes that splits between replicas; the per-batch "
        "mean of --loss_weighting=batch does not)")


def check_against_dataset(config: TrainConfig, manifest: dict,
                          text_embeddings: Optional["np.ndarray"] = None) -> None:
  """Refuses flags that contradict the prepared dataset (before anything is built).

  Checks the flags' ranges (`check_flags`) first, then what the model needs of
  the data: item text for `models.names.NEEDS_TEXT` (a table that is not all
  zeros), a validation split for every trained model (model selection), and
  cut-offs and hard-negative ranks within the catalogue.

  Args:
    config: the run's flags.
    manifest: the dataset's manifest.
    text_embeddings: its text table; None: read from config.data_dir when the
      model needs text.

  Raises:
    ConfigError: naming the flag and the limit it breaks, or what the data lacks.
  """
  # (numpy and the schema only when a dataset is checked: config loads for --help)
  from alterrec_tf.formats import schema
  check_flags(config)
  data_dir = config.data_dir
  catalogue = manifest["num_items"] - 1  # without the padding row
  if config.model in model_names.NEEDS_TEXT:
    _need(bool(manifest.get("text_dim")),
          f"--model={config.model} needs item text, and {data_dir} was prepared without "
          "it; prepare the data with --text_fields, or train a model without text "
          "(id_only, sasrec or a floor)")
    if text_embeddings is None:
      text_embeddings = schema.load_text_embeddings(data_dir, manifest)
    without = schema.items_without_text(text_embeddings)
    _need(without < catalogue,
          f"--model={config.model} needs item text, and every item's text vector in "
          f"{data_dir}/{schema.TEXT_EMBEDDINGS_FILE} is zero (prepared with "
          "--norequire_text and no text matched); fix --text_fields / --catalog_path and "
          "prepare again, or train a model without text (id_only, sasrec or a floor)")
  if config.model not in model_names.FLOORS:
    _need(bool(manifest["files"].get("valid")),
          f"{data_dir} has no validation split (prepared with --valid_fraction=0), which "
          f"--model={config.model} needs to select its epoch; prepare with "
          "--valid_fraction above 0")
  for k in sorted(set(config.ks) | {config.mrr_k}):
    _need(k <= catalogue,
          f"cut-off {k} (--ks / --mrr_k) is above the {catalogue} items of {data_dir}")
  if config.model not in model_names.ALTERREC_TOWERS:  # baselines: no sampled negatives
    return
  if config.k2 >= catalogue:
    raise ConfigError(
        f"--k2={config.k2} must be below the number of items "
        f"({catalogue}) of {data_dir}")
  if not 0 <= config.k1 < config.k2:
    raise ConfigError(f"need 0 <= --k1 < --k2, got k1={config.k1} k2={config.k2}")
  augments = model_names.ALTERREC_VARIANTS[config.model].augmented_positives
  if augments and not 0 < config.p <= config.k1:
    raise ConfigError(
        f"{config.model} needs 0 < --p <= --k1 (augmented positives rank above the "
        f"hard negatives), got p={config.p} k1={config.k1}")
