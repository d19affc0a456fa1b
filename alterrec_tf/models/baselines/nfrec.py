"""NFRec: the paper's naive fusion of ID and text (section 3.2, Appendices A-B).

Item vectors Z_i fuse the ID embedding X_i (IdItemEncoder) and the text
embedding H_i (TextItemEncoder): Z_i = [X_i, H_i] (concat, width 2d) or
Z_i = X_i + H_i (sum, width d). The session vector is the mean of the fused
item vectors, q_s = g_mean(s, Z), the score is y_si = Z_i^T q_s, and the whole
model is trained jointly with full-softmax cross-entropy.

The score splits into an ID part and a text part that sum to it exactly:

  concat (Eq. 13-14): q_s = [q^ID, q^text] with q^ID = mean X, q^text = mean H,
                      y_si = X_i^T q^ID + H_i^T q^text.
  sum:                y_si = (X_i + H_i)^T q_s = X_i^T q_s + H_i^T q_s
                      (both parts use the fused session vector q_s; the split
                      is over the item side, the only exact two-term split).

`score_heads` returns {"fused": y, "id": ID part, "text": text part}; training
logs the cross-entropy of each part as id_loss / text_loss (no gradient).
"""

from typing import TYPE_CHECKING, Optional, Tuple

import tensorflow as tf

from alterrec_tf.models import layers as alter_layers
from alterrec_tf.models.baselines import base
from alterrec_tf.models.scoring import Heads
from alterrec_tf.models.settings import ModelSettings

if TYPE_CHECKING:
  import numpy as np

FUSIONS = ("sum", "concat")


class NFRec(base.FullSoftmaxModel):
  """Naive fusion: fused item vectors, mean session, dot score, full softmax.

  Args:
    settings: a `settings.ModelSettings` (embedding_dim, dropout, learning_rate, max_len).
    num_items: catalogue size including padding.
    text_embeddings: frozen SBERT table [num_items, text_dim].
    fusion: "sum" or "concat".
  """

  part_names = ("id", "text")

  def __init__(self, settings: ModelSettings, num_items: int,
               text_embeddings: Optional["np.ndarray"], fusion: str, **kwargs) -> None:
    super().__init__(settings, num_items, **kwargs)
    if fusion not in FUSIONS:
      raise ValueError(f"unknown NFRec fusion {fusion!r}; use one of {FUSIONS}")
    if text_embeddings is None:
      raise ValueError("NFRec needs item text embeddings; this dataset has none "
                       "(prepare it with --text_fields)")
    self.fusion = fusion
    self.id_items = alter_layers.IdItemEncoder(num_items, settings.embedding_dim,
                                               name="id_items")
    self.text_items = alter_layers.TextItemEncoder(text_embeddings, settings.embedding_dim,
                                                   settings.dropout, name="text_items")
    self.sessions = alter_layers.MeanSessionEncoder(name="fused_sessions")

  def item_parts(self, training: bool = False) -> Tuple[tf.Tensor, tf.Tensor]:
    """ID and text item matrices X, H: [V, d] each."""
    return self.id_items(training=training), self.text_items(training=training)

  def fuse(self, x: tf.Tensor, h: tf.Tensor) -> tf.Tensor:
    """Fused item matrix Z: [V, 2d] (concat) or [V, d] (sum)."""
    return tf.concat([x, h], axis=-1) if self.fusion == "concat" else x + h

  def session_vectors(self, item_ids: tf.Tensor, z: tf.Tensor, positions: tf.Tensor,
                      training: bool = False) -> tf.Tensor:
    """q_s = g_mean(s, Z) at the scored prefixes: [P, width of Z]."""
    vectors = tf.gather(z, item_ids)
    means = self.sessions(vectors, alter_layers.padding_mask(item_ids), training=training)
    return tf.gather_nd(means, positions)

  def item_tables(self, training: bool = False) -> Heads:
    """{"fused": Z, "id": X, "text": H}."""
    x, h = self.item_parts(training)
    return {"fused": self.fuse(x, h), "id": x, "text": h}

  def prefix_queries(self, item_ids: tf.Tensor, positions: tf.Tensor, tables: Heads,
                     training: bool = False) -> Heads:
    q = self.session_vectors(item_ids, tables["fused"], positions, training)
    if self.fusion == "concat":
      dim = self.settings.embedding_dim
      return {"fused": q, "id": q[:, :dim], "text": q[:, dim:]}
    return {"fused": q, "id": q, "text": q}
