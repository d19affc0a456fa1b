"""`data_tools.beam_prepare` (Apache Beam, DirectRunner) gives what `data_tools.prepare`
gives, on the first rows of the real Online Retail file; a failed pipeline changes no
folder; the command line splits prepare flags from Beam pipeline options.

Item text comes from the fake encoder of conftest (as in the other data_tools tests
that check plumbing rather than the model): `embed.load_encoder` is replaced in this
process, and the DirectRunner runs the pipeline's workers in this process.
"""

import glob
import os

import pandas as pd
import pytest

from alterrec_tf.formats import schema
from data_tools import beam_prepare, compare, embed, prepare
from data_tools.beam import pipeline
from data_tools.options import PrepareOptions
from data_tools.sessions import DataToolsError
from tests.conftest import FakeEncoder

SUBSET_ROWS = 5000
PASSES = ["--max_filter_passes=4"]  # the subset needs 3 (2 that change, 1 stable)


@pytest.fixture(scope="module")
def prepared(online_retail_path, tmp_path_factory):
  """(local folder, Beam folder) prepared from the first rows of Online Retail."""
  folder = tmp_path_factory.mktemp("beam")
  raw = str(folder / "online_retail_head.parquet")
  pd.read_parquet(online_retail_path).iloc[:SUBSET_ROWS].to_parquet(raw)
  options = {"raw_path": raw, "dataset_name": "head", "embedding_batch_size": 16}
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(embed, "load_encoder", lambda name: FakeEncoder())
    prepare.prepare(PrepareOptions(output_dir=str(folder / "local"), **options))
    pipeline.run(PrepareOptions(output_dir=str(folder / "beam"), **options),
                 pipeline.pipeline_options(PASSES))
  return str(folder / "local"), str(folder / "beam"), options


def test_beam_gives_the_local_sessions_vocabulary_and_embeddings(prepared):
  local, beam, _ = prepared
  result = compare.compare(local, beam)
  assert result.equal, result.describe()
  assert min(result.sessions_per_split.values()) > 0 and result.num_items > 100
  assert result.max_embedding_difference == 0.0
  # Same shards, records in the same order, same text table: the same bytes.
  assert result.byte_identical, result.describe()


def test_failed_pipeline_leaves_the_output_folder_as_it_was(prepared):
  _, beam, options = prepared
  before = schema.load_manifest(beam)["content_hash"]
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(embed, "load_encoder", lambda name: FakeEncoder())
    with pytest.raises(DataToolsError, match="raise --max_filter_passes"):
      pipeline.run(PrepareOptions(output_dir=beam, **options),
                   pipeline.pipeline_options(["--max_filter_passes=1"]))
  assert schema.load_manifest(beam, verify_hashes=True)["content_hash"] == before
  assert not glob.glob(glob.escape(beam) + ".tmp-*")


def test_arguments_go_to_prepare_or_to_beam():
  ours, theirs = beam_prepare.split_args(
      ["--raw_path", "a.csv", "--norequire_text", "--model=alterrec", "--runner",
       "DirectRunner", "--direct_num_workers=2", "--max_filter_passes=3",
       "--min_item_count=2"], foreign=frozenset({"model"}))
  assert ours == ["--raw_path", "a.csv", "--norequire_text", "--min_item_count=2"]
  assert theirs == ["--runner", "DirectRunner", "--direct_num_workers=2",
                    "--max_filter_passes=3"]
  options = pipeline.pipeline_options(theirs)
  assert options.view_as(pipeline.BeamPrepareOptions).max_filter_passes == 3
  assert options.get_all_options()["runner"] == "DirectRunner"
  assert pipeline.pipeline_options([]).get_all_options()["runner"] == "DirectRunner"


@pytest.mark.parametrize("args, message", [
    (["--min_itme_count=3"], "unknown flag.*--min_itme_count"),
    (["--max_filter_passes=0"], "--max_filter_passes must be >= 1")])
def test_bad_pipeline_options_are_errors(args, message):
  with pytest.raises(DataToolsError, match=message):
    pipeline.pipeline_options(args)


def test_checks_run_before_the_pipeline(tmp_path):
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("not a dataset")
  with pytest.raises(DataToolsError, match="refusing to replace it"):
    pipeline.run(PrepareOptions(raw_path="x.parquet", output_dir=str(tmp_path / "other")),
                 pipeline.pipeline_options([]))
  with pytest.raises(DataToolsError, match="--min_session_length must be >= 2"):
    pipeline.run(PrepareOptions(raw_path="x.parquet", output_dir=str(tmp_path / "new"),
                                min_session_length=1), pipeline.pipeline_options([]))
  assert sorted(os.listdir(tmp_path)) == ["other"]
