"""The serving graph's session side: request rows -> fused query vectors [B, D].

`SessionQuery` turns the compacted sessions of a request (`compact`: the items
of each row, order kept) into the fused query

  q = concat(alpha * u_id, (1 - alpha) / text_temperature * u_text)   [B, D]

(the towers' session vectors at each session's last item, each times its
`scale`), which `serving.topk` scores against the catalogue. The weights alpha
and 1/temperature multiply the session vector (B x D numbers per request)
instead of the matrix, so the item vectors the session encoders read are the
trained ones, unscaled.

Cost: the session encoders dominate a small catalogue; a request of at most
`fast_path_batch` sessions (default 16) runs them in one pass over its
sessions padded to the longest, a larger one per bucket of session lengths
(<= 8, 9..16, 17..32, ..., max_len), each bucket padded to its own longest
session, so a batch of mostly short sessions is not padded to max_len; one
`cond` chooses. A causal encoder's output at a session's last item does not
depend on padding after it, so both equal the full-window model up to float
rounding. Towers that read the same items share the window and one gather of
item vectors, and Transformer encoders of one shape run as one stacked
computation (`encoders.StackedTransformer`: the ops of one encoder for both
towers, the last block only at the last item).

The variables are only ever read whole (`item_rows`): a gather on a variable
itself would make TensorFlow copy all of it at every request.

`SessionQuery` is a plain object, not a `tf.Module`: the variables and Keras
layers it reads stay tracked by the `serving.module.ServingModule` that holds
them, so the SavedModel's object graph is that module's alone.
"""

from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

import tensorflow as tf

from alterrec_tf.formats import schema
from alterrec_tf.serving import encoders as serving_encoders

if TYPE_CHECKING:
  import keras

try:  # TensorFlow's un-lowered cond (see `cond`)
  from tensorflow.python.ops.cond_v2 import fast_cond_v2 as _fast_cond_v2
except ImportError:  # pragma: no cover - an older or newer TensorFlow
  _fast_cond_v2 = None

FAST_PATH_BATCH = 16  # requests of at most this many sessions skip the length buckets
LENGTH_BUCKETS = (8, 16, 32, 64, 128, 256)  # the bucket bounds below max_len are used

# name scopes of this side's pieces (benchmarks/serving_profile.py adds up the
# time of each; the session encoders are the Keras layers' own scopes)
SCOPE_COMPACT = "compact"
SCOPE_BUCKETS = "length_buckets"
SCOPE_WINDOWS = "windows"

# ((known_items, (tower index, ...)), ...): the towers that share a window (`tower_groups`).
Groups = Sequence[Tuple[int, Tuple[int, ...]]]
_Branch = TypeVar("_Branch")  # what both branches of `cond` return


class TowerPart:
  """How one tower enters the serving graph.

  Attributes:
    name: "id" or "text".
    session_encoder: the trained Keras session encoder ([B, L, d], mask) -> [B, L, d].
    dim: d.
    scale: weight of its session vector in the fused query (alpha, or
      (1 - alpha) / text_temperature, or 1 / temperature for a single tower).
    known_items: items with index >= this are skipped by this tower's session
      encoder (the ID tower: the trained catalogue size; text: all items).
  """

  def __init__(self, name: str, session_encoder: "keras.layers.Layer", dim: int, scale: float,
               known_items: int) -> None:
    self.name, self.session_encoder, self.dim = name, session_encoder, int(dim)
    self.scale, self.known_items = float(scale), int(known_items)


def tower_columns(parts: Sequence[TowerPart]) -> List[Tuple[int, int]]:
  """Each tower's columns [start, end) in the item matrix (the towers side by side)."""
  columns: List[Tuple[int, int]] = []
  for part in parts:
    start = columns[-1][1] if columns else 0
    columns.append((start, start + part.dim))
  return columns


def length_buckets(max_len: int) -> Tuple[int, ...]:
  """Bounds of the session-length buckets encoded as separate batches: those
  of LENGTH_BUCKETS below max_len (sessions <= 8, <= 16, <= 32, ...)."""
  return tuple(bound for bound in LENGTH_BUCKETS if bound < max_len)


def tower_groups(parts: Sequence[TowerPart], num_items: int) -> Tuple[Tuple[int, tuple], ...]:
  """Towers that read the same items, which share their window:
  ((known_items, (tower index, ...)), ...) in the towers' order."""
  groups: Dict[int, list] = {}
  for index, part in enumerate(parts):
    groups.setdefault(min(part.known_items, num_items), []).append(index)
  return tuple((known, tuple(members)) for known, members in groups.items())


def stack_groups(parts: Sequence[TowerPart], groups: Groups, stack_encoders: bool
                 ) -> Tuple[List[serving_encoders.StackedTransformer], Dict[tuple, int]]:
  """Each group's session encoders as one `encoders.StackedTransformer` where
  they can be (consecutive towers, Transformers of one shape; only with
  `stack_encoders`): (the stacked encoders, {group members: index into them})."""
  stacked_encoders: List[serving_encoders.StackedTransformer] = []
  stacked: Dict[tuple, int] = {}
  for _, members in groups:
    consecutive = members == tuple(range(members[0], members[-1] + 1))
    encoder = (serving_encoders.StackedTransformer.from_encoders(
        [parts[index].session_encoder for index in members])
        if stack_encoders and consecutive else None)
    if encoder is not None:
      stacked[members] = len(stacked_encoders)
      stacked_encoders.append(encoder)
  return stacked_encoders, stacked


class SessionQuery:
  """Compacted sessions (ragged int32 [B, None]) -> fused query vectors [B, D].

  Args:
    parts: the `TowerPart`s, their dims summing to D.
    columns: `tower_columns(parts)`.
    groups: `tower_groups(parts, num_items)`.
    buckets: `length_buckets(max_len)`.
    stacked_encoders: the first result of `stack_groups` (as the serving
      module tracks it).
    stacked: the second result of `stack_groups`.
    rows: item indices int [...] -> item matrix rows float [..., D] (the
      serving module's read of its variables).
    num_items: V.
    max_len: items of context kept per session.
    fast_path_batch: requests of at most this many sessions run the session
      encoders in one pass (no length buckets).
  """

  def __init__(self, parts: Sequence[TowerPart], columns: Sequence[Tuple[int, int]],
               groups: Groups, buckets: Sequence[int],
               stacked_encoders: Sequence[serving_encoders.StackedTransformer],
               stacked: Mapping[Tuple[int, ...], int], rows: Callable, num_items: int,
               max_len: int, fast_path_batch: int) -> None:
    self.parts, self.columns, self.groups = tuple(parts), columns, groups
    self.length_buckets = buckets
    self.stacked_encoders, self.stacked = stacked_encoders, stacked
    self.rows, self.num_items, self.max_len = rows, int(num_items), int(max_len)
    self.fast_path_batch = int(fast_path_batch)

  def __call__(self, session: tf.RaggedTensor) -> tf.Tensor:
    """Fused query vectors [B, D] of compacted sessions (ragged int32 [B, None]).

    Towers that read the same items (all of them, unless the ID tower skips
    cold-start items) share one window and one gather of item vectors
    [B, L, D]. A request of at most `fast_path_batch` sessions is encoded in
    one pass; a larger one per bucket of session lengths, both towers in one
    branch per bucket."""
    blocks = [None] * len(self.parts)
    for known, members in self.groups:
      items = session
      if known < self.num_items:
        items = tf.ragged.boolean_mask(session, session < known)
      items = items[:, -self.max_len:]
      for index, vectors in zip(members, self._group_last_vectors(members, items)):
        blocks[index] = vectors * self.parts[index].scale
    return blocks[0] if len(blocks) == 1 else tf.concat(blocks, axis=-1)

  def _group_last_vectors(self, members: Tuple[int, ...],
                          items: tf.RaggedTensor) -> List[tf.Tensor]:
    """Session vectors [n, d_t] of towers `members` (indices into the towers)
    at the last item of ragged sessions [n, None], in one pass or bucketed."""
    def one_pass() -> List[tf.Tensor]:
      return self._last_vectors(members, items)

    encoders = [self.parts[index].session_encoder for index in members]
    if not self.length_buckets or not any(encoder.weights for encoder in encoders):
      return one_pass()
    return cond(items.nrows(out_type=tf.int32) <= self.fast_path_batch, one_pass,
                lambda: self._bucketed_last_vectors(members, items))

  def _last_vectors(self, members: Tuple[int, ...], items: tf.RaggedTensor) -> List[tf.Tensor]:
    """Session vectors [n, d_t] of towers `members` at the last item of ragged
    sessions [n, None] (zeros for an empty session), one window for all."""
    lengths = tf.cast(items.row_lengths(), tf.int32)
    # Right-padded to the longest session given, not to max_len: a causal
    # encoder's output at the last real item does not depend on the padding
    # after it, and short sessions cost proportionally less.
    with tf.name_scope(SCOPE_WINDOWS):
      window = items.to_tensor(default_value=schema.PADDING_INDEX)
      window = tf.pad(window, [[0, 0], [0, tf.maximum(1 - tf.shape(window)[1], 0)]])
      mask = tf.not_equal(window, schema.PADDING_INDEX)
      vectors = self.rows(window)  # [n, L, D]
      last_position = tf.maximum(lengths - 1, 0)
    if members in self.stacked:  # all of them at once: [T, n, d]
      start, end = self.columns[members[0]][0], self.columns[members[-1]][1]
      shape = tf.shape(vectors)
      stacked = tf.transpose(tf.reshape(
          vectors[:, :, start:end], [shape[0], shape[1], len(members), -1]), [2, 0, 1, 3])
      encoder = self.stacked_encoders[self.stacked[members]]
      last = encoder.last_vectors(stacked, mask, last_position)
      last = tf.where((lengths > 0)[None, :, None], last, tf.zeros_like(last))
      return tf.unstack(last, num=len(members))
    outputs = []
    for index in members:
      start, end = self.columns[index]
      prefixes = self.parts[index].session_encoder(vectors[:, :, start:end], mask,
                                                   training=False)
      last = tf.gather(prefixes, last_position, batch_dims=1)
      outputs.append(tf.where((lengths > 0)[:, None], last, tf.zeros_like(last)))
    return outputs

  def _bucketed_last_vectors(self, members: Tuple[int, ...],
                             items: tf.RaggedTensor) -> List[tf.Tensor]:
    """As `_last_vectors`, run per session-length bucket, so that a batch of
    mostly short sessions is not padded to its longest one."""
    with tf.name_scope(SCOPE_BUCKETS):
      lengths = tf.cast(items.row_lengths(), tf.int32)
      bucket = tf.searchsorted(tf.constant(self.length_buckets, tf.int32), lengths,
                               side="left")
      rows = tf.range(tf.shape(lengths)[0])
      parts = tf.dynamic_partition(rows, bucket, len(self.length_buckets) + 1)
      subsets = [tf.gather(items, index) for index in parts]
    outputs = []
    for index, subset in zip(parts, subsets):
      outputs.append(cond(
          tf.size(index) > 0,
          lambda subset=subset: self._last_vectors(members, subset),
          lambda index=index: [tf.zeros([tf.size(index), end - start])
                               for start, end in (self.columns[m] for m in members)]))
    with tf.name_scope(SCOPE_BUCKETS):
      return [tf.dynamic_stitch(parts, [bucket_outputs[position] for bucket_outputs in outputs])
              for position in range(len(members))]


def item_rows(item_matrix: Optional[tf.Variable], item_blocks: tf.Variable, block_size: int,
              indices: tf.Tensor) -> tf.Tensor:
  """Item matrix rows float [..., D] of item indices int [...].

  Read from the matrix variable [V, D] (`item_matrix`, None with chunks), else
  from the blocks variable [chunks, D, C] (`item_blocks`, C = `block_size`).
  The variables are only ever read whole (a tensor of the variable, then
  gathered): a gather on a variable (ResourceGather) switches it to
  copy-on-read, after which TensorFlow copies all of it at every later read
  (the scoring matmul's), which cost more than the rest of a one-session
  request at 3.4k items."""
  if item_matrix is not None:
    return tf.gather(tf.convert_to_tensor(item_matrix), indices)
  # item i is column i % C of block i // C: element (i // C, d, i % C) of the blocks
  indices = tf.cast(indices, tf.int64)
  width = int(item_blocks.shape[1])
  block, column = indices // block_size, indices % block_size
  flat = ((block * width)[..., None] + tf.range(width, dtype=tf.int64)) * block_size \
      + column[..., None]
  return tf.gather(tf.reshape(tf.convert_to_tensor(item_blocks), [-1]), flat)


def compact(dense: tf.Tensor) -> tf.RaggedTensor:
  """Ragged int32 [B, None]: the items of each row of dense [B, L], in order."""
  with tf.name_scope(SCOPE_COMPACT):
    return tf.ragged.boolean_mask(dense, tf.not_equal(dense, schema.PADDING_INDEX))


def cond(pred: tf.Tensor, true_fn: Callable[..., _Branch],
         false_fn: Callable[..., _Branch]) -> _Branch:
  """tf.cond as one If op that runs the branch taken and nothing of the other.

  A plain tf.cond is lowered to Switch/Merge when the function is instantiated,
  and the executor then walks every op of the branch not taken as dead: with
  the length buckets' four encoder passes per tower beside the one-pass path,
  that was 15% of a one-session call (BUILD_NOTES.md, "Serving latency").
  TensorFlow's `fast_cond_v2` keeps the If functional (a standard op: TF
  Serving runs it as any SavedModel's); the branches must not need automatic
  control dependencies (these only read variables). Falls back to tf.cond
  where a TensorFlow lacks it.
  """
  if _fast_cond_v2 is None:
    return tf.cond(pred, true_fn, false_fn)
  return _fast_cond_v2(pred, true_fn, false_fn)
