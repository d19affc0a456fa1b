"""The whole Beam pipeline, its options and its run into an atomic output folder.

`run(options, pipeline_options)` is `data_tools.prepare.prepare` on Beam: the
same `PrepareOptions`, the same checks before anything runs (`validate`,
`writer.check_output_dir`), the same folder. The launching process holds
`writer.atomic_output_dir` around the pipeline: every step writes into the
temporary folder it yields, which replaces `--output_dir` only once the
pipeline has finished and written the manifest; a failed step (a
`DataToolsError` raised in a worker, or any other error) removes it and leaves
`--output_dir` as it was.

Pipeline options are Beam's own (`--runner`, default DirectRunner;
`--direct_num_workers`, Dataflow's `--project`/`--region`/`--temp_location`,
Flink's `--flink_master`, ...) plus `BeamPrepareOptions`.

`--runner=DirectRunner` runs Beam's Python direct runner (the FnApiRunner:
in memory, or `--direct_num_workers=N --direct_running_mode=multi_processing`).
Beam 2.77's own DirectRunner first tries the Prism runner, a Go binary it
downloads from GitHub at run time, and falls back to that same FnApiRunner
when it cannot; this project downloads nothing at run time, so it goes to the
FnApiRunner directly. `--runner=PrismRunner` still asks for Prism.
"""

import json
import os
from typing import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from alterrec_tf.formats import schema
from data_tools import prepare, writer
from data_tools import sessions as S
from data_tools.beam import read, select, text, write
from data_tools.beam.select import singleton
from data_tools.options import PrepareOptions

DEFAULT_RUNNER = "DirectRunner"


class BeamPrepareOptions(PipelineOptions):
  """Pipeline options of `data_tools.beam_prepare` besides Beam's."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        "--max_filter_passes", type=int, default=10,
        help="Passes of the frequency filter unrolled in the pipeline (the local "
        "prepare repeats it until stable; Online Retail needs 3). The run fails "
        "if the last pass still changes sessions.")


def pipeline_options(args: Sequence[str]) -> PipelineOptions:
  """Beam pipeline options from command-line arguments (runner: DirectRunner
  unless --runner is given).

  Raises:
    DataToolsError: an argument is no pipeline option, or a bad value.
  """
  args = list(args)
  if not any(arg == "--runner" or arg.startswith("--runner=") for arg in args):
    args.append(f"--runner={DEFAULT_RUNNER}")
  options = PipelineOptions(args)
  known = options.get_all_options(retain_unknown_options=False)
  unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(known))
  if unknown:
    raise S.DataToolsError(
        f"unknown flag(s) {', '.join('--' + name for name in unknown)}: neither a "
        "prepare flag (--helpfull lists them) nor an Apache Beam pipeline option")
  if options.view_as(BeamPrepareOptions).max_filter_passes < 1:
    raise S.DataToolsError("--max_filter_passes must be >= 1")
  return options


def direct_runner(beam_options: PipelineOptions):
  """The runner object for `--runner` (see the module docstring), or None to
  let Beam create the named runner."""
  name = beam_options.view_as(StandardOptions).runner or DEFAULT_RUNNER
  if name.lower() in ("direct", "directrunner"):
    from apache_beam.runners.portability.fn_api_runner import (
        FnApiRunner,
    )
    return FnApiRunner()
  return None


def build(pipeline: beam.Pipeline, options: PrepareOptions, folder: str,
          max_filter_passes: int) -> beam.PCollection:
  """Adds every step to `pipeline`, writing into `folder`; returns the manifest."""
  raw = read.read_raw(pipeline, options)
  selected = select.select(raw.sessions, raw.header, options, max_filter_passes)
  sessions = selected.sessions
  counts = write.split_counts(sessions)
  vocabulary = text.vocabulary(sessions, counts, raw.catalog, raw.origin, folder, options)
  shards = write.write_shards(sessions, vocabulary.vocab, folder, options)
  stats = write.session_stats(sessions, counts, vocabulary.vocab)
  return (pipeline
          | "Finish" >> beam.Create([None])
          | "Manifest" >> beam.ParDo(
              write.ManifestFn(folder, options), header=singleton(raw.header),
              stats=singleton(stats), rule=singleton(selected.rule),
              frequency=singleton(selected.frequency), unseen=singleton(selected.unseen),
              vocab_file=singleton(vocabulary.vocab_file), text=singleton(vocabulary.text),
              shards=beam.pvalue.AsList(shards)))


def _read_manifest(folder: str) -> dict:
  path = os.path.join(folder, schema.MANIFEST_FILE)
  if not os.path.isfile(path):
    raise S.DataToolsError(f"{path}: the pipeline finished without writing the manifest "
                           "(did the runner write to another file system than "
                           "--output_dir's?)")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def run(options: PrepareOptions, beam_options: PipelineOptions) -> dict:
  """Prepares one dataset with Beam (see the module docstring).

  Returns:
    The manifest.

  Raises:
    DataToolsError: bad options or input; no output folder is changed.
  """
  options.validate()
  writer.check_output_dir(options.output_dir)
  options.check_raw_path()  # before the pipeline: no Beam stack above the line
  passes = beam_options.view_as(BeamPrepareOptions).max_filter_passes
  with writer.atomic_output_dir(options.output_dir) as folder:
    with beam.Pipeline(runner=direct_runner(beam_options), options=beam_options) as pipeline:
      build(pipeline, options, folder, passes)
    manifest = _read_manifest(folder)
  prepare.print_summary(manifest, options.output_dir)
  return manifest

