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
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from alterrec_tf.models import layers

LARGE_NEGATIVE = -1e9  # Keras' Softmax: masked scores (float32)
NAME_SCOPE = "stacked_sessions"  # of the graph's ops (benchmarks/serving_profile.py)


def _layer_norm(x, gamma, beta, epsilon):
  """LayerNormalization over the last axis; gamma, beta [T, 1, ..., d]."""
  mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
  return (x - mean) * tf.math.rsqrt(variance + epsilon) * gamma + beta


def _at(x, position):
  """x [T, n, L, d] at position [n] of each row -> [T, n, d] (exact: a one-hot sum)."""
  one_hot = tf.one_hot(position, tf.shape(x)[2], dtype=x.dtype)  # [n, L]
  return tf.reduce_sum(x * one_hot[None, :, :, None], axis=2)


class StackedTransformer(tf.Module):
  """T Transformer session encoders of one shape, evaluated together.

  Args:
    encoders: `layers.TransformerSessionEncoder`s (built, trained), all with
      the same max_len, d, number of blocks and heads.
  """

  def __init__(self, encoders: Sequence["layers.TransformerSessionEncoder"]):
    super().__init__(name="stacked_sessions")
    first = encoders[0]
    self.num_towers = len(encoders)
    self.max_len, self.dim = (int(n) for n in first.positions.shape)
    attention = first.blocks[0].attention
    self.num_heads = int(attention._query_dense.kernel.shape[1])
    self.key_dim = int(attention._query_dense.kernel.shape[2])
    self.num_blocks = len(first.blocks)

    def stack(values, name):
      return tf.Variable(np.stack([np.asarray(v, np.float32) for v in values]),
                         trainable=False, name=name)

    def norm(get, name):  # gamma, beta [T, 1, 1, d]
      return (stack([get(e).gamma.numpy()[None, None] for e in encoders], f"{name}_gamma"),
              stack([get(e).beta.numpy()[None, None] for e in encoders], f"{name}_beta"))

    self.epsilon = float(first.input_norm.epsilon)
    self.positions = stack([e.positions.numpy() for e in encoders], "positions")
    self.input_norm = norm(lambda e: e.input_norm, "input_norm")
    self.blocks = []
    for index in range(self.num_blocks):
      def of(e, index=index):
        return e.blocks[index]

      def qkv(e, index=index):  # [d, 3 * heads * key_dim] and [3 * heads * key_dim]
        mha = of(e).attention
        dense = (mha._query_dense, mha._key_dense, mha._value_dense)
        kernel = np.concatenate([d.kernel.numpy().reshape(self.dim, -1) for d in dense], 1)
        bias = np.concatenate([d.bias.numpy().reshape(-1) for d in dense])
        return kernel, bias

      parts = [qkv(e) for e in encoders]
      self.blocks.append({
          "qkv_kernel": stack([k for k, _ in parts], f"block_{index}_qkv_kernel"),
          "qkv_bias": stack([b[None] for _, b in parts], f"block_{index}_qkv_bias"),
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

  @classmethod
  def from_encoders(cls, encoders) -> Optional["StackedTransformer"]:
    """A stacked encoder of `encoders`, or None where they are not all Transformer
    session encoders of one shape (Keras' plain MultiHeadAttention and Dense)."""
    if not encoders or not all(isinstance(e, layers.TransformerSessionEncoder)
                               for e in encoders):
      return None

    def shape(e):
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

  def _dense(self, x, kernel, bias):
    """x [T, ..., a] @ kernel [T, a, b] + bias [T, 1, b] -> [T, ..., b]."""
    shape = tf.shape(x)
    flat = tf.reshape(x, [self.num_towers, -1, shape[-1]])
    out = tf.matmul(flat, kernel) + bias
    return tf.reshape(out, tf.concat([shape[:-1], tf.shape(kernel)[-1:]], 0))

  def _attention(self, block, queries_from, x, key_mask, causal):
    """Keras MultiHeadAttention of queries at `queries_from` [T, n, Q, d] over
    keys and values `x` [T, n, S, d], masked by key_mask [n, S] (and, `causal`,
    query position >= key position) -> [T, n, Q, d]."""
    heads, key_dim = self.num_heads, self.key_dim
    width = heads * key_dim
    kernel, bias = block["qkv_kernel"], block["qkv_bias"]
    if queries_from is x:
      qkv = self._dense(x, kernel, bias)  # [T, n, S, 3 * width]
      query, key, value = qkv[..., :width], qkv[..., width:2 * width], qkv[..., 2 * width:]
    else:
      query = self._dense(queries_from, kernel[:, :, :width], bias[:, :, :width])
      key_value = self._dense(x, kernel[:, :, width:], bias[:, :, width:])
      key, value = key_value[..., :width], key_value[..., width:]

    def split(t):  # [T, n, L, heads * key_dim] -> [T, n, heads, L, key_dim]
      shape = tf.shape(t)
      t = tf.reshape(t, tf.concat([shape[:3], [heads, key_dim]], 0))
      return tf.transpose(t, [0, 1, 3, 2, 4])

    query = split(query) * tf.constant(1.0 / math.sqrt(float(key_dim)), tf.float32)
    scores = tf.matmul(query, split(key), transpose_b=True)  # [T, n, heads, Q, S]
    mask = key_mask[None, :, None, None, :]  # [1, n, 1, 1, S]
    if causal:
      length = tf.shape(x)[2]
      positions = tf.range(length)
      mask = mask & (positions[:, None] >= positions[None, :])[None, None, None]
    scores = tf.where(mask, scores, tf.constant(LARGE_NEGATIVE, tf.float32))
    weights = tf.where(mask, tf.nn.softmax(scores, axis=-1), 0.0)
    context = tf.matmul(weights, split(value))  # [T, n, heads, Q, key_dim]
    context = tf.transpose(context, [0, 1, 3, 2, 4])
    shape = tf.shape(context)
    context = tf.reshape(context, tf.concat([shape[:3], [width]], 0))
    return self._dense(context, block["out_kernel"], block["out_bias"])

  def _feed_forward(self, block, x):
    hidden = tf.nn.relu(self._dense(x, block["hidden_kernel"], block["hidden_bias"]))
    return self._dense(hidden, block["output_kernel"], block["output_bias"])

  def last_vectors(self, vectors, mask, last_position):
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

  def _last_vectors(self, vectors, mask, last_position):
    length = tf.shape(vectors)[2]
    x = vectors + self.positions[:, None, :length, :]
    x = _layer_norm(x, *self.input_norm, self.epsilon)
    for index, block in enumerate(self.blocks):
      if index < self.num_blocks - 1:
        attended = self._attention(block, x, x, mask, causal=True)
        x = _layer_norm(x + attended, *block["attention_norm"], self.epsilon)
        x = _layer_norm(x + self._feed_forward(block, x), *block["ffn_norm"], self.epsilon)
        continue
      # the last block: only the last item's row (its causal mask: every real
      # item of the right-padded window, all at or before it)
      last = _at(x, last_position)[:, :, None, :]  # [T, n, 1, d]
      attended = self._attention(block, last, x, mask, causal=False)
      last = _layer_norm(last + attended, *block["attention_norm"], self.epsilon)
      x = _layer_norm(last + self._feed_forward(block, last), *block["ffn_norm"],
                      self.epsilon)
      return x[:, :, 0, :]
    return _at(x, last_position)
