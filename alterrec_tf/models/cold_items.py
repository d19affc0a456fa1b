"""An ID part for items the ID tower never saw, imputed from their text.

A trained AlterRec scores an item with alpha * ID + (1 - alpha) * text. An item
added after training has a text vector but no trained ID row; with a zero ID row
its fused score lacks the alpha * ID term that every trained item has, so it
sits on another scale and sinks. `impute_id_rows` gives it the ID rows of the
trained items nearest to it in the text tower's item space, weighted by a
softmax over their cosine similarities:

  s_j = cos(text(new), text(j))     for the k most similar trained items j
  id(new) = sum_j softmax(s / temperature)_j * id(j)

Measured (BUILD_NOTES, "Cold items on the trained scale"): with 10% of Online
Retail's trained items treated as new, validation Hits@20 of their prefixes is
23.1% with a zero ID part, 29.5% with a ridge regression text -> ID, 42.2% with
these neighbours and 51.3% with their real rows. A regression shrinks every
imputed row towards the mean row; neighbours keep rows of trained magnitude.

Written in TensorFlow ops so that the export's text signatures run the same code
in the graph; numpy callers get numpy back through `ColdIdImputer`.
"""

from typing import TYPE_CHECKING, NamedTuple, Union

import numpy as np
import numpy.typing as npt
import tensorflow as tf

if TYPE_CHECKING:
  from alterrec_tf.models.contract import AlternatingModel

DEFAULT_NUM_NEIGHBOURS = 20
DEFAULT_TEMPERATURE = 0.02


def impute_id_rows(text_vectors: Union[np.ndarray, tf.Tensor], trained_text: np.ndarray,
                   trained_id: np.ndarray, num_neighbours: int,
                   temperature: float) -> tf.Tensor:
  """Similarity-weighted ID rows of the nearest trained items.

  Args:
    text_vectors: float [N, d_text], the new items' text tower vectors.
    trained_text: float [M, d_text], the trained items' text tower vectors.
    trained_id: float [M, d_id], the same items' ID rows.
    num_neighbours: k (clipped to M).
    temperature: softmax temperature over the k cosine similarities (> 0).

  Returns:
    float32 [N, d_id].
  """
  text_vectors = tf.convert_to_tensor(text_vectors, tf.float32)
  trained_text = tf.convert_to_tensor(trained_text, tf.float32)
  trained_id = tf.convert_to_tensor(trained_id, tf.float32)
  similarity = tf.matmul(tf.math.l2_normalize(text_vectors, axis=1),
                         tf.math.l2_normalize(trained_text, axis=1), transpose_b=True)
  k = tf.minimum(num_neighbours, tf.shape(trained_text)[0])
  nearest = tf.math.top_k(similarity, k=k)
  weights = tf.nn.softmax(nearest.values / temperature, axis=1)  # [N, k]
  return tf.einsum("nk,nkd->nd", weights, tf.gather(trained_id, nearest.indices))


class ColdIdImputer(NamedTuple):
  """The trained items a model's cold items borrow their ID rows from.

  Attributes:
    trained_items: int [M], catalogue indices of items with training occurrences.
    trained_text: float32 [M, d_text], their text tower vectors.
    trained_id: float32 [M, d_id], their ID rows.
    num_neighbours: k.
    temperature: softmax temperature.
  """
  trained_items: np.ndarray
  trained_text: np.ndarray
  trained_id: np.ndarray
  num_neighbours: int = DEFAULT_NUM_NEIGHBOURS
  temperature: float = DEFAULT_TEMPERATURE

  def __call__(self, text_vectors: np.ndarray) -> np.ndarray:
    """float [N, d_text] -> imputed ID rows float32 [N, d_id] (numpy)."""
    if len(text_vectors) == 0:
      return np.zeros([0, self.trained_id.shape[1]], np.float32)
    return impute_id_rows(text_vectors, self.trained_text, self.trained_id,
                          self.num_neighbours, self.temperature).numpy()


def for_model(model: "AlternatingModel", train_counts: npt.ArrayLike,
              num_neighbours: int = DEFAULT_NUM_NEIGHBOURS,
              temperature: float = DEFAULT_TEMPERATURE) -> ColdIdImputer:
  """The imputer of a model with "id" and "text" towers.

  Args:
    model: exposes `tower(name).item_matrix(training=False)` -> [V, d].
    train_counts: int [V], training occurrences per item (row 0 = padding).
    num_neighbours, temperature: see `impute_id_rows`.

  Raises:
    ValueError: no item has training occurrences, or temperature <= 0.
  """
  if temperature <= 0 or num_neighbours < 1:
    raise ValueError(f"temperature={temperature} must be > 0 and num_neighbours="
                     f"{num_neighbours} >= 1")
  counts = np.asarray(train_counts)
  trained = np.flatnonzero(counts > 0)
  trained = trained[trained > 0]
  if not len(trained):
    raise ValueError("no item has training occurrences: nothing to impute ID rows from")
  text = np.asarray(model.tower("text").item_matrix(training=False), np.float32)
  ids = np.asarray(model.tower("id").item_matrix(training=False), np.float32)
  return ColdIdImputer(trained, text[trained], ids[trained], int(num_neighbours),
                       float(temperature))
