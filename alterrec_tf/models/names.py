"""The one list of models behind `--model`: names, what each needs, how reports show them.

Light on purpose (no TensorFlow import), so that flag definitions, the grid
and the report can read it without building anything.
"""

from typing import Dict, Tuple

# AlterRec and its ablations: model name -> the towers it has.
ALTERREC_TOWERS: Dict[str, Tuple[str, ...]] = {
    "alterrec": ("id", "text"),
    "alterrec_aug": ("id", "text"),
    "alterrec_random": ("id", "text"),
    "id_only": ("id",),
    "text_only": ("text",),
}
NEURAL_BASELINES = ("nfrec_sum", "nfrec_concat", "sasrec", "fdsa")
FLOORS = ("most_popular", "transition", "sequential_rules", "session_knn")
BASELINES = NEURAL_BASELINES + FLOORS

# Report order: floors, baselines, ablations, AlterRec.
ALL = FLOORS + ("sasrec", "fdsa", "nfrec_sum", "nfrec_concat", "id_only", "text_only",
                "alterrec_random", "alterrec", "alterrec_aug")
NEEDS_TEXT = ("alterrec", "alterrec_aug", "alterrec_random", "text_only", "nfrec_sum",
              "nfrec_concat", "fdsa")

DISPLAY_NAMES = {
    "most_popular": "MostPopular", "transition": "Transitions (1st order)",
    "sequential_rules": "SequentialRules (SR)", "session_knn": "V-SKNN", "sasrec": "SASRec",
    "fdsa": "FDSA", "nfrec_sum": "NFRec (sum)", "nfrec_concat": "NFRec (concat)",
    "id_only": "AlterRec w/o text (ID only)", "text_only": "AlterRec w/o ID (text only)",
    "alterrec_random": "AlterRec_random", "alterrec": "AlterRec",
    "alterrec_aug": "AlterRec_aug",
}

assert set(ALL) == set(ALTERREC_TOWERS) | set(BASELINES) == set(DISPLAY_NAMES)


def display_name(model: str) -> str:
  """How tables and figures name a model."""
  return DISPLAY_NAMES.get(model, model)


def order_key(model: str):
  """Sort key putting models in report order (unknown names last, by name)."""
  return (ALL.index(model) if model in ALL else len(ALL), model)
