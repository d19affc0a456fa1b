"""The towers' Transformer session encoders as one stacked computation, for serving.

A one-session request is not compute: each of its ~190 TensorFlow ops per tower
costs a few microseconds of dispatch, and the two towers' Keras encoders are
two such op streams (BUILD_NOTES.md, "Serving latency"). `StackedTransformer`
holds the towers' trained weights stacked on a leading tower axis T and runs
every tower of the same shape (d, layers, heads, max_len) at once, as batched
matmuls over [T, ...]: the ops of one encoder for all of them. It also
computes the last block only at each session's last item, the one vector
serving reads: its attention has one query per session and its feed-forward
one row, so a batch costs less.

It computes what `models.layers.TransformerSessionEncoder` computes at
inference (dropout off): learned positions, LayerNorm, then per block Keras'
MultiHeadAttention (query / key / value projections with biases, queries
scaled by 1 / sqrt(key_dim), causal and padding mask, softmax with masked
scores at -1e9 and masked weights at 0, output projection) with a residual
and LayerNorm, and a ReLU feed-forward 4d wide with a residual and LayerNorm.
Equal to the Keras layers up to float rounding (tests/test_serving_chunks.py
compares them; every export compares its top k with the Keras model's).
`from_encoders` returns None for encoders it does not know how to stack
(mean encoders, other shapes): the serving module calls those Keras layers.
"""

import math
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from alterrec_tf.models import layers

if TYPE_CHECKING:
  import keras

LARGE_NEGATIVE = -1e9  # Keras' Softmax: masked scores (float32)
NAME_SCOPE = "stacked_sessions"  # of the graph's ops (benchmarks/serving_profile.py)

Norm = Tuple[tf.Variable, tf.Variable]  # a LayerNormalization's (gamma, beta), each [T, 1, d]
# One block's stacked weights: kernels and biases [T, ...] by name, and its two `Norm`s.
Block = Dict[str, Any]


def _layer_norm(x: tf.Tensor, norm: Norm, epsilon: float) -> tf.Tensor:
  """LayerNormalization over the last axis; norm = (gamma, beta), each [T, 1, d]."""
  gamma, beta = norm
  mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
  return (x - mean) * tf.math.rsqrt(variance + epsilon) * gamma + beta


class StackedTransformer(tf.Module):
  """T Transformer session encoders of one shape, evaluated together.

  Args:
    encoders: `layers.TransformerSessionEncoder`s (built, trained), all with
      the same max_len, d, number of blocks and heads.
  """

  def __init__(self, encoders: Sequence["layers.TransformerSessionEncoder"]) -> None:
    super().__init__(name="stacked_sessions")
    first = encoders[0]
    self.num_towers = len(encoders)
    self.max_len, self.dim = (int(n) for n in first.positions.shape)
    attention = first.blocks[0].attention
    self.num_heads = int(attention._query_dense.kernel.shape[1])
    self.key_dim = int(attention._query_dense.kernel.shape[2])
    self.num_blocks = len(first.blocks)

    def stack(values: Sequence[np.ndarray], name: str) -> tf.Variable:
      return tf.Variable(np.stack([np.asarray(v, np.float32) for v in values]),
                         trainable=False, name=name)

    def norm(get: Callable[..., "keras.layers.LayerNormalization"],
             name: str) -> Norm:  # gamma, beta [T, 1, d]; get: encoder -> its LayerNormalization
      return (stack([get(e).gamma.numpy()[None] for e in encoders], f"{name}_gamma"),
              stack([get(e).beta.numpy()[None] for e in encoders], f"{name}_beta"))

    self.epsilon = float(first.input_norm.epsilon)
    self.positions = stack([e.positions.numpy() for e in encoders], "positions")
    self.input_norm = norm(lambda e: e.input_norm, "input_norm")
    self.blocks = []
    scale = 1.0 / math.sqrt(float(self.key_dim))  # Keras scales the projected queries
    for index in range(self.num_blocks):
      def of(e: layers.TransformerSessionEncoder,
             index: int = index) -> layers.TransformerBlock:
        return e.blocks[index]

      def projection(e: layers.TransformerSessionEncoder,
                     names: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        # [d, len(names) * heads * key_dim] and its bias
        mha = of(e).attention
        dense = [getattr(mha, f"_{name}_dense") for name in names]
        factor = [scale if name == "query" else 1.0 for name in names]
        kernel = np.concatenate([d.kernel.numpy().reshape(self.dim, -1) * f
                                 for d, f in zip(dense, factor)], 1)
        bias = np.concatenate([d.bias.numpy().reshape(-1) * f for d, f in zip(dense, factor)])
        return kernel, bias[None]

      # [T, d, 3 * heads * key_dim]: one matmul for queries, keys and values;
      # the last block projects its queries (one row per session) apart
      groups = ((("query", "key", "value"),) if index < self.num_blocks - 1
                else (("query",), ("key", "value")))
      weights = {}
      for names in groups:
        label = "".join(name[0] for name in names)
        parts = [projection(e, names) for e in encoders]
        weights[f"{label}_kernel"] = stack([k for k, _ in parts], f"block_{index}_{label}_kernel")
        weights[f"{label}_bias"] = stack([b for _, b in parts], f"block_{index}_{label}_bias")
      weights.update({
          "out_kernel": stack([of(e).attention._output_dense.kernel.numpy().reshape(
              -1, self.dim) for e in encoders], f"block_{index}_out_kernel"),
          "out_bias": stack([of(e).attention._output_dense.bias.numpy()[None]
                             for e in encoders], f"block_{index}_out_bias"),
          "attention_norm": norm(lambda e, index=index: e.blocks[index].attention_norm,
                                 f"block_{index}_attention_norm"),
          "hidden_kernel": stack([of(e).hidden.kernel.numpy() for e in encoders],
                                 f"block_{index}_hidden_kernel"),
          "hidden_bias": stack([of(e).hidden.bias.numpy()[None] for e in encoders],
                               f"block_{index}_hidden_bias"),
          "output_kernel": stack([of(e).output_dense.kernel.numpy() for e in encoders],
                                 f"block_{index}_output_kernel"),
          "output_bias": stack([of(e).output_dense.bias.numpy()[None] for e in encoders],
                               f"block_{index}_output_bias"),
          "ffn_norm": norm(lambda e, index=index: e.blocks[index].ffn_norm,
                           f"block_{index}_ffn_norm"),
      })
      self.blocks.append(weights)

  @classmethod
  def from_encoders(cls, encoders: Sequence["keras.layers.Layer"]
                    ) -> Optional["StackedTransformer"]:
    """A stacked encoder of `encoders`, or None where they are not all Transformer
    session encoders of one shape (Keras' plain MultiHeadAttention and Dense)."""
    if not encoders or not all(isinstance(e, layers.TransformerSessionEncoder)
                               for e in encoders):
      return None

    def shape(e: layers.TransformerSessionEncoder
              ) -> Tuple[Tuple[int, ...], int, Tuple[int, ...], Tuple[int, ...], float]:
      return (tuple(e.positions.shape), len(e.blocks),
              tuple(e.blocks[0].attention._query_dense.kernel.shape),
              tuple(e.blocks[0].hidden.kernel.shape), float(e.input_norm.epsilon))

    if len({shape(e) for e in encoders}) != 1:
      return None
    for e in encoders:
      for block in e.blocks:
        mha = block.attention
        if (mha._use_gate or mha._query_dense.equation != "abc,cde->abde"
            or mha._output_dense.equation != "abcd,cde->abe"
            or getattr(block.hidden.activation, "__name__", "") != "relu"
            or getattr(block.output_dense.activation, "__name__", "") != "linear"):
          return None
    return cls(encoders)

  def _feed_forward(self, block: Block, x: tf.Tensor) -> tf.Tensor:
    """x [T, N, d] -> [T, N, d]: ReLU(x W1 + b1) W2 + b2."""
    hidden = tf.nn.relu(tf.matmul(x, block["hidden_kernel"]) + block["hidden_bias"])
    return tf.matmul(hidden, block["output_kernel"]) + block["output_bias"]

  def _attend(self, query: tf.Tensor, key: tf.Tensor, value: tf.Tensor,
              mask: tf.Tensor) -> tf.Tensor:
    """Keras' attention of query [T, n, heads, Q, e] (scaled) over key, value
    [T, n, heads, S, e] where mask [1, n, 1, Q or 1, S] -> contexts [T, n, heads, Q, e]."""
    scores = tf.matmul(query, key, transpose_b=True)
    scores = tf.where(mask, scores, tf.constant(LARGE_NEGATIVE, tf.float32))
    weights = tf.where(mask, tf.nn.softmax(scores, axis=-1), 0.0)
    return tf.matmul(weights, value)

  def last_vectors(self, vectors: tf.Tensor, mask: tf.Tensor,
                   last_position: tf.Tensor) -> tf.Tensor:
    """Session vectors at each session's last item.

    Args:
      vectors: float [T, n, L, d], tower t's item vectors of right-padded
        windows (L <= max_len).
      mask: bool [n, L], true at real items.
      last_position: int32 [n], the position of each session's last item.

    Returns:
      float [T, n, d]: what each tower's Keras encoder outputs at that position.
    """
    with tf.name_scope(NAME_SCOPE):
      return self._last_vectors(vectors, mask, last_position)

  def _last_vectors(self, vectors: tf.Tensor, mask: tf.Tensor,
                    last_position: tf.Tensor) -> tf.Tensor:
    towers, heads, key_dim, dim = self.num_towers, self.num_heads, self.key_dim, self.dim
    width = heads * key_dim
    shape = tf.shape(vectors)
    rows, length = shape[1], shape[2]
    # tokens [T, n * L, d]: the dense layers are one matmul per tower
    x = tf.reshape(vectors + self.positions[:, None, :length, :], [towers, -1, dim])
    x = _layer_norm(x, self.input_norm, self.epsilon)
    key_mask = mask[None, :, None, None, :]  # [1, n, 1, 1, L]
    for block in self.blocks[:-1]:
      qkv = tf.matmul(x, block["qkv_kernel"]) + block["qkv_bias"]  # [T, nL, 3 * width]
      qkv = tf.reshape(qkv, [towers, rows, length, 3, heads, key_dim])
      query, key, value = tf.unstack(tf.transpose(qkv, [3, 0, 1, 4, 2, 5]))  # [T, n, h, L, e]
      positions = tf.range(length)
      causal = key_mask & (positions[:, None] >= positions[None, :])  # [1, n, 1, L, L]
      context = self._attend(query, key, value, causal)
      context = tf.reshape(tf.transpose(context, [0, 1, 3, 2, 4]), [towers, -1, width])
      attended = tf.matmul(context, block["out_kernel"]) + block["out_bias"]
      x = _layer_norm(x + attended, block["attention_norm"], self.epsilon)
      x = _layer_norm(x + self._feed_forward(block, x), block["ffn_norm"], self.epsilon)
    # The last block only at each session's last item (its causal mask: every
    # real item of the right-padded window, all at or before it).
    block = self.blocks[-1]
    last = tf.gather(x, tf.range(rows) * length + last_position, axis=1)  # [T, n, d]
    query = tf.reshape(tf.matmul(last, block["q_kernel"]) + block["q_bias"],
                       [towers, -1, heads, 1, key_dim])
    kv = tf.matmul(x, block["kv_kernel"]) + block["kv_bias"]  # [T, nL, 2 * width]
    kv = tf.reshape(kv, [towers, rows, length, 2, heads, key_dim])
    key, value = tf.unstack(tf.transpose(kv, [3, 0, 1, 4, 2, 5]))
    context = self._attend(query, key, value, key_mask)  # [T, n, h, 1, e]
    attended = tf.matmul(tf.reshape(context, [towers, -1, width]), block["out_kernel"]) \
        + block["out_bias"]
    last = _layer_norm(last + attended, block["attention_norm"], self.epsilon)
    return _layer_norm(last + self._feed_forward(block, last), block["ffn_norm"],
                       self.epsilon)
