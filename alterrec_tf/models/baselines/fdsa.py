"""FDSA (Zhang et al. 2019) in the form the paper runs (RecBole's FDSA, Appendix A).

Two causal Transformers run side by side: one over ID item embeddings
(RecBole's table, `layers.IdItemEncoder` without LayerNorm, as in SASRec), one over text item
vectors (here the frozen SBERT table through AlterRec's text item encoder:
Dense + ReLU + Dropout + LayerNorm; FDSA's attention over several feature
fields reduces to this with a single text vector per item). The two
session vectors are concatenated and mapped back to d by
Dense -> LayerNorm -> Dropout, as RecBole's `concat_layer`; the result is
scored by dot product against the ID item embeddings only, and everything is
trained jointly with full-softmax cross-entropy.

Because of the LayerNorm after the fusion, the score has no exact ID/text
split, so FDSA reports only the "fused" head.
"""

from typing import TYPE_CHECKING, Optional

import keras
import tensorflow as tf

from alterrec_tf.models import towers as alter_towers
from alterrec_tf.models.baselines import base, sasrec
from alterrec_tf.models.scoring import Heads
from alterrec_tf.models.settings import ModelSettings

if TYPE_CHECKING:
  import numpy as np


class FDSA(base.FullSoftmaxModel):
  """ID Transformer || text Transformer -> Dense(d) + LN + Dropout -> dot with ID items."""

  def __init__(self, settings: ModelSettings, num_items: int,
               text_embeddings: Optional["np.ndarray"], **kwargs) -> None:
    super().__init__(settings, num_items, **kwargs)
    transformers = settings.replace(text_encoder="transformer", text_temperature=1.0)
    self.id_tower = sasrec.recbole_id_tower(settings, num_items, name="id_tower")
    self.text_tower = alter_towers.build_tower("text", transformers, num_items,
                                               text_embeddings, name="text_tower")
    dim = settings.embedding_dim
    self.concat_layer = keras.layers.Dense(dim, name="concat_layer")
    self.concat_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="concat_norm")
    self.concat_dropout = keras.layers.Dropout(settings.dropout)
    self.concat_layer.build((None, 2 * dim))
    self.concat_norm.build((None, dim))

  def item_tables(self, training: bool = False) -> Heads:
    """{"fused": ID item table (the scored one), "text_items": text item vectors}."""
    return {"fused": self.id_tower.item_matrix(training=training),
            "text_items": self.text_tower.item_matrix(training=training)}

  def prefix_queries(self, item_ids: tf.Tensor, positions: tf.Tensor, tables: Heads,
                     training: bool = False) -> Heads:
    q_id = tf.gather_nd(self.id_tower.prefix_vectors(item_ids, tables["fused"], training),
                        positions)
    q_text = tf.gather_nd(self.text_tower.prefix_vectors(item_ids, tables["text_items"],
                                                         training), positions)
    q = self.concat_layer(tf.concat([q_id, q_text], axis=-1))
    return {"fused": self.concat_dropout(self.concat_norm(q), training=training)}
