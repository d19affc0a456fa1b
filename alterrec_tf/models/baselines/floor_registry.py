"""The count floors by name, with their parameters: one place that builds them.

`build_baseline` builds a floor at its defaults (`models.floor_defaults`, chosen on
validation); `alterrec_tf.floor_grid` builds it at other values of `parameters(name)`
to choose them on the validation split.
"""

from typing import Any, Dict, Sequence

from alterrec_tf.models import floor_defaults
from alterrec_tf.models.baselines import floors, sequential_rules, session_knn, stan

FLOOR_CLASSES: Dict[str, Any] = {  # name -> class with from_files(...)
    "most_popular": floors.MostPopular,
    "transition": floors.FirstOrderTransition,
    "sequential_rules": sequential_rules.SequentialRules,
    "session_knn": session_knn.SessionKNN,
    "stan": stan.STAN,
}


def parameters(name: str) -> Dict[str, Any]:
  """{parameter: default} of floor `name` (empty for the floors without any)."""
  return floor_defaults.defaults(name)


def build_floor(name: str, train_files: Sequence[str], num_items: int,
                exclude_seen: bool = False, **params) -> floors.CountFloor:
  """Floor `name` counted on `train_files` (the training split) only.

  Args:
    name: a key of `FLOOR_CLASSES` (`models.names.FLOORS`).
    train_files: the training TFRecords.
    num_items: catalogue size including padding.
    exclude_seen: score the prefix's own items out (--seen_items=exclude).
    **params: values of `parameters(name)` other than the defaults.

  Raises:
    ValueError: an unknown floor or parameter.
  """
  if name not in FLOOR_CLASSES:
    raise ValueError(f"{name!r} is not a count floor; floors are {sorted(FLOOR_CLASSES)}")
  unknown = sorted(set(params) - set(parameters(name)))
  if unknown:
    raise ValueError(f"{name} has no parameter {', '.join(unknown)}; its parameters are "
                     f"{', '.join(parameters(name)) or 'none'}")
  # every parameter passed, so `floor_defaults` is the one place the defaults live
  settings = {**parameters(name), **params}
  floor = FLOOR_CLASSES[name].from_files(train_files, num_items, exclude_seen=exclude_seen,
                                         **settings)
  floor.floor_parameters = settings  # results.json records them
  return floor
