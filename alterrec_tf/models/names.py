"""The one list of models behind `--model`: names, what each needs, how reports show them.

Light on purpose (no TensorFlow import), so that flag definitions, the grid
and the report can read it without building anything.
"""

from typing import Dict, Optional, Tuple

# AlterRec and its ablations: model name -> the towers it has.
ALTERREC_TOWERS: Dict[str, Tuple[str, ...]] = {
    "alterrec": ("id", "text"),
    "alterrec_aug": ("id", "text"),
    "alterrec_random": ("id", "text"),
    "id_only": ("id",),
    "text_only": ("text",),
}
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
    "sequential_rules": "SequentialRules (SR)", "session_knn": "V-SKNN", "stan": "STAN",
    "sasrec": "SASRec", "fdsa": "FDSA", "nfrec_sum": "NFRec (sum)",
    "nfrec_concat": "NFRec (concat)",
    "id_only": "AlterRec w/o text (ID only)", "text_only": "AlterRec w/o ID (text only)",
    "alterrec_random": "AlterRec_random", "alterrec": "AlterRec",
    "alterrec_aug": "AlterRec_aug",
}

assert set(ALL) == set(ALTERREC_TOWERS) | set(BASELINES) == set(DISPLAY_NAMES)


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
  name = DISPLAY_NAMES.get(base, base)
  return f"{name} (seen items kept)" if seen_items == "keep" else name


def order_key(model: str):
  """Sort key putting models in report order (unknown names last, by name); a
  variant right after its model."""
  base, seen_items = split_variant(model)
  return (ALL.index(base) if base in ALL else len(ALL), seen_items is not None, model)
