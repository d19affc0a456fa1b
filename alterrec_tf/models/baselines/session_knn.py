"""V-SKNN (Ludewig & Jannach 2018), a floor scored like the neural models.

Session-based kNN with a position-weighted prefix, as session-rec's `VMContextKNN`
(github.com/rn5l/session-rec, algorithms/knn/vsknn.py) defines it; the candidates, the
recency sample and the normalisation are `neighbourhood`'s. For a prefix [s_1..s_n]:

* q[s_i] = weighting(i, n) (`neighbourhood.position_weight`; a repeated item keeps its
  latest place's weight), b the binary item vector of a candidate session;
* similarity "cosine": q.b / (|q| |b|); "vec" (session-rec's default): q.b / (number of
  distinct prefix items), the same neighbours as the dot product;
* the `neighbours` most similar candidates with a similarity above 0 vote: score(j) =
  sum over the neighbours holding j of similarity x weighting_score(d) x (1 +
  idf_weighting x idf(j)), where d = n - i + 1 for the latest place i of the prefix
  whose item the neighbour holds (its most recent shared item: d = 1 for the last
  item; `neighbourhood.distance_weight`) and idf(j) = log(training sessions / training
  occurrences of j).

session-rec's `remind` (the prefix's own items keep their scores) is what --seen_items=keep
does; its dwelling-time, time-decay and extend options are not built. The defaults were
chosen on the validation splits of Online Retail and Amazon Office (BUILD_NOTES.md,
"Floors as published (issue 35, item 3)").
"""

from typing import Sequence

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from alterrec_tf.models import floor_defaults
from alterrec_tf.models.baselines import neighbourhood

SIMILARITIES = ("cosine", "vec")


class SessionKNN(neighbourhood.NeighbourhoodFloor):
  """V-SKNN: position-weighted session kNN with a decay by the most recent shared item.

  Args:
    sessions, timestamps, counts, neighbours, sample_size, exclude_seen: as
      `neighbourhood.NeighbourhoodFloor`.
    weighting: position weights of the prefix (`neighbourhood.WEIGHTINGS`).
    weighting_score: decay of a neighbour's vote by its most recent shared item.
    similarity: "cosine" or "vec".
    idf_weighting: weight of the items' idf in the votes (0: none).
  """

  def __init__(self, sessions: Sequence[np.ndarray], timestamps: npt.ArrayLike,
               counts: npt.ArrayLike, neighbours: int = floor_defaults.SKNN_NEIGHBOURS,
               sample_size: int = floor_defaults.SKNN_SAMPLE_SIZE,
               weighting: str = floor_defaults.SKNN_WEIGHTING,
               weighting_score: str = floor_defaults.SKNN_WEIGHTING_SCORE,
               similarity: str = floor_defaults.SKNN_SIMILARITY,
               idf_weighting: float = floor_defaults.SKNN_IDF_WEIGHTING,
               exclude_seen: bool = False, **kwargs) -> None:
    super().__init__(sessions, timestamps, counts, neighbours, sample_size, exclude_seen,
                     **kwargs)
    neighbourhood.check_choice("weighting", weighting, neighbourhood.WEIGHTINGS)
    neighbourhood.check_choice("weighting_score", weighting_score, neighbourhood.WEIGHTINGS)
    neighbourhood.check_choice("similarity", similarity, SIMILARITIES)
    self.weighting = weighting
    self.weighting_score = weighting_score
    self.similarity = similarity
    self.idf_weighting = float(idf_weighting)
    counts = np.asarray(counts, np.float64)
    self.idf = tf.constant(np.where(
        counts > 0, np.log(max(len(sessions), 1) / np.maximum(counts, 1.0)), 0.0
    ).astype(np.float32))

  def position_weights(self, places: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
    return neighbourhood.position_weight(self.weighting, places, lengths)

  def neighbour_keys(self, dots: tf.Tensor, prefixes: neighbourhood.Prefixes,
                     weights: tf.Tensor) -> tf.Tensor:
    """The similarity, -inf where it is not above 0."""
    if self.similarity == "cosine":
      similarity = neighbourhood.cosines(dots, weights, self.session_norms)
    else:  # vec: divided by the number of distinct prefix items
      distinct = tf.reduce_sum(tf.cast(prefixes.latest, tf.float32), axis=1, keepdims=True)
      similarity = dots / tf.maximum(distinct, 1.0)
    return tf.where(similarity > 0.0, similarity, -np.inf)

  def neighbour_weights(self, top_keys: tf.Tensor) -> tf.Tensor:
    return top_keys

  def vote_values(self, votes: neighbourhood.Votes) -> tf.Tensor:
    """similarity x weighting_score(d of the most recent shared item) x idf term."""
    most_recent = tf.math.unsorted_segment_max(votes.prefix_place, votes.slot,
                                               votes.num_slots)  # [P * k]
    step = tf.gather(votes.lengths, votes.prefix) - tf.gather(most_recent, votes.slot) + 1.0
    value = (tf.gather(votes.neighbour_weight, votes.slot)
             * neighbourhood.distance_weight(self.weighting_score, step))
    if self.idf_weighting:
      value *= 1.0 + self.idf_weighting * tf.gather(self.idf, votes.item)
    return value
