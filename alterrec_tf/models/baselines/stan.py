"""STAN (Garg et al. 2019, "Sequence and Time Aware Neighborhood for Session-based
Recommendations"), a floor scored like the neural models.

As session-rec's `STAN` (github.com/rn5l/session-rec, algorithms/knn/stan.py); the
candidates, the recency sample and the normalisation are `neighbourhood`'s. Three
decays, each off at 0:

* lambda_1 (session-rec's lambda_spw), over places in the prefix [s_1..s_n]: q[s_i] =
  exp((i - n) / lambda_1) (a repeated item keeps its latest place's weight);
* lambda_2 (lambda_snh, in days), over time: a candidate's similarity is
  cosine(q, b) x exp(-(t - t_c) / lambda_2) for its time t_c and the prefix's t;
* lambda_3 (lambda_inh), over places in the neighbour session: the neighbour votes for
  its item j with similarity x exp(-|p(j) - p*| / lambda_3), where p(j) is j's place in
  it and p* the place of the neighbour's last item that the prefix holds.

score(j) = the sum of these votes over the `neighbours` most similar candidates. The
prefix's time t multiplies every similarity of the prefix by the same exp(-t /
lambda_2), which changes neither the neighbours nor the ranking, so t need not be known:
the similarities are compared as log cosine + (t_c - t_newest) / lambda_2 (the newest
training session's time; no float32 underflow for old sessions) and each neighbour
votes with exp(its key - the best key). The defaults were chosen on the validation
splits of Online Retail and Amazon Office (BUILD_NOTES.md, "Floors as published (issue
35, item 3)").
"""

from typing import Sequence

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from alterrec_tf.models import floor_defaults
from alterrec_tf.models.baselines import neighbourhood


class STAN(neighbourhood.NeighbourhoodFloor):
  """Sequence and time aware neighbourhood (module doc).

  Args:
    sessions, timestamps, counts, neighbours, sample_size, exclude_seen: as
      `neighbourhood.NeighbourhoodFloor`.
    lambda_1: decay over the prefix's places (0: off).
    lambda_2: decay over the candidates' age, in days (0: off).
    lambda_3: decay over places in the neighbour session (0: off).
  """

  def __init__(self, sessions: Sequence[np.ndarray], timestamps: npt.ArrayLike,
               counts: npt.ArrayLike, neighbours: int = floor_defaults.STAN_NEIGHBOURS,
               sample_size: int = floor_defaults.STAN_SAMPLE_SIZE,
               lambda_1: float = floor_defaults.STAN_LAMBDA_1,
               lambda_2: float = floor_defaults.STAN_LAMBDA_2,
               lambda_3: float = floor_defaults.STAN_LAMBDA_3,
               exclude_seen: bool = False, **kwargs) -> None:
    super().__init__(sessions, timestamps, counts, neighbours, sample_size, exclude_seen,
                     **kwargs)
    if min(lambda_1, lambda_2, lambda_3) < 0:
      raise ValueError(f"the lambdas must be 0 (off) or more, got {lambda_1}, {lambda_2}, "
                       f"{lambda_3}")
    self.lambda_1, self.lambda_2, self.lambda_3 = (float(lambda_1), float(lambda_2),
                                                   float(lambda_3))

  def position_weights(self, places: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
    """exp((i - n) / lambda_1): the last item 1."""
    if not self.lambda_1:
      return tf.ones_like(places * lengths)
    return tf.exp((places - lengths) / self.lambda_1)

  def neighbour_keys(self, dots: tf.Tensor, prefixes: neighbourhood.Prefixes,
                     weights: tf.Tensor) -> tf.Tensor:
    """log cosine + (t_c - t_newest) / lambda_2."""
    keys = tf.math.log(neighbourhood.cosines(dots, weights, self.session_norms))
    if self.lambda_2:
      keys += self.session_days[None, :] / self.lambda_2
    return keys

  def neighbour_weights(self, top_keys: tf.Tensor) -> tf.Tensor:
    """Similarities relative to the most similar neighbour's."""
    return tf.exp(top_keys - top_keys[:, :1])

  def vote_values(self, votes: neighbourhood.Votes) -> tf.Tensor:
    """The neighbour's weight x exp(-|p(j) - p*| / lambda_3)."""
    value = tf.gather(votes.neighbour_weight, votes.slot)
    if not self.lambda_3:
      return value
    shared_place = tf.where(votes.prefix_place > 0.0, votes.session_place, 0.0)
    last_shared = tf.math.unsorted_segment_max(shared_place, votes.slot, votes.num_slots)
    distance = tf.abs(votes.session_place - tf.gather(last_shared, votes.slot))
    return value * tf.exp(-distance / self.lambda_3)
