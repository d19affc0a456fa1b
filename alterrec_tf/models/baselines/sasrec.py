"""SASRec (Kang & McAuley 2018) as the paper runs it (RecBole, Appendix G).

A causal Transformer over ID item embeddings (AlterRec's g_Trans: learned
positions, post-LayerNorm blocks, Appendix D); the output at a prefix's last
position is its session vector, scored by dot product against every item's
embedding, trained with full-softmax cross-entropy. The item table is
RecBole's plain N(0, 0.02) table (`layers.IdItemEncoder` without LayerNorm, also
AlterRec's default); the rest is AlterRec's uni-modal tower.
"""

import tensorflow as tf

from alterrec_tf.models import layers as alter_layers
from alterrec_tf.models import towers as alter_towers
from alterrec_tf.models.baselines import base
from alterrec_tf.models.scoring import Heads
from alterrec_tf.models.settings import ModelSettings


def recbole_id_tower(settings: ModelSettings, num_items: int,
                     name: str) -> alter_towers.UniModalTower:
  """ItemEmbedding + TransformerSessionEncoder + dot score (SASRec, FDSA's ID side)."""
  items = alter_layers.IdItemEncoder(num_items, settings.embedding_dim, name="id_items")
  sessions = alter_layers.TransformerSessionEncoder(
      settings.max_len, settings.embedding_dim, settings.num_layers, settings.num_heads,
      settings.dropout, name="id_sessions")
  return alter_towers.UniModalTower(items, sessions, name=name)


class SASRec(base.FullSoftmaxModel):
  """Item embeddings + TransformerSessionEncoder + dot score, full softmax."""

  def __init__(self, settings: ModelSettings, num_items: int, **kwargs) -> None:
    super().__init__(settings, num_items, **kwargs)
    self.tower = recbole_id_tower(settings, num_items, name="id_tower")

  def item_tables(self, training: bool = False) -> Heads:
    return {"fused": self.tower.item_matrix(training=training)}

  def prefix_queries(self, item_ids: tf.Tensor, positions: tf.Tensor, tables: Heads,
                     training: bool = False) -> Heads:
    return {"fused": tf.gather_nd(self.tower.prefix_vectors(item_ids, tables["fused"],
                                                            training), positions)}
