"""Raw item text -> item vectors in a trained text tower's space, in the graph.

The text tower reads a frozen sentence-vector table through its item encoder
(Dense + ReLU, Dropout, LayerNorm: `alterrec_tf.models.layers.TextItemEncoder`).
`ItemTextVectors` puts the whole chain in one layer, so that an export can take
new items as raw text fields instead of precomputed sentence vectors:

  fields string [N, F] -> FieldMeanEncoder -> [N, text_dim] -> projection,
  LayerNorm (dropout off) -> [N, d]

which equals `alterrec_tf.export.project_new_items` applied to the table that
`data_tools.embed_items` would have written for the same fields.
"""

from typing import Sequence, Union

import keras
import tensorflow as tf

from alterrec_tf.text import encoder as text_encoder


class ItemTextVectors(keras.layers.Layer):
  """Text fields of items -> their text-tower item vectors.

  Args:
    field_mean: the `FieldMeanEncoder` of the sentence model the dataset was
      embedded with.
    projection_layers: the trained item encoder's layers after the table, in
      order, called with training=False: for `TextItemEncoder`,
      `[item_encoder.projection, item_encoder.norm]` (its dropout is identity
      at inference and is left out).

  Call args:
    fields: string [N, F], "" = no text: the dataset's text fields (in any
      order; the mean does not depend on it).

  Returns:
    float32 [N, d], d = the last projection layer's width.
  """

  def __init__(self, field_mean: text_encoder.FieldMeanEncoder,
               projection_layers: Sequence[keras.layers.Layer], **kwargs) -> None:
    kwargs.setdefault("trainable", False)
    super().__init__(**kwargs)
    self.field_mean = field_mean
    self.projection_layers = list(projection_layers)
    self.built = True

  def call(self, fields: Union[tf.Tensor, Sequence[Sequence[str]]]) -> tf.Tensor:
    x = self.field_mean(fields)
    for layer in self.projection_layers:
      x = layer(x, training=False)
    return x
