"""ID rows of cold items from their nearest trained items in text (models.cold_items)."""

import numpy as np
import pytest

from alterrec_tf.models import cold_items


def test_a_new_item_with_a_trained_items_text_gets_nearly_its_id_row():
  rng = np.random.default_rng(0)
  text, ids = rng.normal(size=(50, 8)), rng.normal(size=(50, 4))
  imputed = cold_items.impute_id_rows(text[[3, 17]], text, ids, num_neighbours=10,
                                      temperature=0.01).numpy()
  np.testing.assert_allclose(imputed, ids[[3, 17]], atol=1e-3)


def test_weights_are_a_softmax_over_the_k_most_similar_items():
  text = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
  ids = np.array([[1.0], [2.0], [4.0], [8.0]])
  query = np.array([[2.0, 0.0]])  # the norm does not matter: cosine similarity
  imputed = cold_items.impute_id_rows(query, text, ids, num_neighbours=2,
                                      temperature=0.5).numpy()
  similarity = np.array([1.0, 0.8])  # items 0 and 1; items 2 and 3 are not among the top 2
  weights = np.exp(similarity / 0.5) / np.exp(similarity / 0.5).sum()
  np.testing.assert_allclose(imputed, [[weights @ [1.0, 2.0]]], rtol=1e-5)
  # k above the trained items is clipped; a high temperature gives the plain mean
  flat = cold_items.impute_id_rows(query, text, ids, num_neighbours=99,
                                   temperature=1e6).numpy()
  np.testing.assert_allclose(flat, [[ids.mean()]], rtol=1e-4)


class _Tower:
  def __init__(self, matrix):
    self.matrix = matrix

  def item_matrix(self, training=False):
    del training
    return self.matrix


class _Model:
  def __init__(self, text, ids):
    self.towers = {"text": _Tower(text), "id": _Tower(ids)}

  def tower(self, name):
    return self.towers[name]


def test_for_model_borrows_only_from_items_with_training_occurrences():
  rng = np.random.default_rng(2)
  text, ids = rng.normal(size=(30, 4)), rng.normal(size=(30, 3))
  counts = np.ones(30, int)
  counts[[3, 7]] = 0
  imputer = cold_items.for_model(_Model(text, ids), counts, num_neighbours=1)
  assert imputer.trained_items.tolist() == [i for i in range(1, 30) if i not in (3, 7)]
  # item 3's own text: its nearest *trained* item is another one (not 0, 3 or 7)
  nearest = imputer(text[[3]])[0]
  assert not np.allclose(nearest, ids[3])
  assert any(np.allclose(nearest, ids[j]) for j in imputer.trained_items)
  assert imputer(np.zeros([0, 4])).shape == (0, 3)


def test_bad_settings_and_untrained_models_are_refused():
  model = _Model(np.ones((4, 2)), np.ones((4, 2)))
  with pytest.raises(ValueError, match="temperature"):
    cold_items.for_model(model, np.ones(4), temperature=0.0)
  with pytest.raises(ValueError, match="no item has training occurrences"):
    cold_items.for_model(model, np.zeros(4))
