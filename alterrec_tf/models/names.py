"""The one list of models behind `--model`: names, what each needs, how reports show them.

Light on purpose (no TensorFlow import), so that flag definitions, the grid
and the report can read it without building anything.

AlterRec's ablations are typed settings (`AlterRecVariant`), not name strings:
`models.registry` hands the variant of `--model` to `AlterRec`, which reads
only the variant (never the model's name) to decide what it trains.
"""

import dataclasses
from typing import Dict, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class AlterRecVariant:
  """What one of AlterRec's ablations has and does.

  Attributes:
    towers: the uni-modal networks it has, ("id", "text"), ("id",) or ("text",).
    partner_negatives: hard phases take each tower's negatives from its
      partner's ranks k1..k2 (False: uniform negatives throughout, AlterRec_random
      and the single-tower ablations).
    augmented_positives: the top-p of the augmentation source are extra
      positives in hard phases (AlterRec_aug, `ModelSettings.p` and `beta`).
  """

  towers: Tuple[str, ...]
  partner_negatives: bool
  augmented_positives: bool

  def __post_init__(self) -> None:
    if not self.towers or not set(self.towers) <= {"id", "text"}:
      raise ValueError(f"an AlterRec variant has towers 'id' and/or 'text', not {self.towers}")
    if self.partner_negatives and len(self.towers) < 2:
      raise ValueError("partner negatives need both towers")
    if self.augmented_positives and not self.partner_negatives:
      raise ValueError("augmented positives come with the partner's ranking (partner negatives)")


# AlterRec and its ablations: model name -> its variant.
ALTERREC_VARIANTS: Dict[str, AlterRecVariant] = {
    "alterrec": AlterRecVariant(("id", "text"), partner_negatives=True,
                                augmented_positives=False),
    "alterrec_aug": AlterRecVariant(("id", "text"), partner_negatives=True,
                                    augmented_positives=True),
    "alterrec_random": AlterRecVariant(("id", "text"), partner_negatives=False,
                                       augmented_positives=False),
    "id_only": AlterRecVariant(("id",), partner_negatives=False, augmented_positives=False),
    "text_only": AlterRecVariant(("text",), partner_negatives=False, augmented_positives=False),
}
# model name -> the towers it has (what export, loading and the flag checks read).
ALTERREC_TOWERS: Dict[str, Tuple[str, ...]] = {
    name: variant.towers for name, variant in ALTERREC_VARIANTS.items()}
NEURAL_BASELINES = ("nfrec_sum", "nfrec_concat", "sasrec", "fdsa")
FLOORS = ("most_popular", "transition", "sequential_rules", "session_knn", "stan")
BASELINES = NEURAL_BASELINES + FLOORS

# Report order: floors, baselines, ablations, AlterRec.
ALL = FLOORS + ("sasrec", "fdsa", "nfrec_sum", "nfrec_concat", "id_only", "text_only",
                "alterrec_random", "alterrec", "alterrec_aug")
NEEDS_TEXT = ("alterrec", "alterrec_aug", "alterrec_random", "text_only", "nfrec_sum",
              "nfrec_concat", "fdsa")

DISPLAY_NAMES = {
    "most_popular": "MostPopular", "transition": "Transitions (1st order)",
    # the published floors by their papers (issue 35)
    "sequential_rules": "SR (Ludewig & Jannach 2018)",
    "session_knn": "V-SKNN (Ludewig & Jannach 2018)", "stan": "STAN (Garg et al. 2019)",
    "sasrec": "SASRec", "fdsa": "FDSA", "nfrec_sum": "NFRec (sum)",
    "nfrec_concat": "NFRec (concat)",
    "id_only": "AlterRec w/o text (ID only)", "text_only": "AlterRec w/o ID (text only)",
    "alterrec_random": "AlterRec_random", "alterrec": "AlterRec",
    "alterrec_aug": "AlterRec_aug",
}

assert set(ALL) == set(ALTERREC_TOWERS) | set(BASELINES) == set(DISPLAY_NAMES)

# RecBole's implementations run on our splits (`python -m alterrec_tf.peers`): their
# run folders are named recbole_<model> and come after ours in reports.
PEER_PREFIX = "recbole_"
PEER_DISPLAY_NAMES = {
    "sasrec": "SASRec", "gru4rec": "GRU4Rec", "bert4rec": "BERT4Rec", "srgnn": "SR-GNN",
    "core": "CORE", "fdsa": "FDSA", "s3rec": "S3-Rec"}
PEERS = tuple(PEER_PREFIX + name for name in PEER_DISPLAY_NAMES)
PEER_SOURCE = "RecBole 1.2.1"


# Grid entries may carry a variant: "<model>+keep" trains <model> with
# --seen_items=keep (the paper's plain setting) beside the default runs.
KEEP_SEEN_SUFFIX = "+keep"
KEEP_SEEN_GRID = ("sasrec" + KEEP_SEEN_SUFFIX, "alterrec" + KEEP_SEEN_SUFFIX)
DEFAULT_GRID = ALL + KEEP_SEEN_GRID


def split_variant(entry: str) -> Tuple[str, Optional[str]]:
  """A grid entry -> (model name, --seen_items override or None)."""
  if entry.endswith(KEEP_SEEN_SUFFIX):
    return entry[:-len(KEEP_SEEN_SUFFIX)], "keep"
  return entry, None


def display_name(model: str) -> str:
  """How tables and figures name a model (or a grid entry with a variant)."""
  base, seen_items = split_variant(model)
  if base in PEERS:
    return f"{PEER_DISPLAY_NAMES[base[len(PEER_PREFIX):]]} ({PEER_SOURCE})"
  name = DISPLAY_NAMES.get(base, base)
  return f"{name} (seen items kept)" if seen_items == "keep" else name


def order_key(model: str) -> Tuple[int, bool, str]:
  """Sort key putting models in report order (unknown names last, by name); a
  variant right after its model."""
  base, seen_items = split_variant(model)
  if base in ALL:
    position = ALL.index(base)
  else:
    position = len(ALL) + (PEERS.index(base) if base in PEERS else len(PEERS))
  return (position, seen_items is not None, model)
