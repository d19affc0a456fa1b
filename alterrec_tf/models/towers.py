"""A uni-modal network (section 4.1): item encoder + session encoder + dot score."""

from typing import TYPE_CHECKING, Optional

import keras
import tensorflow as tf
from keras import ops

from alterrec_tf.formats import schema
from alterrec_tf.models import layers as alter_layers
from alterrec_tf.models import scoring
from alterrec_tf.models.settings import ModelSettings

if TYPE_CHECKING:
  import numpy as np

NEG_INF = scoring.NEG_INF
mask_padding = scoring.mask_padding


class UniModalTower(keras.layers.Layer):
  """The ID or the text network of AlterRec.

  Args:
    item_encoder: a layer whose call(training) returns the item matrix [V, d].
    session_encoder: a layer mapping ([B, L, d], mask [B, L]) -> [B, L, d].
    temperature: scores are divided by it (reference code: 0.07 for text).
  """

  def __init__(self, item_encoder: keras.layers.Layer, session_encoder: keras.layers.Layer,
               temperature: float = 1.0, **kwargs) -> None:
    super().__init__(**kwargs)
    self.item_encoder = item_encoder
    self.session_encoder = session_encoder
    self.temperature = float(temperature)

  def item_matrix(self, training: bool = False) -> tf.Tensor:
    """All item vectors: float [V, d]."""
    return self.item_encoder(training=training)

  def prefix_vectors(self, item_ids: tf.Tensor, item_matrix: tf.Tensor,
                     training: bool = False) -> tf.Tensor:
    """Session vector of every prefix of each window: [B, L, d]."""
    vectors = ops.take(item_matrix, item_ids, axis=0)
    return self.session_encoder(vectors, alter_layers.padding_mask(item_ids),
                                training=training)

  def scores(self, session_vectors: tf.Tensor, item_matrix: tf.Tensor) -> tf.Tensor:
    """Scores of every item: [P, d] x [V, d] -> [P, V], padding column at -1e9."""
    logits = tf.matmul(session_vectors, item_matrix, transpose_b=True)
    if self.temperature != 1.0:
      logits = logits / self.temperature
    return mask_padding(logits)

  def call(self, item_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
    """Full-catalogue scores of every prefix: int [B, L] -> [B, L, V]."""
    matrix = self.item_matrix(training=training)
    return self.scores(self.prefix_vectors(item_ids, matrix, training), matrix)


def prefix_items(item_ids: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
  """The items of each scored prefix: int32 [P, L], window items 0..t, later
  places padding (0).

  Args:
    item_ids: int [B, L] window batch (0 = padding).
    positions: int64 [P, 2] (window, position t) of each scored prefix.
  """
  item_ids = tf.cast(item_ids, tf.int32)
  positions = tf.cast(positions, tf.int32)
  rows = tf.gather(item_ids, positions[:, 0])  # [P, L]
  in_prefix = tf.range(tf.shape(item_ids)[1])[None, :] <= positions[:, 1:2]  # [P, L]
  return tf.where(in_prefix, rows, schema.PADDING_INDEX)


def mask_seen_items(scores: tf.Tensor, item_ids: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
  """Scores the items of each prefix out: they get -1e9, like padding.

  The prefix at window position t holds the window's items 0..t (what the
  model reads; serving sends the same last max_len items). Sessions prepared
  with de-duplication never have such an item as their next item, so every
  model scores them out by default (`--seen_items`).

  Args:
    scores: float [P, V] scores of the scored prefixes.
    item_ids: int [B, L] window batch (0 = padding).
    positions: int64 [P, 2] (window, position t) of each scored prefix.

  Returns:
    float [P, V]: `scores` with every item of each prefix at -1e9; no gradient
    flows to the replaced entries.
  """
  return scoring.mask_items(scores, prefix_items(item_ids, positions))


def build_tower(kind: str, settings: ModelSettings, num_items: int,
                text_embeddings: Optional["np.ndarray"] = None,
                name: Optional[str] = None) -> UniModalTower:
  """An ID (`kind='id'`) or text (`kind='text'`) tower from `settings` (a
  `settings.ModelSettings`)."""
  if kind == "id":
    item_encoder = alter_layers.IdItemEncoder(num_items, settings.embedding_dim,
                                              normalize=settings.id_table_norm,
                                              name="id_items")
    encoder_kind, temperature = settings.id_encoder, 1.0
  elif kind == "text":
    if text_embeddings is None:
      raise ValueError("the text tower needs item text embeddings; this dataset has "
                       "none (prepare it with --text_fields)")
    item_encoder = alter_layers.TextItemEncoder(text_embeddings, settings.embedding_dim,
                                                settings.dropout, name="text_items")
    encoder_kind, temperature = settings.text_encoder, settings.text_temperature
  else:
    raise ValueError(f"unknown tower kind {kind!r}")
  session_encoder = alter_layers.make_session_encoder(
      encoder_kind, settings.max_len, settings.embedding_dim, settings.num_layers,
      settings.num_heads, settings.dropout, name=f"{kind}_sessions")
  return UniModalTower(item_encoder, session_encoder, temperature, name=name or f"{kind}_tower")
