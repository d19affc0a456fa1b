"""alterrec_tf.tune: equal budgets, validation only, resumable studies on disk."""

import json
import os

import pytest

from alterrec_tf.config import TrainConfig
from alterrec_tf.training import tuning
from alterrec_tf.training.trainer import train
from tests.test_training import dataset, tiny_config  # noqa: F401  (the module fixture)


def test_every_model_gets_the_shared_knobs_plus_its_own():
  for model in tuning.TUNABLE:
    space = tuning.search_space(model, catalogue=5000, k1=6)
    assert {name: space[name] for name in tuning.SHARED_KNOBS} == tuning.SHARED_KNOBS
  assert set(tuning.search_space("alterrec", 5000, 6)) - set(tuning.SHARED_KNOBS) == {
      "negatives", "text_temperature"}
  # negatives never reach the catalogue: k1 + negatives < items
  assert tuning.search_space("alterrec_random", 250, 6)["negatives"] == (50, 200)
  with pytest.raises(ValueError, match="cannot tune"):
    tuning.search_space("session_knn", 5000, 6)


def _fake_trainer(calls):
  def train_fn(config, rank_test):
    assert rank_test is False
    calls.append(config)
    value = config.learning_rate * 100 + config.dropout + config.k2 / 1e4
    return {"valid": {"fused": {"hits@20": value}}, "best_epoch": 3,
            "wall_seconds_this_process": 1.5}
  return train_fn


def test_study_runs_its_budget_resumes_and_writes_the_best_flags(tmp_path):
  base = TrainConfig(k1=6, k2=806)
  budget = tuning.TuningBudget(trials=4, max_epochs=7, patience=2)
  calls = []
  record = tuning.tune_model(base, "alterrec", 3000, str(tmp_path / "alterrec"), budget,
                             _fake_trainer(calls), log=lambda line: None)
  assert len(calls) == 4 and record["trials"] == 4
  assert all(c.m_max == 7 and c.early_stopping_patience == 2 and not c.test_every_epoch
             for c in calls)
  assert all(c.k2 - c.k1 in tuning.NEGATIVES for c in calls)
  best = max(calls, key=lambda c: c.learning_rate * 100 + c.dropout + c.k2 / 1e4)
  assert record["best_params"]["learning_rate"] == best.learning_rate
  flags = (tmp_path / "alterrec" / "best.flags").read_text().split()
  assert f"--k2={best.k2}" in flags and "--model=alterrec" in flags
  assert json.loads((tmp_path / "alterrec" / "best.json").read_text())["trials"] == 4
  # the same command again trains nothing; a larger budget trains only the extra trials
  tuning.tune_model(base, "alterrec", 3000, str(tmp_path / "alterrec"), budget,
                    _fake_trainer(calls), log=lambda line: None)
  assert len(calls) == 4
  tuning.tune_model(base, "alterrec", 3000, str(tmp_path / "alterrec"),
                    tuning.TuningBudget(trials=6, max_epochs=7, patience=2),
                    _fake_trainer(calls), log=lambda line: None)
  assert len(calls) == 6
  assert "| alterrec | 6 | 7 |" in tuning.budget_table([json.loads(
      (tmp_path / "alterrec" / "best.json").read_text())])


def test_the_first_trial_is_the_command_s_own_setting(tmp_path):
  # the flagfile's model is always a candidate: 794 negatives -> 800, d=100 -> 128
  base = TrainConfig(k1=6, k2=800, learning_rate=1e-3, dropout=0.1, embedding_dim=100,
                     num_layers=2, text_temperature=10.0)
  calls = []
  record = tuning.tune_model(base, "alterrec", 3000, str(tmp_path / "alterrec"),
                             tuning.TuningBudget(trials=2, max_epochs=5, patience=2),
                             _fake_trainer(calls), log=lambda line: None)
  first = calls[0]
  assert (first.learning_rate, first.dropout, first.embedding_dim, first.num_layers,
          first.text_temperature, first.k2) == (1e-3, 0.1, 128, 2, 10.0, 806)
  assert len(calls) == 2 and record["trials"] == 2
  # d=300 (the default) -> 256; a model without negatives ignores k2
  assert tuning.starting_params(TrainConfig(k1=6, k2=56, dropout=0.5), tuning.search_space(
      "sasrec", 3000, 6)) == {"learning_rate": 1e-3, "dropout": 0.5, "embedding_dim": 256,
                              "num_layers": 2}


def test_a_trial_never_ranks_the_test_split(dataset, tmp_path):  # noqa: F811
  config = tiny_config(dataset, str(tmp_path / "trial"), m_max=2, test_every_epoch=False)
  results = train(config, rank_test=False)
  assert results["test"] == {} and results["valid"]["fused"]["hits@20"] >= 0.0
  history = json.loads((tmp_path / "trial" / "history.json").read_text())
  assert not any(key.startswith("test/") for record in history for key in record)
  assert not os.path.exists(tmp_path / "trial" / "test_ranks.npz")


def test_a_trial_left_running_by_a_kill_is_retried_with_its_parameters(tmp_path):
  import optuna
  study_dir = str(tmp_path / "text_only")
  base, budget = TrainConfig(k1=6, k2=806), tuning.TuningBudget(2, 5, 2)
  calls = []
  tuning.tune_model(base, "text_only", 3000, study_dir, tuning.TuningBudget(1, 5, 2),
                    _fake_trainer(calls), log=lambda line: None)
  study = optuna.load_study(study_name="text_only",
                            storage=f"sqlite:///{os.path.join(study_dir, 'study.db')}")
  killed = study.ask({name: optuna.distributions.CategoricalDistribution(list(values))
                      for name, values in tuning.search_space("text_only", 3000, 6).items()})
  tuning.tune_model(base, "text_only", 3000, study_dir, budget, _fake_trainer(calls),
                    log=lambda line: None)
  assert len(calls) == 2
  assert (calls[-1].learning_rate, calls[-1].dropout, calls[-1].text_temperature) == (
      killed.params["learning_rate"], killed.params["dropout"],
      killed.params["text_temperature"])


def _drawn_points(calls):
  return [(c.learning_rate, c.dropout, c.embedding_dim, c.num_layers, c.text_temperature,
           c.k2) for c in calls]


def test_a_study_run_in_rounds_draws_new_points_and_the_same_as_in_one_go(tmp_path):
  # each round is a new process; a sampler seeded once per process drew the same
  # first point in every round, so rounds 3.. only repeated round 2's trial
  base = TrainConfig(k1=6, k2=806)
  in_rounds, in_one_go = [], []
  for trials in range(1, 6):
    tuning.tune_model(base, "alterrec", 3000, str(tmp_path / "rounds"),
                      tuning.TuningBudget(trials, 5, 2), _fake_trainer(in_rounds),
                      log=lambda line: None)
  record = tuning.tune_model(base, "alterrec", 3000, str(tmp_path / "one_go"),
                             tuning.TuningBudget(5, 5, 2), _fake_trainer(in_one_go),
                             log=lambda line: None)
  assert len(set(_drawn_points(in_rounds))) == len(in_rounds) == 5
  assert _drawn_points(in_rounds) == _drawn_points(in_one_go)
  assert record["trials"] == 5


def test_a_point_already_tried_is_drawn_again_not_counted_twice(tmp_path):
  # a search space of 2 points: the budget stops there, each point trained once
  base = TrainConfig(k1=6, k2=806)
  calls = []
  tiny = {"learning_rate": (1e-3,), "dropout": (0.1, 0.3), "embedding_dim": (128,),
          "num_layers": (2,)}
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tuning, "SHARED_KNOBS", tiny)
    record = tuning.tune_model(base, "sasrec", 3000, str(tmp_path / "sasrec"),
                               tuning.TuningBudget(4, 5, 2), _fake_trainer(calls),
                               log=lambda line: None)
  assert sorted(c.dropout for c in calls) == [0.1, 0.3]
  assert record["trials"] == 2


def test_a_study_whose_trials_fail_still_ends(tmp_path):
  # a NaN objective is a failed trial (not a repeated point): it uses up an attempt
  def failing(config, rank_test):
    return {"valid": {"fused": {"hits@20": float("nan")}}, "best_epoch": 1,
            "wall_seconds_this_process": 0.1}
  record_dir = str(tmp_path / "sasrec")
  with pytest.raises(RuntimeError, match="no trial finished .3 failed"):
    tuning.tune_model(TrainConfig(k1=6, k2=806), "sasrec", 3000, record_dir,
                      tuning.TuningBudget(3, 5, 2), failing, log=lambda line: None)
  import optuna
  study = optuna.load_study(study_name="sasrec",
                            storage=f"sqlite:///{os.path.join(record_dir, 'study.db')}")
  assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 3
