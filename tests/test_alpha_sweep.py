"""The alpha sweep (Eq. 12 sensitivity): its ends are the towers, its trained
alpha is the run's fused score, the best alpha is chosen on validation."""

import json
import os

import pytest

from alterrec_tf import alpha_sweep
from alterrec_tf.config import TrainConfig
from alterrec_tf.data import windows as alter_data
from alterrec_tf.models import registry
from alterrec_tf.training import alpha as alter_alpha
from alterrec_tf.training import loading
from alterrec_tf.training.trainer import train
from tests import synthetic

ALPHAS = (0.0, 0.3, 0.5, 1.0)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("sweep_data"))
  synthetic.write_dataset(data_dir, num_items=90, num_sessions=150, max_session_length=24)
  run_dir = str(tmp_path_factory.mktemp("sweep_run"))
  results = train(TrainConfig(data_dir=data_dir, run_dir=run_dir, embedding_dim=16,
                              max_len=10, train_window_stride=5, k1=2, k2=20, m_random=1,
                              m_gap=1, m_max=2, batch_size=32, eval_batch_size=64,
                              verbose=0, alpha=0.3, text_temperature=0.5))
  return run_dir, results


def test_sweep_ends_are_the_towers_and_the_trained_alpha_is_the_fused_score(finished_run):
  run_dir, results = finished_run
  out = alpha_sweep.run_sweep(run_dir, ALPHAS)
  for split in ("valid", "test"):
    expected = {"0.3": results[split]["fused"], "1": results[split]["id"],
                "0": results[split]["text"]}
    for alpha, heads in expected.items():
      for metric, value in out[split][alpha].items():  # (the trainer adds tfrs_hits@K)
        assert value == pytest.approx(heads[metric], abs=1e-6), (split, alpha, metric)
  best = out["best_valid_alpha"]
  assert out["valid"][f"{best:g}"]["hits@20"] == max(
      out["valid"][f"{a:g}"]["hits@20"] for a in ALPHAS)
  with open(os.path.join(run_dir, alpha_sweep.SWEEP_FILE)) as f:
    assert json.load(f) == json.loads(json.dumps(out))
  table = alpha_sweep.format_sweep(out)
  assert "(best on valid" in table and "trained with" in table
  assert len(table.splitlines()) == 2 + len(ALPHAS)


def test_sweep_refuses_a_single_tower_model(finished_run):
  run_dir, _ = finished_run
  _, config, manifest, data_dir = loading.load_run(run_dir)
  model = registry.build_model(config.replace(model="id_only"), manifest, None)
  split = alter_data.load_split(data_dir, manifest, "valid", config.max_len, 25)
  with pytest.raises(ValueError, match="both towers"):
    alter_alpha.sweep(model, split, ALPHAS)


def test_tune_alpha_picks_the_best_validation_alpha_and_the_test_and_export_use_it(
    finished_run, tmp_path):
  run_dir, plain = finished_run
  config_path = os.path.join(run_dir, "config.json")
  with open(config_path) as f:
    config = json.load(f)
  tuned_dir = str(tmp_path / "tuned")
  tuned_config = TrainConfig(**{**config, "ks": tuple(config["ks"]), "run_dir": tuned_dir,
                                "tune_alpha": True})
  results = train(tuned_config)
  tuning = results["alpha_tuning"]
  valid = {float(a): metrics for a, metrics in tuning["valid"].items()}
  assert sorted(valid) == list(alter_alpha.ALPHA_GRID)
  best = max(m["hits@20"] for m in valid.values())
  assert valid[results["alpha"]]["hits@20"] == best and tuning["trained_with"] == 0.3
  # same training as the untuned run (alpha only mixes the scores): the towers'
  # figures are equal, and the fused figures are the sweep's at the chosen alpha
  assert results["best_epoch"] == plain["best_epoch"]
  for head in ("id", "text"):
    assert results["test"][head] == pytest.approx(plain["test"][head], abs=1e-6)
  sweep = alpha_sweep.run_sweep(run_dir, [results["alpha"]])
  for split in ("valid", "test"):
    for metric, value in sweep[split][f"{results['alpha']:g}"].items():
      assert results[split]["fused"][metric] == pytest.approx(value, abs=1e-6), split
  # the export and the alpha sweep read the chosen alpha
  model, loaded_config, _, _ = loading.load_run(tuned_dir)
  assert loaded_config.alpha == results["alpha"] and model.settings.alpha == results["alpha"]
  # a run folder written before the flag existed is still the same run
  del config["tune_alpha"]
  with open(config_path, "w") as f:
    json.dump(config, f)
  again = train(TrainConfig(**{**config, "ks": tuple(config["ks"])}))
  assert again == plain
