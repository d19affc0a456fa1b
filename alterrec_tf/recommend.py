"""Print the top-k of one session from an exported SavedModel, with item titles.

  python -m alterrec_tf.recommend --export_dir=models/alterrec \\
      --items=85123A,71053,84406B [--k=10]

--export_dir is a version folder or its parent (the highest version is used).
It needs only TensorFlow and the export: the SavedModel's `raw_ids` signature
maps raw ids (unknown ones are ignored and counted), and the titles come from
its assets/serving_vocab.tsv. The padding token "[PAD]" is not an item: given
as an id, it is ignored and counted like any unknown id. --k and --export_dir
are checked before TensorFlow is loaded; a refused command prints one line.
tensorflow_text is imported before the export is loaded: an export with text
signatures (`alterrec_tf.export --text_signatures`) holds its tokenizer's ops.
"""

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from alterrec_tf import cli
from alterrec_tf.formats import schema

TITLE_WIDTH = 60
VOCAB_ASSET = "serving_vocab.tsv"  # = serving.module.VOCAB_ASSET (without importing TF)
EXPORT_INFO = os.path.join("assets.extra", "alterrec_export.json")  # = export.py's
REEXPORT_HINT = ("export the run again (python -m alterrec_tf.export) and point --export_dir "
                 "at the new version")


def resolve_version_dir(export_dir: str) -> str:
  """A version folder itself, or the highest numbered version inside it."""
  if os.path.exists(os.path.join(export_dir, "saved_model.pb")):
    return export_dir
  versions = []
  if os.path.isdir(export_dir):
    versions = sorted(int(n) for n in os.listdir(export_dir)
                      if n.isdigit() and os.path.exists(
                          os.path.join(export_dir, n, "saved_model.pb")))
  if not versions:
    raise FileNotFoundError(f"no SavedModel in {export_dir} (neither saved_model.pb "
                            "nor a numbered version folder holding one)")
  return os.path.join(export_dir, str(versions[-1]))


def read_titles(version_dir: str) -> Dict[str, str]:
  """raw id -> title of every item in the export's vocabulary asset (not the
  padding row 0)."""
  titles = {}
  with open(os.path.join(version_dir, "assets", VOCAB_ASSET), encoding="utf-8") as f:
    for line in f:
      index, raw_id, title = (line.rstrip("\n").split("\t", 2) + ["", ""])[:3]
      if index != str(schema.PADDING_INDEX):
        titles[raw_id] = title
  return titles


def catalogue_size(version_dir: str) -> Optional[int]:
  """Items an export can recommend (its vocabulary without padding), or None
  where the export holds no alterrec_export.json."""
  path = os.path.join(version_dir, EXPORT_INFO)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return int(json.load(f)["num_items"]) - 1
  except (ValueError, KeyError, TypeError):
    raise cli.CommandError(f"{path} is damaged (cut or edited); {REEXPORT_HINT}") from None


def check_request(export_dir: Optional[str], k: Optional[int]) -> str:
  """Checks --export_dir and --k before TensorFlow is loaded; returns the
  version folder.

  Raises:
    CommandError: one line naming the flag.
  """
  if not export_dir:
    raise cli.CommandError("--export_dir is required (a version folder of "
                           "alterrec_tf.export, or its parent)")
  if k is not None and k < 1:
    raise cli.CommandError(f"--k={k} must be at least 1 (items to recommend); leave it "
                           "unset for the k fixed at export")
  try:
    version_dir = resolve_version_dir(export_dir)
  except FileNotFoundError as error:
    raise cli.CommandError(f"--export_dir: {error}; export a run with "
                           "python -m alterrec_tf.export") from None
  items = catalogue_size(version_dir)
  if k is not None and items is not None and k > items:
    raise cli.CommandError(f"--k={k} is above the {items} items of {version_dir}")
  return version_dir


def split_padding(items: Sequence[str]) -> Tuple[List[str], int]:
  """(the session without the padding token, how many times it was given).

  "[PAD]" names vocabulary row 0, the padding index: it is not an item, so it
  is ignored and counted with the unknown ids instead of being sent."""
  kept = [i for i in items if i != schema.PADDING_TOKEN]
  return kept, len(items) - len(kept)


# One recommended item: (rank, raw id, score).
Row = Tuple[int, str, float]


def load_export(version_dir: str) -> Any:
  """tf.saved_model.load of an export.

  Raises:
    CommandError: the SavedModel is damaged (a cut saved_model.pb, a missing
      or cut variables/): one line naming what TensorFlow could not read.
  """
  import tensorflow as tf
  try:
    return tf.saved_model.load(version_dir)
  except (OSError, ValueError, tf.errors.OpError) as error:
    problem = cli.io_problem(error)
    if problem and "check the path" not in problem:  # disk or permission: as any command
      raise
    detail = " ".join(str(getattr(error, "message", "") or error).split())[:300]
    raise cli.CommandError(f"the SavedModel in {version_dir} cannot be loaded, it is damaged "
                           f"or incomplete ({detail}); {REEXPORT_HINT}") from None


def recommend(version_dir: str, items: Sequence[str], k: Optional[int] = None,
              loaded: Any = None) -> Tuple[List[Row], int, bool]:
  """Runs the raw-id signature on one session; returns (rows, ignored, fallback).

  rows: [(rank, raw_id, score)] best first.
  """
  # tensorflow_text: the ops of the text signatures' tokenizer register on import (0.3 s)
  import tensorflow as tf
  import tensorflow_text  # noqa: F401

  from alterrec_tf.serving import module as serving
  loaded = loaded or load_export(version_dir)
  session = tf.constant([[str(i) for i in items] or [""]], tf.string)
  if k is None:
    out = loaded.signatures[serving.SIGNATURE_RAW](raw_item_ids=session)
  else:
    out = loaded.signatures[serving.SIGNATURE_RAW_TOP_K](raw_item_ids=session,
                                                         k=tf.constant(k, tf.int32))
  ids = [i.decode("utf-8") for i in out[serving.OUTPUT_ITEM_IDS].numpy()[0]]
  scores = out[serving.OUTPUT_SCORES].numpy()[0]
  rows = [(rank + 1, raw_id, float(score)) for rank, (raw_id, score) in enumerate(zip(ids, scores))]
  return (rows, int(out[serving.OUTPUT_IGNORED].numpy()[0]),
          bool(out[serving.OUTPUT_FALLBACK].numpy()[0]))


def _cut(text: str, width: int = TITLE_WIDTH) -> str:
  return text if len(text) <= width else text[:width - 1] + "…"


def format_recommendations(items: Sequence[str], rows: Sequence[Row], ignored: int, fallback: bool,
                           titles: Dict[str, str]) -> str:
  lines = ["session:"]
  for raw_id in items:
    title = titles.get(raw_id)
    lines.append(f"  {raw_id:<12} {_cut(title) if title is not None else '(unknown id: ignored)'}")
  if ignored:
    lines.append(f"{ignored} unknown item id(s) ignored")
  if fallback:
    lines.append("no known item in the session: the most popular items "
                 "(score = training count)")
  width = max([len(r[1]) for r in rows] + [7])
  lines.append(f"{'rank':>4}  {'item id':<{width}}  {'score':>10}  title")
  for rank, raw_id, score in rows:
    lines.append(f"{rank:>4}  {raw_id:<{width}}  {score:>10.4f}  {_cut(titles.get(raw_id, ''))}")
  return "\n".join(lines)


def define_flags() -> None:
  from absl import flags
  flags.DEFINE_string("export_dir", None, "A version folder of the export, or its parent "
                      "(the highest version is used).")
  flags.DEFINE_list("items", [], "The session: raw item ids, oldest first, comma-separated.")
  flags.DEFINE_integer("k", None, "How many items; default: the k fixed at export.")


def main(argv: List[str]) -> None:
  del argv
  from absl import flags
  values = flags.FLAGS
  version_dir = check_request(values.export_dir, values.k)
  items = [i.strip() for i in values.items if i.strip()]
  request, padding = split_padding(items)
  rows, ignored, fallback = recommend(version_dir, request, values.k)
  print(f"model: {version_dir}")
  print(format_recommendations(items, rows, ignored + padding, fallback,
                               read_titles(version_dir)))


def run() -> None:
  from alterrec_tf import flagfiles
  define_flags()
  cli.run(main, flagfiles.PREPARE_FLAG_NAMES, verify_data=False)


if __name__ == "__main__":
  run()
