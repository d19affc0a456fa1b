"""Embed a catalogue of new items for cold start at export time.

  python -m data_tools.embed_items --catalog=new_products.csv --text_fields=title \\
      --output=new_items/ [--data_dir=data/online_retail] [--id_column=id] \\
      [--text_backend=keras [--text_encoder_dir=text_encoder/]]

writes the table that `python -m alterrec_tf.export --new_items=new_items/`
adds to the served catalogue (format: `alterrec_tf.new_items`): new_items.tsv
(raw id, title), new_item_text_embeddings.npy [n, text_dim] and new_items.json.

Each item is embedded exactly as `data_tools.prepare` embeds the trained
catalogue (`data_tools.embed.item_text_table`: one vector per text field, the
mean over the fields that have text), with the same sentence model; with
--data_dir the model, fields and --text_backend default to that dataset's
manifest, and items already in its vocabulary are skipped (the exporter rejects
them), so a whole catalogue dump can be passed. `--text_backend=keras` runs the
model without torch (`data_tools.embed.load_keras_encoder`). An export with text
signatures (`alterrec_tf.export --text_signatures`) takes raw text instead and
needs no table at all.
"""

import os
from typing import List, Optional, Sequence

import numpy as np
from absl import app, flags

from alterrec_tf import cli
from alterrec_tf.formats import new_items as alter_new_items
from alterrec_tf.formats import schema
from data_tools import embed, tables
from data_tools.options import DEFAULT_TEXT_MODEL, TEXT_BACKENDS
from data_tools.sessions import DataToolsError, clean_text

ID_COLUMNS = ("id", "item_id", "raw_item_id", "product_id", "stockcode", "sku")


def embed_catalog(catalog: str, output: str, text_fields: Sequence[str] = ("title",),
                  text_model: Optional[str] = None, data_dir: Optional[str] = None,
                  id_column: Optional[str] = None, batch_size: int = 64,
                  encoder=None, text_backend: Optional[str] = None,
                  text_encoder_dir: str = "") -> dict:
  """Reads `catalog`, embeds its new items, writes the table; returns a summary.

  Args:
    catalog: CSV/TSV/Parquet with an id column and the text fields.
    output: folder to write.
    text_fields: columns to embed (default: the dataset's fields with data_dir).
    text_model: sentence model (default: the dataset's, else all-MiniLM-L6-v2).
    data_dir: the prepared dataset of the trained model (optional).
    id_column: the id column (default: the first of ID_COLUMNS present).
    batch_size: texts per embedding batch.
    encoder: an already loaded encoder (tests); default: load `text_model`.
    text_backend: sentence_transformers or keras (default: the dataset's, else
      sentence_transformers).
    text_encoder_dir: keras: the converted encoder folder ("" = in memory).
  """
  known = set()
  if data_dir:
    manifest = schema.load_manifest(data_dir)
    text_model = text_model or manifest.get("text_model")
    text_backend = text_backend or manifest.get("text_backend")
    text_fields = list(text_fields) or manifest.get("text_fields") or ["title"]
    known = {raw_id for raw_id, _ in schema.read_vocab(data_dir)}
  text_model = text_model or DEFAULT_TEXT_MODEL
  text_backend = text_backend or TEXT_BACKENDS[0]
  if text_backend not in TEXT_BACKENDS:
    raise DataToolsError(f"--text_backend={text_backend} must be one of "
                         f"{', '.join(TEXT_BACKENDS)}")
  fields = [field for field in text_fields if field]
  if not fields:
    raise DataToolsError("--text_fields is empty: nothing to embed")
  table = tables.read_table(catalog)
  id_name = tables.find_column(table, catalog, [id_column] if id_column else ID_COLUMNS)
  columns = [tables.find_column(table, catalog, [field]) for field in fields]
  ids = tables.id_strings(table[id_name], catalog, id_name)
  texts = table[columns].copy()
  texts.columns = fields
  for field in fields:
    texts[field] = texts[field].map(clean_text)
  texts.index = ids.to_numpy()
  duplicated = texts.index[texts.index.duplicated()]
  if len(duplicated):
    raise DataToolsError(f"{catalog}: item {duplicated[0]!r} is listed twice")
  skipped = [raw_id for raw_id in texts.index if raw_id in known]
  new = [raw_id not in known for raw_id in texts.index]
  rows = np.arange(1, len(texts) + 1)[new]  # 1-based data rows of the catalogue
  texts = texts.loc[new]
  if not len(texts):
    raise DataToolsError(f"{catalog}: no new item (all {len(skipped)} are in {data_dir})")
  check_text(texts, fields, rows, catalog)  # before the sentence model loads
  encoder = encoder or embed.load_encoder(text_model, text_backend, text_encoder_dir)
  vectors = embed.item_text_table(encoder, texts, fields, batch_size, require_text=True)[1:]
  title_field = "title" if "title" in fields else fields[0]
  alter_new_items.write(output, list(texts.index), list(texts[title_field]), vectors,
                        text_model)
  return {"output": output, "num_items": len(texts), "skipped_known": len(skipped),
          "text_dim": int(vectors.shape[1]), "text_model": text_model, "fields": fields,
          "text_backend": text_backend}


def check_text(texts, fields: Sequence[str], rows, catalog: str) -> None:
  """Refuses a new item without text in every field (it would get a zero
  vector: nothing to score it by).

  Raises:
    DataToolsError: naming the catalogue, the first such item's row and id.
  """
  has_text = np.zeros(len(texts), bool)
  for field in fields:
    has_text |= texts[field].fillna("").astype(str).to_numpy() != ""
  missing = np.flatnonzero(~has_text)
  if len(missing):
    first = missing[0]
    raise DataToolsError(
        f"{catalog}, row {rows[first]}: item {texts.index[first]!r} has no text in "
        f"{', '.join(fields)} ({len(missing)} such item(s)); every new item needs text: "
        "add it to the catalogue, drop the item, or embed other --text_fields")


def define_flags():
  flags.DEFINE_string("catalog", None, "CSV/TSV/Parquet of the new items: an id column "
                      "and the text fields.")
  flags.DEFINE_string("output", None, "Folder to write the new-item table to.")
  flags.DEFINE_list("text_fields", [], "Columns to embed; default: the dataset's "
                    "(--data_dir), else title.")
  flags.DEFINE_string("text_model", None, "Sentence model; default: the dataset's, else "
                      f"{DEFAULT_TEXT_MODEL}.")
  flags.DEFINE_string("data_dir", None, "Prepared dataset of the trained model: its "
                      "sentence model and fields are the defaults, its items are skipped.")
  flags.DEFINE_string("id_column", None, f"Id column; default the first of {ID_COLUMNS}.")
  flags.DEFINE_integer("embedding_batch_size", 64, "Texts per embedding batch.")
  flags.DEFINE_enum("text_backend", None, list(TEXT_BACKENDS), "What runs the sentence "
                    "model; default: the dataset's (--data_dir), else "
                    f"{TEXT_BACKENDS[0]}. keras needs no torch.")
  flags.DEFINE_string("text_encoder_dir", "", "--text_backend=keras: converted encoder "
                      "folder to reuse (written from the model when missing); empty = "
                      "convert in memory.")


def main(argv: List[str]):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  values = flags.FLAGS
  if not values.catalog or not values.output:
    raise cli.CommandError("--catalog and --output are required (the new items' table and "
                           "the folder to write)")
  summary = embed_catalog(values.catalog, values.output,
                          values.text_fields or ([] if values.data_dir else ["title"]),
                          values.text_model, values.data_dir, values.id_column,
                          values.embedding_batch_size, text_backend=values.text_backend,
                          text_encoder_dir=values.text_encoder_dir)
  print(f"wrote {summary['num_items']} new items ({summary['text_dim']}-d, "
        f"{summary['text_model']} via {summary['text_backend']}, "
        f"fields {','.join(summary['fields'])}) to "
        f"{os.path.abspath(summary['output'])}"
        + (f"; skipped {summary['skipped_known']} already trained" if summary["skipped_known"]
           else ""))


def run():
  """The one error path of the training commands (`alterrec_tf.cli`): a bad flag,
  catalogue or dataset is one `error:` line, exit status 1."""
  define_flags()
  cli.run(main, known=(DataToolsError, alter_new_items.NewItemsError), verify_data=False)


if __name__ == "__main__":
  run()
