"""Baselines of the paper's comparison, trained and evaluated like AlterRec.

Neural (one Adam, full-softmax cross-entropy; `base.FullSoftmaxModel`):
  nfrec_sum, nfrec_concat  naive fusion of ID and text (section 3.2, App. A-B)
  sasrec                   Transformer over ID embeddings
  fdsa                     ID and text Transformers, concatenated session vectors
Non-neural floors (counts from the training sessions only; `floor_registry`):
  most_popular             training popularity
  transition               first-order transitions: count(last item -> j)
  sequential_rules         SR: sequential rules of the last item (Ludewig & Jannach 2018)
  session_knn              V-SKNN: position-weighted session kNN (Ludewig & Jannach 2018)
  stan                     STAN: sequence and time aware neighbourhood (Garg et al. 2019)
With `settings.seen_items == "exclude"` every floor scores the prefix's own items out.
"""

from typing import TYPE_CHECKING, Optional, Sequence, Union

from alterrec_tf.models.baselines import base, fdsa, floor_registry, floors, nfrec, sasrec
from alterrec_tf.models.names import BASELINES as NAMES
from alterrec_tf.models.names import FLOORS
from alterrec_tf.models.settings import ModelSettings

if TYPE_CHECKING:
  import numpy as np


def build_baseline(settings: object, num_items: int, text_embeddings: Optional["np.ndarray"],
                   train_files: Optional[Sequence[str]],
                   prefixes_per_batch: Optional[float] = None
                   ) -> Union[floors.CountFloor, base.FullSoftmaxModel]:
  """Builds (creates every variable of) the baseline named by `settings.model`.

  Args:
    settings: a `settings.ModelSettings`, or a `TrainConfig` to narrow to one.
    num_items: catalogue size including padding.
    text_embeddings: frozen item text table or None.
    train_files: the training TFRecords (floors count them; nothing else is read).
    prefixes_per_batch: the neural baselines' loss weighting
      (`base.FullSoftmaxModel`); None: the batch mean. Floors do not train.
  """
  settings = ModelSettings.of(settings)
  name = settings.model
  if name in FLOORS:
    if not train_files:
      raise ValueError(f"--model={name} is built from the training split, which is empty")
    return floor_registry.build_floor(name, train_files, num_items,
                                      exclude_seen=settings.seen_items == "exclude")
  if name in ("nfrec_sum", "nfrec_concat"):
    fusion = name.split("_", 1)[1]
    model = nfrec.NFRec(settings.replace(nfrec_fusion=fusion), num_items, text_embeddings,
                        fusion, prefixes_per_batch=prefixes_per_batch, name=name)
  elif name == "sasrec":
    model = sasrec.SASRec(settings, num_items, prefixes_per_batch=prefixes_per_batch,
                          name=name)
  elif name == "fdsa":
    model = fdsa.FDSA(settings, num_items, text_embeddings,
                      prefixes_per_batch=prefixes_per_batch, name=name)
  else:
    raise ValueError(f"{name!r} is not a baseline; baselines are {NAMES}")
  model.build_all()
  return model
