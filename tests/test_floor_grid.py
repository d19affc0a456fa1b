"""`alterrec_tf.floor_grid`: the grid's values, and validation figures equal to those the
trainer records for the same floor (the test split is never ranked)."""

import pytest

from alterrec_tf import cli, floor_grid
from alterrec_tf.config import TrainConfig, resolve_seen_items
from alterrec_tf.formats import schema
from alterrec_tf.training import trainer
from tests import synthetic


def test_grid_values_take_their_default_s_type_and_unknown_names_are_refused():
  grid = floor_grid.parse_grid("sequential_rules",
                               ["steps=2,10", "weighting=div,log", "pruning=20,0.5"])
  assert grid == {"steps": [2, 10], "weighting": ["div", "log"], "pruning": [20, 0.5]}
  assert isinstance(grid["steps"][0], int)
  assert len(floor_grid.combinations(grid)) == 8
  assert floor_grid.combinations({}) == [{}]
  stan = floor_grid.parse_grid("stan", ["lambda_1=1,2.5"])
  assert stan == {"lambda_1": [1.0, 2.5]} and isinstance(stan["lambda_1"][0], float)
  with pytest.raises(cli.CommandError, match="stan has no parameter 'steps'"):
    floor_grid.parse_grid("stan", ["steps=2"])
  with pytest.raises(cli.CommandError, match="is not a number"):
    floor_grid.parse_grid("stan", ["neighbours=many"])
  with pytest.raises(cli.CommandError, match="parameter=value"):
    floor_grid.parse_grid("stan", ["neighbours"])


def test_grid_ranks_validation_as_the_trainer_does(tmp_path, monkeypatch):
  data_dir = str(tmp_path / "data")
  manifest = synthetic.write_dataset(data_dir, num_items=40, num_sessions=60,
                                     max_session_length=20)
  config = resolve_seen_items(
      TrainConfig(data_dir=data_dir, run_dir=str(tmp_path / "run"), model="stan", max_len=8,
                  eval_window_stride=4, eval_batch_size=16, verbose=0, seen_items="exclude"),
      manifest)
  results = trainer.train(config, verify_data=False)
  read = []
  real_split_files = schema.split_files
  monkeypatch.setattr(schema, "split_files",
                      lambda d, m, split: read.append(split) or real_split_files(d, m, split))
  rows = floor_grid.rank_validation(config, manifest, "stan",
                                    [{}, {"neighbours": 3, "lambda_2": 0.0}], log=lambda _: None)
  assert rows[0]["valid"] == pytest.approx(results["valid"]["fused"], abs=1e-6)
  assert rows[1]["valid"] != rows[0]["valid"]
  assert "test" not in read
  assert floor_grid.best_row(rows) in rows
