"""tf.data input pipeline: TFRecord sessions -> fixed-length prefix windows.

A session [s_0 .. s_{n-1}] yields the examples [s_0..s_{t-1}] -> s_t for every
scored target t (t >= eval_start). A causal encoder run once over the session
gives the vector of every prefix, so a training row is not one prefix but a
window of `max_len` inputs with the next item of each position as its target:

  item_ids    int32 [max_len]  s_o .. s_{o+max_len-1}, right-padded with 0
  target_ids  int32 [max_len]  s_{o+1} .. s_{o+max_len}, 0 where none
  target_mask bool  [max_len]  which positions are scored examples

Sessions longer than max_len + 1 are cut into windows starting at offsets
o = o_0, o_0 + stride, ..., the last one aligned to the session's end. Each
target is scored in exactly one window: the earliest that holds it, i.e. the
one giving it the most context (at most max_len items, counted from the oldest
kept item, as the per-prefix reference does). With stride 1 every prefix sees
exactly its last min(t, max_len) items: the test split always uses it (the
exact protocol, `train.TEST_WINDOW_STRIDE`); training and per-epoch validation
use `--train_window_stride` / `--eval_window_stride`.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from alterrec_tf.formats import schema

ITEM_IDS = "item_ids"
TARGET_IDS = "target_ids"
TARGET_MASK = "target_mask"


def scored_positions(batch: Dict[str, tf.Tensor]) -> Tuple[tf.Tensor, tf.Tensor]:
  """The scored prefixes of a window batch (the batch format above).

  Args:
    batch: {ITEM_IDS, TARGET_IDS, TARGET_MASK: [B, L]}.

  Returns:
    (positions int64 [P, 2]: (row, column) of every prefix whose TARGET_MASK is
    set; targets int64 [P]: its target item).
  """
  positions = tf.where(batch[TARGET_MASK])
  return positions, tf.gather_nd(batch[TARGET_IDS], positions)


def session_windows(item_ids: tf.Tensor, eval_start: tf.Tensor, max_len: int,
                    stride: int) -> Dict[str, tf.Tensor]:
  """Cuts one session into prefix windows.

  Args:
    item_ids: int64 [n], n >= 2, no padding.
    eval_start: int64 scalar, first scored target position.
    max_len: inputs per window.
    stride: offset between consecutive windows of a long session; above
      max_len it is taken as max_len (a larger one would skip the targets
      between two windows).

  Returns:
    Dict of `ITEM_IDS`, `TARGET_IDS` int32 [windows, max_len] and
    `TARGET_MASK` bool [windows, max_len].
  """
  stride = min(stride, max_len)
  item_ids = tf.cast(item_ids, tf.int32)
  n = tf.size(item_ids)
  eval_start = tf.cast(eval_start, tf.int32)
  last_offset = tf.maximum(n - max_len - 1, 0)
  first_offset = tf.minimum(tf.maximum(eval_start - max_len, 0), last_offset)
  offsets = tf.concat([tf.range(first_offset, last_offset, stride), [last_offset]], 0)
  previous_offsets = tf.concat([[-max_len - 1], offsets[:-1]], 0)
  positions = offsets[:, None] + tf.range(max_len)[None, :]
  padded = tf.pad(item_ids, [[0, max_len + 1]])
  inputs = tf.gather(padded, positions)
  targets = tf.gather(padded, positions + 1)
  target_positions = positions + 1
  mask = ((targets != schema.PADDING_INDEX)
          & (target_positions > previous_offsets[:, None] + max_len)
          & (target_positions >= eval_start))
  return {ITEM_IDS: inputs, TARGET_IDS: targets, TARGET_MASK: mask}


def windows_dataset(files: Sequence[str], max_len: int, stride: int) -> tf.data.Dataset:
  """Unbatched, uncached windows of every session in `files`, in file order."""
  sessions = tf.data.TFRecordDataset(files)
  sessions = sessions.batch(256).map(schema.parse_examples)

  windows = sessions.unbatch().map(
      lambda s: session_windows(s[schema.ITEM_IDS], s[schema.EVAL_START], max_len, stride),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  windows = windows.unbatch()
  return windows.filter(lambda w: tf.reduce_any(w[TARGET_MASK]))


def count(dataset: tf.data.Dataset) -> int:
  """Number of elements of a finite dataset (one pass)."""
  return int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1).numpy())


def window_length(window: Dict[str, tf.Tensor]) -> tf.Tensor:
  """Real (non-padding) items of one window: int32 scalar."""
  return tf.reduce_sum(tf.cast(window[ITEM_IDS] != schema.PADDING_INDEX, tf.int32))


def trim_padding(batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """Cuts a window batch to its longest real row: [B, max_len] -> [B, n]."""
  longest = tf.reduce_max(tf.reduce_sum(
      tf.cast(batch[ITEM_IDS] != schema.PADDING_INDEX, tf.int32), axis=1))
  return {key: value[:, :longest] for key, value in batch.items()}


def length_buckets(max_len: int) -> List[int]:
  """Bucket boundaries of window lengths: 8, 16, 32, ... below max_len."""
  boundaries, edge = [], 8
  while edge < max_len:
    boundaries.append(edge + 1)  # bucket_by_sequence_length: length < boundary
    edge *= 2
  return boundaries


class SplitData:
  """The windows of one split, cached in memory, with their counts.

  Batches group windows of similar length (buckets 1-8, 9-16, 17-32, ...) and
  are trimmed to their longest row, so the encoders do not run over padding:
  batch tensors are [B, n] with n <= max_len varying between batches (one
  trace: the model sees a [None, None] signature).

  Attributes:
    num_windows: rows in the split.
    num_examples: scored prefixes in the split.
  """

  def __init__(self, files: Sequence[str], max_len: int, stride: int) -> None:
    self.max_len = max_len
    self._windows = windows_dataset(files, max_len, stride).cache()
    counts = self._windows.reduce(
        (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
        lambda acc, w: (acc[0] + 1, acc[1] + tf.reduce_sum(tf.cast(w[TARGET_MASK], tf.int64))))
    self.num_windows = int(counts[0].numpy())
    self.num_examples = int(counts[1].numpy())
    self._steps: Dict[int, int] = {}

  def _bucketed(self, windows: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    boundaries = length_buckets(self.max_len)
    return windows.bucket_by_sequence_length(
        window_length, boundaries, [batch_size] * (len(boundaries) + 1),
        no_padding=True).map(trim_padding)

  def batches(self, batch_size: int) -> tf.data.Dataset:
    """Batches in a fixed order (evaluation)."""
    return self._bucketed(self._windows, batch_size).prefetch(tf.data.AUTOTUNE)

  def steps(self, batch_size: int) -> int:
    """Batches per epoch (the same for every shuffle order)."""
    if batch_size not in self._steps:
      self._steps[batch_size] = count(self._bucketed(self._windows, batch_size))
    return self._steps[batch_size]

  def epochs_of_batches(self, batch_size: int, seed: int, first_epoch: int,
                        num_epochs: int) -> tf.data.Dataset:
    """Shuffled batches for epochs [first_epoch, num_epochs), one after another.

    The shuffle order of epoch e depends only on (seed, e), so a run resumed at
    epoch e sees the same batches as an uninterrupted one.
    """
    buffer = max(self.num_windows, 1)
    epochs = None
    for epoch in range(first_epoch, num_epochs):
      shuffled = self._windows.shuffle(buffer, seed=seed * 100003 + epoch,
                                       reshuffle_each_iteration=False)
      one = self._bucketed(shuffled, batch_size)
      epochs = one if epochs is None else epochs.concatenate(one)
    if epochs is None:
      raise ValueError(f"no epochs to run: first_epoch={first_epoch} >= {num_epochs}")
    return epochs.prefetch(tf.data.AUTOTUNE)


def item_counts(files: Sequence[str], num_items: int) -> tf.Tensor:
  """Training popularity: occurrences of each item index, int64 [num_items]."""
  sessions = tf.data.TFRecordDataset(files).batch(1024).map(schema.parse_examples)
  return sessions.reduce(
      tf.zeros([num_items], tf.int64),
      lambda acc, b: acc + tf.math.bincount(
          tf.cast(b[schema.ITEM_IDS].flat_values, tf.int32), minlength=num_items,
          maxlength=num_items, dtype=tf.int64))


def load_split(data_dir: str, manifest: dict, split: str, max_len: int,
               stride: int) -> Optional[SplitData]:
  files = schema.split_files(data_dir, manifest, split)
  return SplitData(files, max_len, stride) if files else None
