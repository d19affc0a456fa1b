"""Raw logs -> prepared dataset folder, as an Apache Beam pipeline.

  python -m data_tools.beam_prepare --flagfile=configs/online_retail.flags \\
      --raw_path=../shared/datasets/online_retail/online_retail.parquet \\
      --output_dir=data/online_retail --runner=DirectRunner

The same flags as `data_tools.prepare` (defined there, once), the same rules
and the same output folder (`data_tools.beam`); every other argument is an
Apache Beam pipeline option: `--runner` (default DirectRunner;
DataflowRunner, FlinkRunner, SparkRunner, ... with their own options such as
`--project`, `--flink_master`), `--direct_num_workers`, and
`--max_filter_passes` (`data_tools.beam.pipeline.BeamPrepareOptions`). An
argument that is neither is an error. Training flags of a shared flagfile are
skipped, as `data_tools.prepare` skips them. Bad input prints
`error: <message>` and exits with status 1; no output folder is changed.
"""

import sys
from typing import List, Tuple

from absl import app, flags

from data_tools import prepare
from data_tools import sessions as S
from data_tools.beam import pipeline

FLAGS = flags.FLAGS


def _flag_name(arg: str) -> str:
  """The flag an argument sets ("--nofoo" sets the boolean flag foo)."""
  name = arg.lstrip("-").split("=", 1)[0]
  if name.startswith("no") and name[2:] in FLAGS and FLAGS[name[2:]].boolean:
    return name[2:]
  return name


def _with_value(args: List[str], position: int, boolean: bool) -> int:
  """1, or 2 when `args[position]` is "--flag" and the next argument its value."""
  arg = args[position]
  separate = ("=" not in arg and not boolean and position + 1 < len(args)
              and not args[position + 1].startswith("-"))
  return 2 if separate else 1


def split_args(args: List[str], foreign: frozenset) -> Tuple[List[str], List[str]]:
  """Splits expanded arguments into (prepare flags, Beam pipeline options).

  Args:
    args: the arguments after the program name, flagfiles expanded.
    foreign: flags of the other command of a shared flagfile: dropped (a
      flagfile gives them as --name=value).

  Returns:
    The arguments for absl (prepare flags and positional arguments) and those
    for Beam (every other flag, with its value), each in the given order.
  """
  ours: List[str] = []
  theirs: List[str] = []
  position = 0
  while position < len(args):
    arg = args[position]
    name = _flag_name(arg)
    if not arg.startswith("-"):
      ours.append(arg)
      position += 1
    elif name in foreign:  # (checked first: importing alterrec_tf.config defines them)
      position += 1
    elif name in FLAGS:
      step = _with_value(args, position, FLAGS[name].boolean)
      ours.extend(args[position:position + step])
      position += step
    else:
      step = _with_value(args, position, False)
      theirs.extend(args[position:position + step])
      position += step
  return ours, theirs


def parse(argv: List[str]) -> List[str]:
  """absl `flags_parser`: parses the prepare flags, returns [program] + Beam args."""
  try:
    expanded = FLAGS.read_flags_from_files(argv[1:], force_gnu=False)
  except flags.Error as error:
    raise SystemExit(f"error: {' '.join(str(error).split())}") from None
  ours, theirs = split_args(expanded, prepare.training_flag_names())
  try:
    FLAGS([argv[0]] + ours)
  except flags.Error as error:
    raise SystemExit(f"error: {' '.join(str(error).split())} (--helpfull lists the flags)"
                     ) from None
  return [argv[0]] + theirs


def main(argv: List[str]) -> None:
  try:
    options = prepare.options_from_flags()
    pipeline.run(options, pipeline.pipeline_options(argv[1:]))
  except (S.DataToolsError, OSError) as error:
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(1)


def run() -> None:
  """Console entry point `alterrec-beam-prepare`."""
  app.run(main, flags_parser=parse)


if __name__ == "__main__":
  run()
