"""Equal tuning of every neural model on validation (issue 32, item 4).

Each model gets its own Optuna study, stored on disk (SQLite), with the same
number of trials and the same kind of search space: the shared knobs (learning
rate, dropout, width, Transformer layers; epochs by early stopping on
validation Hits@20) plus the model's own (`OWN_KNOBS`). A trial trains with
`alterrec_tf.train.train(..., rank_test=False)`: the test split is never ranked
while tuning, and the objective is the best validation Hits@20 of the fused
score. The first trial of every study is the command's own setting (each knob
at the value of the search space nearest to the flags': the flagfile's model is
always among the candidates, so tuning never ends below the untuned default on
validation); the rest are sampled by TPE, trial n with seed `sampler_seed + n`, so
a study is repeatable whether it runs in one go or in rounds, and a point already
tried is drawn again rather than counted twice; a killed study resumes (its
finished trials are kept, an interrupted trial is queued again with the same
parameters and resumes its run folder's backup).
"""

import dataclasses
import hashlib
import json
import math
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

if TYPE_CHECKING:
  import optuna

  from alterrec_tf.config import TrainConfig

# The shared search space (the paper searches lr {0.01, 0.001} and dropout
# {0.1, 0.3, 0.5}; widths and layers around the flagfiles').
SHARED_KNOBS: Dict[str, Sequence[Any]] = {
    "learning_rate": (3e-4, 1e-3, 3e-3),
    "dropout": (0.1, 0.3, 0.5),
    "embedding_dim": (64, 128, 256),
    "num_layers": (1, 2),
}
# Each model's own knobs. "negatives" is k2 - k1 (k1 from the flags);
# text_temperature divides the text scores.
TEMPERATURES = (1.0, 5.0, 10.0, 20.0)
NEGATIVES = (50, 200, 800)
OWN_KNOBS: Dict[str, Dict[str, Sequence[Any]]] = {
    "alterrec": {"negatives": NEGATIVES, "text_temperature": TEMPERATURES},
    "alterrec_random": {"negatives": NEGATIVES, "text_temperature": TEMPERATURES},
    "id_only": {},
    "text_only": {"text_temperature": TEMPERATURES},
    "sasrec": {},
    "fdsa": {},
}
TUNABLE = tuple(OWN_KNOBS)
OBJECTIVE = "valid fused hits@20"


@dataclasses.dataclass(frozen=True)
class TuningBudget:
  """What every model gets: trials, and the epoch cap of each trial."""
  trials: int
  max_epochs: int
  patience: int
  sampler_seed: int = 0


def search_space(model: str, catalogue: int, k1: int) -> Dict[str, Sequence[Any]]:
  """The knobs of `model` and their values (negatives capped by the catalogue)."""
  if model not in OWN_KNOBS:
    raise ValueError(f"cannot tune --model={model}: tunable models are {', '.join(TUNABLE)}")
  space = dict(SHARED_KNOBS)
  space.update(OWN_KNOBS[model])
  if "negatives" in space:
    space["negatives"] = tuple(n for n in space["negatives"] if k1 + n < catalogue) or (
        catalogue - k1 - 1,)
  return space


def trial_config(base: "TrainConfig", model: str, params: Dict[str, Any], run_dir: str,
                 budget: TuningBudget) -> "TrainConfig":
  """The `TrainConfig` of one trial: `base` with the trial's knobs."""
  changes = dict(params)
  negatives = changes.pop("negatives", None)
  if negatives is not None:
    changes["k2"] = base.k1 + int(negatives)
  return base.replace(model=model, run_dir=run_dir, m_max=budget.max_epochs,
                      early_stopping_patience=budget.patience, test_every_epoch=False,
                      **changes)


def starting_params(base: "TrainConfig", space: Dict[str, Sequence[Any]]) -> Dict[str, Any]:
  """The command's own setting inside `space`: each knob at its nearest value.

  Args:
    base: the `TrainConfig` of the command (negatives are `k2 - k1`).
    space: the knobs and their values (`search_space`).

  Returns:
    {knob: value}, each value one of `space[knob]`.
  """
  current = {"negatives": base.k2 - base.k1}
  params = {}
  for name, values in space.items():
    value = current[name] if name in current else getattr(base, name)
    params[name] = min(values, key=lambda v: (abs(float(v) - float(value)), float(v)))
  return params


def _storage(study_dir: str) -> str:
  os.makedirs(study_dir, exist_ok=True)
  return f"sqlite:///{os.path.abspath(os.path.join(study_dir, 'study.db'))}"


def trial_dir(study_dir: str, params: Dict[str, Any]) -> str:
  """The run folder of a trial: named by its parameters, so that a trial
  retried after a kill resumes the same run from its backup."""
  key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(study_dir, "trials", key)


def _params_key(params: Dict[str, Any]) -> str:
  return json.dumps(params, sort_keys=True)


def _finished_points(study: "optuna.Study") -> set:
  """The distinct parameter sets (`_params_key`) of the study's finished trials."""
  import optuna
  return {_params_key(t.params) for t in study.trials
          if t.state == optuna.trial.TrialState.COMPLETE}


def _retry_interrupted(study: "optuna.Study") -> int:
  """Marks the trials a killed process left running as failed and queues
  their parameters again; returns how many. One process per study."""
  import optuna
  running = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
  for trial in running:
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial(trial.params)
  return len(running)


def tune_model(base: "TrainConfig", model: str, catalogue: int, study_dir: str,
               budget: TuningBudget, train_fn: Callable[..., dict],
               log: Callable[[str], None] = print) -> dict:
  """Runs (or resumes) the study of one model; returns `best_record`.

  Args:
    base: the `TrainConfig` of the command (dataset, shared settings).
    model: the model to tune (one of `TUNABLE`).
    catalogue: items in the catalogue (without padding).
    study_dir: the study's folder: study.db and trials/<number>/ run folders.
    budget: the trials and epochs every model gets.
    train_fn: `train(config, rank_test=False) -> results` (the trainer).
    log: where progress lines go.
  """
  import optuna
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  space = search_space(model, catalogue, base.k1)
  study = optuna.create_study(study_name=model, storage=_storage(study_dir),
                              direction="maximize", load_if_exists=True)

  def objective(trial: "optuna.Trial") -> float:
    params = {name: trial.suggest_categorical(name, list(values))
              for name, values in space.items()}
    if _params_key(params) in _finished_points(study):
      log(f"{model} trial {trial.number}: {params} was tried already; sampling again")
      raise optuna.TrialPruned()  # not a trial of the budget
    run_dir = trial_dir(study_dir, params)
    config = trial_config(base, model, params, run_dir, budget)
    results = train_fn(config, rank_test=False)
    value = float(results["valid"]["fused"]["hits@20"])
    trial.set_user_attr("best_epoch", results.get("best_epoch"))
    trial.set_user_attr("seconds", results.get("wall_seconds_this_process", 0.0))
    trial.set_user_attr("run_dir", run_dir)
    log(f"{model} trial {trial.number}: valid hits@20 {100 * value:.2f} with {params}")
    return value

  if not study.trials:
    study.enqueue_trial(starting_params(base, space))
  retried = _retry_interrupted(study)
  if retried:
    log(f"{model}: {retried} interrupted trial(s) queued again (their runs resume)")
  done = len(_finished_points(study))
  if done < budget.trials:
    log(f"{model}: {done} of {budget.trials} trials done; running {budget.trials - done}")
  # A repeated point (pruned) does not use up an attempt; a failed trial does, so
  # the loop ends even when trials fail (at most the size of the space in points).
  attempts = min(budget.trials, math.prod(len(values) for values in space.values())) - done
  while attempts > 0:
    # One trial at a time, its sampler seeded by the trial's number: trial n draws
    # the same point whether the study runs in one go or resumes in rounds (a
    # sampler seeded once per process drew the same first point in every round).
    study.sampler = optuna.samplers.TPESampler(seed=budget.sampler_seed + len(study.trials))
    study.optimize(objective, n_trials=1)
    if study.trials[-1].state != optuna.trial.TrialState.PRUNED:
      attempts -= 1
  record = best_record(study, model, space, budget, base.k1)
  with open(os.path.join(study_dir, "best.json"), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1, sort_keys=True)
  with open(os.path.join(study_dir, "best.flags"), "w", encoding="utf-8") as f:
    f.write("\n".join(record["flags"]) + "\n")
  return record


def best_record(study: "optuna.Study", model: str, space: Dict[str, Sequence[Any]],
                budget: TuningBudget, k1: int) -> dict:
  """The best finished trial of `study` with the budget spent on it, and its
  training flags ("flags": negatives written as --k2 = k1 + negatives)."""
  import optuna
  # Each point once: before trials were seeded by their number, a resumed study
  # could draw a finished point again and count it twice.
  complete, seen = [], set()
  for t in study.trials:
    key = _params_key(t.params)
    if t.state == optuna.trial.TrialState.COMPLETE and key not in seen:
      seen.add(key)
      complete.append(t)
  if not complete:
    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
    raise RuntimeError(f"{model}: no trial finished ({failed} failed; their errors are in "
                       "the log above); nothing to report")
  best = max(complete, key=lambda t: (t.value, -t.number))
  flags = [f"--model={model}"]
  for name, value in sorted(tuned_changes({"best_params": best.params}, k1).items()):
    flags.append(f"--{name}={value:g}" if isinstance(value, float) else f"--{name}={value}")
  return {"model": model, "trials": len(complete), "budget": dataclasses.asdict(budget),
          "objective": OBJECTIVE, "best_value": best.value, "best_trial": best.number,
          "best_params": best.params, "best_epoch": best.user_attrs.get("best_epoch"),
          "seconds": sum(t.user_attrs.get("seconds", 0.0) for t in complete),
          "search_space": {name: list(values) for name, values in space.items()},
          "flags": flags}


def budget_table(records: List[dict]) -> str:
  """Markdown: per model, trials, epochs cap, best validation Hits@20, knobs, seconds."""
  lines = ["| model | trials | max epochs | best valid hits@20 | best epoch | knobs | seconds |",
           "|---|---|---|---|---|---|---|"]
  for record in records:
    knobs = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in sorted(record["best_params"].items()))
    lines.append(f"| {record['model']} | {record['trials']} | "
                 f"{record['budget']['max_epochs']} | {100 * record['best_value']:.2f} | "
                 f"{record['best_epoch']} | {knobs} | {record['seconds']:.0f} |")
  return "\n".join(lines)


def tuned_changes(record: dict, k1: int) -> Dict[str, Any]:
  """The `TrainConfig` changes of a best record (negatives -> k2)."""
  changes = dict(record["best_params"])
  negatives: Optional[int] = changes.pop("negatives", None)
  if negatives is not None:
    changes["k2"] = k1 + int(negatives)
  return changes
