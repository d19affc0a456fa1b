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
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
from absl import app, flags

from alterrec_tf import flagfiles
from alterrec_tf.formats import schema
from data_tools import embed, filtering, readers, splits, writer
from data_tools import sessions as S
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
  protected = ("valid", "test") if raw.keep_eval_rows else ()
  sessions, frequency = filtering.filter_rare_items(
      raw.sessions, options.min_item_count, options.min_session_length,
      protected)
  rule = raw.split_rule
  if not rule:
    sessions = splits.chronological_user_split(
        sessions, options.valid_fraction, options.test_fraction)
    rule = splits.chronological_rule(options.valid_fraction, options.test_fraction)
  sessions = filtering.truncate(sessions, options.max_session_length)
  if raw.keep_eval_rows:
    unseen = filtering.items_without_training(sessions)
  else:
    sessions, unseen = filtering.drop_unseen_items(sessions,
                                                   options.min_session_length)
  required = ["train", "test"] + (["valid"] if options.valid_fraction > 0 else [])
  filtering.require_sessions(
      sessions, options.raw_path, required,
      f"lower --min_item_count={options.min_item_count} or check --raw_path"
      f"{' and --locale=' + options.locale if options.locale else ''}")
  ordered = [writer.sort_for_writing(sessions[sessions[S.SPLIT] == split])
             for split in schema.SPLITS]
  report = {"rule": KEEP_EVAL_ROWS_RULE if raw.keep_eval_rows else FILTER_RULE,
            "min_item_count": options.min_item_count,
            "min_session_length": options.min_session_length,
            "max_session_length": options.max_session_length,
            "require_text": options.require_text, "cleaning": raw.cleaning,
            "frequency_filter": frequency, "unseen_items": unseen}
  return pd.concat(ordered, ignore_index=True), rule, report


def item_texts(raw: S.RawSessions, vocab: List[str], fields: List[str]) -> pd.DataFrame:
  """Text of vocabulary items 1..n-1 for `fields` ("" where missing)."""
  columns = [field for field in fields if field in raw.catalog.columns]
  texts = raw.catalog.reindex(vocab[1:])[columns].fillna("")
  for field in fields:
    if field not in texts.columns:
      texts[field] = ""
  return texts


def _titles(raw: S.RawSessions, vocab: List[str], fields: List[str]) -> List[str]:
  catalog = raw.catalog
  column = "title" if "title" in catalog.columns else (
      fields[0] if fields and fields[0] in catalog.columns else None)
  if column is None:
    return [""] * len(vocab)
  return [""] + catalog[column].reindex(vocab[1:]).fillna("").tolist()


def _split_counts(sessions: pd.DataFrame) -> Dict[str, Dict[str, int]]:
  lengths = sessions[S.ITEMS].map(len)
  scored = lengths - sessions[S.EVAL_START]
  by_split = {split: sessions[S.SPLIT] == split for split in schema.SPLITS}
  return {
      "num_sessions": {s: int(m.sum()) for s, m in by_split.items()},
      "num_interactions": {s: int(lengths[m].sum()) for s, m in by_split.items()},
      "num_examples": {s: int(scored[m].sum()) for s, m in by_split.items()}}


def _guest_counts(sessions: pd.DataFrame) -> Dict[str, Dict[str, int]]:
  """Sessions and scored prefixes of guests (`sessions.is_guest`) per split."""
  guest = S.is_guest(sessions)
  counts = _split_counts(sessions[guest])
  return {"num_sessions": counts["num_sessions"],
          "num_examples": counts["num_examples"]}


def _items_without_training(sessions: pd.DataFrame) -> int:
  train = {item for items in sessions.loc[sessions[S.SPLIT] == "train", S.ITEMS]
           for item in items}
  return len({item for items in sessions[S.ITEMS] for item in items} - train)


def _rows(raw: S.RawSessions, sessions: pd.DataFrame) -> Optional[dict]:
  """Rows read and rows scored per split, for layouts read as rows."""
  if raw.rows_read is None:
    return None
  return {"read": {split: int(raw.rows_read.get(split, 0))
                   for split in schema.SPLITS},
          "scored": _split_counts(sessions)["num_examples"]}


def _num_users(sessions: pd.DataFrame) -> Optional[int]:
  users = sessions.loc[sessions[S.USER_ID] != "", S.USER_ID]
  return int(users.nunique()) if len(users) else None


def _write(folder: str, raw: S.RawSessions, options: PrepareOptions,
           sessions: pd.DataFrame, vocab: List[str]) -> dict:
  """Writes vocabulary, shards and text table into `folder`; returns file info."""
  fields = list(options.text_fields)
  written = [writer.write_vocab(folder, vocab, _titles(raw, vocab, fields))]
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
    table = embed.item_text_table(encoder, item_texts(raw, vocab, fields), fields,
                                  options.embedding_batch_size,
                                  options.require_text, raw.item_origin)
    files["text_embeddings"] = writer.write_text_table(folder, table)
    written.append(files["text_embeddings"])
    text_dim = int(table.shape[1])
    without_text = int(np.sum(~table[1:].any(axis=1)))
    if without_text:  # only possible with --norequire_text
      print(f"warning: {without_text} of {len(vocab) - 1} items have no text in "
            f"{', '.join(fields)}: their text vector is zero"
            + (" (every item: text models will refuse this dataset)"
               if without_text == len(vocab) - 1 else ""), file=sys.stderr, flush=True)
  return {"files": files, "text_dim": text_dim,
          "num_items_without_text": without_text if fields else None,
          "file_hashes": writer.file_hashes(folder, written)}


def check_text(raw: S.RawSessions, vocab: List[str], options: PrepareOptions) -> None:
  """With --require_text, fails before embedding on an item without text."""
  fields = list(options.text_fields)
  if not fields or not options.require_text:
    return
  texts = item_texts(raw, vocab, fields)
  missing = texts.index[(texts[fields] == "").all(axis=1).to_numpy()]
  if len(missing):
    raise embed.missing_text_error(list(missing), fields, raw.item_origin)


def build_manifest(raw: S.RawSessions, options: PrepareOptions,
                   sessions: pd.DataFrame, vocab: List[str], rule: str,
                   report: dict, written: dict) -> dict:
  """The manifest (no run times, so re-runs give the same content)."""
  name = options.dataset_name or os.path.basename(
      os.path.normpath(options.output_dir))
  return {
      "format_version": schema.FORMAT_VERSION, "dataset_name": name,
      "raw_format": raw.raw_format, "num_items": len(vocab),
      **_split_counts(sessions), "num_users": _num_users(sessions),
      "text_dim": written["text_dim"],
      "text_fields": list(options.text_fields) if written["text_dim"] else [],
      "text_model": options.text_model if written["text_dim"] else None,
      "text_backend": options.text_backend if written["text_dim"] else None,
      "eval_protocol": raw.eval_protocol, "split_rule": rule,
      "guests": _guest_counts(sessions) if not raw.split_rule else None,
      "sessions_deduplicated": bool(raw.sessions_deduplicated),
      "rows": _rows(raw, sessions),
      "num_items_without_training": _items_without_training(sessions),
      "num_items_without_text": written["num_items_without_text"],
      "filters": report,
      "flags": options.as_flags(), "files": written["files"],
      "file_hashes": written["file_hashes"],
      "content_hash": schema.content_hash(written["file_hashes"])}


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
    manifest = build_manifest(raw, options, sessions, vocab, rule, report,
                              written)
    writer.write_manifest(folder, manifest)
  _print_summary(manifest, options.output_dir)
  return PrepareResult(manifest, vocab, sessions, options.output_dir)


def _print_summary(manifest: dict, output_dir: str) -> None:
  sessions, examples = manifest["num_sessions"], manifest["num_examples"]
  print(f"prepared {manifest['dataset_name']} ({manifest['raw_format']}) in "
        f"{output_dir}\n"
        f"  items: {manifest['num_items'] - 1} (+ padding), users: "
        f"{manifest['num_users']}, text_dim: {manifest['text_dim']}\n"
        f"  sessions train/valid/test: {sessions['train']}/{sessions['valid']}/"
        f"{sessions['test']}, examples: {examples['train']}/{examples['valid']}/"
        f"{examples['test']}, interactions: "
        f"{sum(manifest['num_interactions'].values())}\n"
        f"  content_hash: {manifest['content_hash']}", flush=True)


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
  try:
    prepare(options_from_flags())
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
