"""The count floors' parameters at their defaults, chosen on validation.

Light on purpose (no TensorFlow import): the floors read their defaults from here,
and the run check (`runs.run_conflicts`) compares a finished floor run's recorded
`floor_parameters` with them, so that a changed default shows as a conflict instead
of a stale run (or an archived one) being reused. The choices and their validation
figures: BUILD_NOTES.md, "Floors as published (issue 35, item 3)".
"""

from typing import Any, Dict, List, Mapping, Optional

# Sequential rules: "div" and no pruning lead on both datasets; 5 steps is first on
# Online Retail and 0.02 Hits@20 below the best (30) on Amazon Office (session-rec's
# defaults: 10, "div", 20).
SR_STEPS = 5
SR_WEIGHTING = "div"
SR_PRUNING = 0

# V-SKNN: log place weights (the most recent items of long invoices dominate; "div"
# keeps old ones heavy), session-rec's "div" score decay, idf 5: the best of 11
# settings on Online Retail, 0.27 Hits@20 below the best of 147 on Amazon Office. All
# candidates (no recency sample): session-rec's sample of the 1,000 most recent
# changes Office by 0.04.
SKNN_NEIGHBOURS = 200
SKNN_SAMPLE_SIZE = 0
SKNN_WEIGHTING = "log"
SKNN_WEIGHTING_SCORE = "div"
SKNN_SIMILARITY = "cosine"
SKNN_IDF_WEIGHTING = 5.0

# STAN: the setting furthest from neither dataset's best, 0.17 Hits@20 below it on
# Online Retail and 0.15 on Amazon Office (lambda_2 = 500 days: a mild preference for
# recent sessions).
STAN_NEIGHBOURS = 100
STAN_SAMPLE_SIZE = 0
STAN_LAMBDA_1 = 1.0
STAN_LAMBDA_2 = 500.0
STAN_LAMBDA_3 = 2.0

PARAMETERS: Dict[str, Dict[str, Any]] = {  # floor name -> {parameter: default}
    "sequential_rules": {"steps": SR_STEPS, "weighting": SR_WEIGHTING,
                         "pruning": SR_PRUNING},
    "session_knn": {"neighbours": SKNN_NEIGHBOURS, "sample_size": SKNN_SAMPLE_SIZE,
                    "weighting": SKNN_WEIGHTING, "weighting_score": SKNN_WEIGHTING_SCORE,
                    "similarity": SKNN_SIMILARITY, "idf_weighting": SKNN_IDF_WEIGHTING},
    "stan": {"neighbours": STAN_NEIGHBOURS, "sample_size": STAN_SAMPLE_SIZE,
             "lambda_1": STAN_LAMBDA_1, "lambda_2": STAN_LAMBDA_2,
             "lambda_3": STAN_LAMBDA_3},
}


def defaults(name: str) -> Dict[str, Any]:
  """{parameter: default} of floor `name` (empty for a floor without any, or a
  model that is not a floor)."""
  return dict(PARAMETERS.get(name, {}))


def conflicts(name: str, recorded: Optional[Mapping[str, Any]]) -> List[str]:
  """How a finished run of floor `name` differs from the floor's defaults now.

  Args:
    name: the run's model.
    recorded: the run's results.json `floor_parameters` (None: not recorded).

  Returns:
    "floor parameter <name>=<old> (now <new>)" strings; empty when they match or
    the model has no parameters.
  """
  expected = defaults(name)
  if not expected:
    return []
  if recorded is None:
    return [f"floor parameters not recorded (now {expected})"]
  return [f"floor parameter {key}={recorded.get(key)} (now {value})"
          for key, value in sorted(expected.items()) if recorded.get(key) != value]
