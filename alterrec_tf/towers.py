"""A uni-modal network (section 4.1): item encoder + session encoder + dot score."""

import keras
import tensorflow as tf
from keras import ops

from alterrec_tf import layers as alter_layers
from alterrec_tf import schema

NEG_INF = -1e9


class UniModalTower(keras.layers.Layer):
  """The ID or the text network of AlterRec.

  Args:
    item_encoder: a layer whose call(training) returns the item matrix [V, d].
    session_encoder: a layer mapping ([B, L, d], mask [B, L]) -> [B, L, d].
    temperature: scores are divided by it (reference code: 0.07 for text).
  """

  def __init__(self, item_encoder, session_encoder, temperature: float = 1.0, **kwargs):
    super().__init__(**kwargs)
    self.item_encoder = item_encoder
    self.session_encoder = session_encoder
    self.temperature = float(temperature)

  def item_matrix(self, training=False):
    """All item vectors: float [V, d]."""
    return self.item_encoder(training=training)

  def prefix_vectors(self, item_ids, item_matrix, training=False):
    """Session vector of every prefix of each window: [B, L, d]."""
    vectors = ops.take(item_matrix, item_ids, axis=0)
    return self.session_encoder(vectors, alter_layers.padding_mask(item_ids),
                                training=training)

  def scores(self, session_vectors, item_matrix):
    """Scores of every item: [P, d] x [V, d] -> [P, V], padding column at -1e9."""
    logits = tf.matmul(session_vectors, item_matrix, transpose_b=True)
    if self.temperature != 1.0:
      logits = logits / self.temperature
    return mask_padding(logits)

  def call(self, item_ids, training=False):
    """Full-catalogue scores of every prefix: int [B, L] -> [B, L, V]."""
    matrix = self.item_matrix(training=training)
    return self.scores(self.prefix_vectors(item_ids, matrix, training), matrix)


def mask_padding(scores):
  """Puts the padding column (index 0) of [..., V] scores at -1e9."""
  is_padding = tf.equal(tf.range(tf.shape(scores)[-1]), schema.PADDING_INDEX)
  return tf.where(is_padding, tf.cast(NEG_INF, scores.dtype), scores)


def build_tower(kind: str, config, num_items: int, text_embeddings=None, name=None):
  """An ID (`kind='id'`) or text (`kind='text'`) tower from a TrainConfig."""
  if kind == "id":
    item_encoder = alter_layers.IdItemEncoder(num_items, config.embedding_dim,
                                              normalize=config.id_table_norm,
                                              name="id_items")
    encoder_kind, temperature = config.id_encoder, 1.0
  elif kind == "text":
    if text_embeddings is None:
      raise ValueError("the text tower needs item text embeddings; this dataset has "
                       "none (prepare it with --text_fields)")
    item_encoder = alter_layers.TextItemEncoder(text_embeddings, config.embedding_dim,
                                                config.dropout, name="text_items")
    encoder_kind, temperature = config.text_encoder, config.text_temperature
  else:
    raise ValueError(f"unknown tower kind {kind!r}")
  session_encoder = alter_layers.make_session_encoder(
      encoder_kind, config.max_len, config.embedding_dim, config.num_layers,
      config.num_heads, config.dropout, name=f"{kind}_sessions")
  return UniModalTower(item_encoder, session_encoder, temperature, name=name or f"{kind}_tower")
