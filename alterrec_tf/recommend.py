"""Print the top-k of one session from an exported SavedModel, with item titles.

  python -m alterrec_tf.recommend --export_dir=models/alterrec \\
      --items=85123A,71053,84406B [--k=10]

--export_dir is a version folder or its parent (the highest version is used).
It needs only TensorFlow and the export: the SavedModel's `raw_ids` signature
maps raw ids (unknown ones are ignored and counted), and the titles come from
its assets/serving_vocab.tsv.
"""

import os
import sys
from typing import Dict, List, Optional, Sequence

from alterrec_tf.serving import module as serving

TITLE_WIDTH = 60


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
  """raw id -> title from the export's vocabulary asset."""
  titles = {}
  with open(os.path.join(version_dir, "assets", serving.VOCAB_ASSET), encoding="utf-8") as f:
    for line in f:
      _, raw_id, title = (line.rstrip("\n").split("\t", 2) + ["", ""])[:3]
      titles[raw_id] = title
  return titles


def recommend(version_dir: str, items: Sequence[str], k: Optional[int] = None, loaded=None):
  """Runs the raw-id signature on one session; returns (rows, ignored, fallback).

  rows: [(rank, raw_id, score)] best first.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  loaded = loaded or tf.saved_model.load(version_dir)
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


def format_recommendations(items: Sequence[str], rows, ignored: int, fallback: bool,
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


def define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("export_dir", None, "A version folder of the export, or its parent "
                      "(the highest version is used).")
  flags.DEFINE_list("items", [], "The session: raw item ids, oldest first, comma-separated.")
  flags.DEFINE_integer("k", None, "How many items; default: the k fixed at export.")


def main(argv: List[str]):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  values = flags.FLAGS
  if not values.export_dir:
    raise SystemExit("error: --export_dir is required")
  try:
    version_dir = resolve_version_dir(values.export_dir)
  except FileNotFoundError as error:
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(1) from None
  items = [i.strip() for i in values.items if i.strip()]
  rows, ignored, fallback = recommend(version_dir, items, values.k)
  print(f"model: {version_dir}")
  print(format_recommendations(items, rows, ignored, fallback, read_titles(version_dir)))


def run():
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
