"""One flagfile per dataset, read by both `data_tools.prepare` and `alterrec_tf.train`.

`configs/<dataset>.flags` holds the data preparation flags and the training
flags together, so a user keeps one file per dataset. Each command defines only
its own flags; this parser lets a command skip the flags that belong to the
other command (and only those: a misspelt flag is still an error).

The names of the preparation flags live here because `alterrec_tf` never
imports `data_tools`; a test checks that this list equals what
`data_tools.prepare` defines.
"""

from typing import Callable, Iterable, List

from absl import flags

PREPARE_FLAG_NAMES = frozenset({
    "raw_format", "raw_path", "catalog_path", "output_dir", "dataset_name",
    "text_fields", "text_model", "text_backend", "text_encoder_dir", "require_text",
    "embedding_batch_size",
    "min_item_count", "min_session_length", "max_session_length",
    "valid_fraction", "test_fraction", "num_shards", "locale",
    "excluded_stock_codes", "split_seed", "sheet", "text_keys",
})

# Flags of the shared command line, defined by `cli.define_flags`
# (`training_flag_names` lists them for data_tools.prepare, which skips them in a
# shared flagfile).
FLAG_NAMES = frozenset({"traceback", "tensorflow_log", "verify_data"})


def _flag_name(arg: str, known: frozenset) -> str:
  name = arg.lstrip("-").split("=", 1)[0]
  return name[2:] if name.startswith("no") and name[2:] in known else name


def make_parser(foreign_flag_names: Iterable[str]) -> Callable[[List[str]], List[str]]:
  """Returns an absl `flags_parser` that drops the other command's flags.

  Args:
    foreign_flag_names: flags that belong to the other command sharing the
      flagfile; they are accepted and ignored. Any other unknown flag fails.
  """
  foreign = frozenset(foreign_flag_names)

  def parse(argv: List[str]) -> List[str]:
    try:
      expanded = flags.FLAGS.read_flags_from_files(argv[1:], force_gnu=False)
    except flags.CantOpenFlagFileError as error:
      message = str(error).replace("ERROR::", "").strip()
      raise SystemExit(f"error: {message}; check the --flagfile path (configs/<dataset>.flags)"
                       ) from None
    except flags.Error as error:
      raise SystemExit(f"error: {error}") from None
    kept = [argv[0]]
    for arg in expanded:
      name = _flag_name(arg, foreign)
      if arg.startswith("-") and name in foreign and name not in flags.FLAGS:
        continue
      kept.append(arg)
    try:
      return flags.FLAGS(kept)
    except flags.Error as error:
      raise SystemExit(f"error: {' '.join(str(error).split())} (--helpfull lists the flags)"
                       ) from None

  return parse


def training_flag_names() -> frozenset:
  """Names of every flag `alterrec_tf` defines (for `data_tools.prepare`): the
  training flags and those of the shared command line (`FLAG_NAMES`)."""
  from alterrec_tf import config  # (defines the training flags: only when asked)
  return frozenset(config.defined_flag_names()) | FLAG_NAMES
