"""Raw logs -> prepared dataset folder (vocabulary, TFRecord sessions, text table).

  python -m data_tools.prepare --flagfile=configs/online_retail.flags \\
      --raw_path=../shared/datasets/online_retail/online_retail.parquet \\
      --output_dir=data/online_retail

Steps: read the raw layout (`data_tools.readers`), filter rare items and short
sessions (`data_tools.filtering`), split layouts that come unsplit
(`data_tools.splits`), truncate, drop validation/test items unseen in training
(except for layouts whose validation/test rows are kept whole: RecBole), then
write the folder atomically (`data_tools.writer`) with the item text table
(`data_tools.embed`) and `manifest.json`. Bad input raises `DataToolsError`;
the command line prints `error: <message>` and exits with status 1.
"""

import dataclasses
import os
import sys
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd
from absl import app, flags, logging

from alterrec_tf import cli, flagfiles
from alterrec_tf.formats import identity, schema
from data_tools import embed, filtering, readers, splits, writer
from data_tools import sessions as S
from data_tools.counts import SessionStats, SplitCounts, session_stats
from data_tools.options import PrepareOptions, option_fields

FILTER_RULE = (
    "items seen in fewer than min_item_count sessions (all splits) are removed "
    "and sessions shorter than min_session_length dropped, repeated until "
    "stable; then the split; then sessions longer than max_session_length "
    "(0 = no limit) keep their last items; then validation/test items never "
    "seen in training are removed and sessions that become too short dropped")
KEEP_EVAL_ROWS_RULE = (
    "validation/test rows are kept whole (rows in = rows out): items seen in "
    "fewer than min_item_count sessions (all splits counted) are removed from "
    "training sessions only, and training sessions shorter than "
    "min_session_length dropped, repeated until stable; then sessions longer "
    "than max_session_length (0 = no limit) keep their last items (the scored "
    "target stays); validation/test items never seen in training stay in the "
    "vocabulary (counted as items_without_training)")


@dataclasses.dataclass
class PrepareResult:
  """What `prepare` wrote: the manifest, the vocabulary and the sessions.

  `sessions` holds every written session in written order (train, valid, test;
  each split in shard order) with raw item ids.
  """
  manifest: dict
  vocab: List[str]
  sessions: pd.DataFrame
  output_dir: str


def select_sessions(raw: S.RawSessions, options: PrepareOptions):
  """Filters and splits the reader's sessions (rules of `data_tools.filtering`).

  Returns:
    (sessions in written order, split rule text, filter report dict).
  """
  sessions, frequency = filtering.filter_rare_items(
      raw.sessions, options.min_item_count, options.min_session_length,
      protected_splits(raw))
  if not raw.split_rule:
    sessions = splits.chronological_user_split(
        sessions, options.valid_fraction, options.test_fraction)
  rule = split_rule(raw, options)
  sessions = filtering.truncate(sessions, options.max_session_length)
  if raw.keep_eval_rows:
    unseen = filtering.items_without_training(sessions)
  else:
    sessions, unseen = filtering.drop_unseen_items(sessions,
                                                   options.min_session_length)
  filtering.require_sessions(sessions, options.raw_path, required_splits(options),
                             require_hint(options))
  ordered = [writer.sort_for_writing(sessions[sessions[S.SPLIT] == split])
             for split in schema.SPLITS]
  report = filter_report(options, raw, frequency, unseen)
  return pd.concat(ordered, ignore_index=True), rule, report


def protected_splits(raw: S.RawSessions) -> Tuple[str, ...]:
  """Splits whose sessions no filter may change (`RawSessions.keep_eval_rows`)."""
  return ("valid", "test") if raw.keep_eval_rows else ()


def split_rule(raw: S.RawSessions, options: PrepareOptions) -> str:
  """The manifest's split rule: the reader's, else the purchase-log split's."""
  return raw.split_rule or splits.chronological_rule(options.valid_fraction,
                                                     options.test_fraction)


def required_splits(options: PrepareOptions) -> List[str]:
  """The splits that must keep sessions after filtering."""
  return ["train", "test"] + (["valid"] if options.valid_fraction > 0 else [])


def require_hint(options: PrepareOptions) -> str:
  """What to change when a required split ends empty."""
  return (f"lower --min_item_count={options.min_item_count} or check --raw_path"
          f"{' and --locale=' + options.locale if options.locale else ''}")


def filter_report(options: PrepareOptions, raw: S.RawSessions, frequency: dict,
                  unseen: dict) -> dict:
  """The manifest's `filters`: rule text, settings, reader and filter counts."""
  return {"rule": KEEP_EVAL_ROWS_RULE if raw.keep_eval_rows else FILTER_RULE,
          "min_item_count": options.min_item_count,
          "min_session_length": options.min_session_length,
          "max_session_length": options.max_session_length,
          "require_text": options.require_text, "cleaning": raw.cleaning,
          "frequency_filter": frequency, "unseen_items": unseen}


def item_texts(catalog: pd.DataFrame, vocab: List[str], fields: List[str]) -> pd.DataFrame:
  """Text of vocabulary items 1..n-1 for `fields` ("" where missing)."""
  columns = [field for field in fields if field in catalog.columns]
  texts = catalog.reindex(vocab[1:])[columns].fillna("")
  for field in fields:
    if field not in texts.columns:
      texts[field] = ""
  return texts


def titles(catalog: pd.DataFrame, vocab: List[str], fields: List[str]) -> List[str]:
  """The vocabulary file's titles: the title field, else the first text field."""
  column = "title" if "title" in catalog.columns else (
      fields[0] if fields and fields[0] in catalog.columns else None)
  if column is None:
    return [""] * len(vocab)
  return [""] + catalog[column].reindex(vocab[1:]).fillna("").tolist()


def _rows(raw: S.RawSessions, counts: SplitCounts) -> Optional[dict]:
  """Rows read and rows scored per split, for layouts read as rows."""
  if raw.rows_read is None:
    return None
  return {"read": {split: int(raw.rows_read.get(split, 0))
                   for split in schema.SPLITS},
          "scored": counts.totals()["num_examples"]}


def _write(folder: str, raw: S.RawSessions, options: PrepareOptions,
           sessions: pd.DataFrame, vocab: List[str]) -> dict:
  """Writes vocabulary, shards and text table into `folder`; returns file info."""
  fields = list(options.text_fields)
  written = [writer.write_vocab(folder, vocab, titles(raw.catalog, vocab, fields))]
  index = {item: i for i, item in enumerate(vocab)}
  files = {"vocab": schema.VOCAB_FILE, "text_embeddings": None}
  for split in schema.SPLITS:
    part = sessions[sessions[S.SPLIT] == split]
    files[split] = writer.write_split(folder, split, part, index,
                                      options.num_shards)
    written += files[split]
  text_dim, without_text = 0, 0
  if fields:
    encoder = embed.options_encoder(options)
    table = embed.item_text_table(encoder, item_texts(raw.catalog, vocab, fields), fields,
                                  options.embedding_batch_size,
                                  options.require_text, raw.item_origin)
    files["text_embeddings"] = writer.write_text_table(folder, table)
    written.append(files["text_embeddings"])
    text_dim = int(table.shape[1])
    without_text = int(np.sum(~table[1:].any(axis=1)))
    warn_without_text(without_text, len(vocab) - 1, fields)
  hashes = writer.file_hashes(folder, written)
  return {"files": files, "text_dim": text_dim,
          "num_items_without_text": without_text if fields else None,
          "file_hashes": hashes,
          "data_identity": identity.dataset_identity(
              folder, {"files": files, "file_hashes": hashes})}


def warn_without_text(without_text: int, num_items: int, fields: List[str]) -> None:
  """Warns on stderr about items whose text vector is zero (--norequire_text)."""
  if without_text:
    print(f"warning: {without_text} of {num_items} items have no text in "
          f"{', '.join(fields)}: their text vector is zero"
          + (" (every item: text models will refuse this dataset)"
             if without_text == num_items else ""), file=sys.stderr, flush=True)


def check_text(raw: S.RawSessions, vocab: List[str], options: PrepareOptions) -> None:
  """With --require_text, fails before embedding on an item without text."""
  fields = list(options.text_fields)
  if fields and options.require_text:
    embed.field_columns(item_texts(raw.catalog, vocab, fields), fields, True,
                        raw.item_origin)


def build_manifest(raw: S.RawSessions, options: PrepareOptions, stats: SessionStats,
                   rule: str, report: dict, written: dict) -> dict:
  """The manifest (no run times, so re-runs give the same content).

  Args:
    raw: the reader's result (only its layout facts and counts are read).
    options: the prepare options.
    stats: what the written sessions hold (`counts.session_stats`).
    rule: the split rule text.
    report: `filter_report`.
    written: `_write`'s file info (files, text_dim, file hashes, data identity).

  `content_hash` hashes every file's bytes (the same machine, the same bytes);
  `data_identity` is what runs are checked against on any machine: the exact
  hash of all but the float text table, and the table's identity within float
  rounding (`alterrec_tf.formats.identity`).
  """
  name = options.dataset_name or os.path.basename(
      os.path.normpath(options.output_dir))
  return {
      "format_version": schema.FORMAT_VERSION, "dataset_name": name,
      "raw_format": raw.raw_format, "num_items": stats.num_items,
      **stats.counts.totals(), "num_users": stats.num_users or None,
      "text_dim": written["text_dim"],
      "text_fields": list(options.text_fields) if written["text_dim"] else [],
      "text_model": options.text_model if written["text_dim"] else None,
      "text_backend": options.text_backend if written["text_dim"] else None,
      "eval_protocol": raw.eval_protocol, "split_rule": rule,
      "guests": stats.counts.guests() if not raw.split_rule else None,
      "sessions_deduplicated": bool(raw.sessions_deduplicated),
      "rows": _rows(raw, stats.counts),
      "num_items_without_training": stats.num_items_without_training,
      "num_items_without_text": written["num_items_without_text"],
      "filters": report,
      "flags": options.as_flags(), "files": written["files"],
      "file_hashes": written["file_hashes"],
      "content_hash": schema.content_hash(written["file_hashes"]),
      "data_identity": written["data_identity"]}


def prepare(options: PrepareOptions) -> PrepareResult:
  """Reads, filters, splits and writes one dataset (see the module docstring).

  Raises:
    DataToolsError: bad options or input; no output folder is changed.
  """
  options.validate()
  writer.check_output_dir(options.output_dir)
  raw = readers.read(options)
  sessions, rule, report = select_sessions(raw, options)
  vocab = writer.build_vocab(sessions)
  check_text(raw, vocab, options)
  with writer.atomic_output_dir(options.output_dir) as folder:
    written = _write(folder, raw, options, sessions, vocab)
    manifest = build_manifest(raw, options, session_stats(sessions, len(vocab)),
                              rule, report, written)
    writer.write_manifest(folder, manifest)
  print_summary(manifest, options.output_dir)
  return PrepareResult(manifest, vocab, sessions, options.output_dir)


def print_summary(manifest: dict, output_dir: str) -> None:
  """Prints what was prepared: counts per split and the content hash."""
  sessions, examples = manifest["num_sessions"], manifest["num_examples"]
  print(f"prepared {manifest['dataset_name']} ({manifest['raw_format']}) in "
        f"{output_dir}\n"
        f"  items: {manifest['num_items'] - 1} (+ padding), users: "
        f"{manifest['num_users']}, text_dim: {manifest['text_dim']}\n"
        f"  sessions train/valid/test: {sessions['train']}/{sessions['valid']}/"
        f"{sessions['test']}, examples: {examples['train']}/{examples['valid']}/"
        f"{examples['test']}, interactions: "
        f"{sum(manifest['num_interactions'].values())}\n"
        f"  content_hash: {manifest['content_hash']}\n"
        f"  exact_hash (all but the text table): "
        f"{manifest['data_identity']['exact_hash']}", flush=True)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines one flag per `PrepareOptions` field on `flag_values`."""
  for field in option_fields():
    help_text, choices = field.metadata["help"], field.metadata["choices"]
    kwargs = {"flag_values": flag_values}
    if choices:
      flags.DEFINE_enum(field.name, field.default, list(choices), help_text, **kwargs)
    elif isinstance(field.default, bool):
      flags.DEFINE_bool(field.name, field.default, help_text, **kwargs)
    elif isinstance(field.default, int):
      flags.DEFINE_integer(field.name, field.default, help_text, **kwargs)
    elif isinstance(field.default, float):
      flags.DEFINE_float(field.name, field.default, help_text, **kwargs)
    elif isinstance(field.default, tuple):
      flags.DEFINE_list(field.name, list(field.default), help_text, **kwargs)
    else:
      flags.DEFINE_string(field.name, field.default, help_text, **kwargs)


def options_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> PrepareOptions:
  """`PrepareOptions` from parsed flags."""
  values = {}
  for field in option_fields():
    value = flag_values[field.name].value
    values[field.name] = tuple(v.strip() for v in value if v.strip()) if (
        isinstance(field.default, tuple)) else value
  return PrepareOptions(**values)


define_flags()


def main(argv: List[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # (the sentence encoder's "Loading ..." info lines)
  try:
    options = options_from_flags()
    cli.load_tensorflow()  # without its start-up lines (TF_CPP_MIN_LOG_LEVEL=0 shows them)
    prepare(options)
  except (S.DataToolsError, OSError) as error:
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(1)


def training_flag_names() -> frozenset:
  """Flags of `alterrec_tf.train` (empty until `alterrec_tf.config` exists)."""
  try:
    return flagfiles.training_flag_names()
  except ModuleNotFoundError as error:
    if error.name != "alterrec_tf.config":
      raise
    return frozenset()


def run() -> None:
  """Console entry point `alterrec-prepare`."""
  app.run(main, flags_parser=flagfiles.make_parser(training_flag_names()))


if __name__ == "__main__":
  run()
