"""V-SKNN (Ludewig & Jannach 2018), a floor scored like the neural models.

Session-based kNN with a position-weighted prefix. The prefix [s_1..s_n] (the window's last max_len
items) is the item vector q with q[s_i] = i / n (the "div" decay: the last
item weighs 1; a repeated item keeps the weight of its latest position); a
training session is its binary item vector b. Candidates are the training
sessions sharing at least one item with the prefix, of which only the
`sample_size` most recent are kept (0, the default: all); the `neighbours`
most similar candidates by cosine(q, b) = q.b / (|q| |b|) vote: score(j) =
sum over the neighbours of cosine x 1[j in neighbour] (equal similarities:
the more recent session first). "Most recent" is the sessions' timestamp
(stable, so sessions of equal or missing timestamps keep file order;
`data_tools` writes each split sorted by timestamp). Unlike the session-rec
code it has no second decay by the position of the shared item in the
prefix (weighting_score) and uses a plain cosine. It holds the training
sessions as inverted lists (item -> sessions, session -> items); evaluation
holds a few dense [P, N] float32 tensors per batch of P prefixes (about
330 MB each at P = 6,400 and N = 12,784 training sessions).

Built from the training TFRecords only, like every floor in `floors.py`, whose
`CountFloor` adds the padding and seen-item masks.
"""

import time
from typing import List, Sequence, Tuple

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from alterrec_tf.formats import schema
from alterrec_tf.models.baselines.floors import CountFloor, read_sessions_and_times, training_counts

# V-SKNN defaults, chosen on the Online Retail validation split (--seen_items=exclude,
# Hits@20 %; neighbours/sample: 50/all 23.33, 100/all 24.10, 200/all 24.06,
# 500/all 22.47, 100/5000 23.97, 50/1000 21.02, 100/1000 21.44, 200/1000 21.03,
# 500/1000 18.84): the neighbours that vote, and how many of the most recent
# candidate sessions are considered (0: all of them; session-rec's 1000 costs
# 2.7 points here).
SKNN_NEIGHBOURS = 100
SKNN_SAMPLE_SIZE = 0


def sessions_newest_first(sessions: Sequence[np.ndarray],
                          timestamps: npt.ArrayLike) -> List[np.ndarray]:
  """The sessions' distinct items (sorted), most recent session first.

  Args:
    sessions: list of N int item index arrays, in file order.
    timestamps: int [N] start times; equal times keep file order (a later file
      position is more recent).

  Returns:
    list of N int64 arrays.
  """
  newest_first = np.argsort(np.asarray(timestamps), kind="stable")[::-1]
  return [np.unique(np.asarray(sessions[n], np.int64)) for n in newest_first]


def row_ids(ragged: tf.RaggedTensor) -> tf.Tensor:
  """Row of each flat value of a ragged [R, (n)] tensor: int64 [total].

  The same as `ragged.value_rowids()`, which builds on `tf.repeat` and is about
  ten times slower on these sizes (millions of values).
  """
  total = tf.shape(ragged.flat_values, out_type=tf.int64)[0]
  return tf.searchsorted(tf.cast(ragged.row_splits[1:], tf.int64), tf.range(total),
                         side="right")


class SessionKNN(CountFloor):
  """V-SKNN: position-weighted session kNN over the training sessions (module doc).

  Both steps are scatter-adds over inverted lists rather than matrix products:
  the similarities add each prefix item's weight to the sessions holding it
  (cost: prefix items x their sessions), the scores add each neighbour's
  similarity to its items (cost: prefixes x neighbours x session length).

  Args:
    session_items: list of N int arrays, the distinct items of each training
      session, newest session first (`sessions_newest_first`).
    counts: training occurrences [V] (tie-break by popularity).
    neighbours: how many most similar sessions vote.
    sample_size: only the `sample_size` most recent candidate sessions (those
      sharing an item with the prefix) are considered; 0: all.
    exclude_seen: score the prefix's own items out.
  """

  def __init__(self, session_items: Sequence[np.ndarray], counts: npt.ArrayLike,
               neighbours: int = SKNN_NEIGHBOURS, sample_size: int = SKNN_SAMPLE_SIZE,
               exclude_seen: bool = False, **kwargs) -> None:
    super().__init__(counts, exclude_seen, **kwargs)
    self.num_items = int(np.asarray(counts).shape[0])
    self.num_sessions = len(session_items)
    lengths = np.array([len(items) for items in session_items], np.int64)
    flat_items = (np.concatenate(session_items) if session_items
                  else np.zeros([0], np.int64)).astype(np.int32)
    session_of = np.repeat(np.arange(self.num_sessions, dtype=np.int32), lengths)
    by_item = np.argsort(flat_items, kind="stable")  # postings keep newest-first order
    self.items_of_session = tf.RaggedTensor.from_row_lengths(flat_items, lengths)
    self.sessions_of_item = tf.RaggedTensor.from_row_lengths(
        session_of[by_item], np.bincount(flat_items, minlength=self.num_items).astype(np.int64))
    self.session_norms = tf.constant(np.sqrt(np.maximum(lengths, 1)).astype(np.float32))
    self.neighbours = int(neighbours)
    self.sample_size = int(sample_size)

  @classmethod
  def from_files(cls, train_files: Sequence[str], num_items: int,
                 neighbours: int = SKNN_NEIGHBOURS, sample_size: int = SKNN_SAMPLE_SIZE,
                 exclude_seen: bool = False) -> "SessionKNN":
    """Indexes only the sessions of `train_files` (the training split)."""
    start = time.perf_counter()
    sessions, timestamps = read_sessions_and_times(train_files)
    model = cls(sessions_newest_first(sessions, timestamps),
                training_counts(sessions, num_items), neighbours, sample_size, exclude_seen)
    model.fit_seconds = time.perf_counter() - start
    return model

  def prefix_weights(self, item_ids: tf.Tensor,
                     positions: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Position weights of the prefix items: (items int32 [P, L], weights float32 [P, L]).

    Position u (0-based) of the prefix ending at t weighs (u + 1) / (t + 1); an
    item repeated in the prefix keeps only its latest position's weight; later
    positions and padding weigh 0.
    """
    item_ids = tf.cast(item_ids, tf.int32)
    positions = tf.cast(positions, tf.int32)
    steps = tf.range(tf.shape(item_ids)[1])
    rows = tf.gather(item_ids, positions[:, 0])  # [P, L]
    ends = positions[:, 1:2]  # [P, 1]
    in_prefix = (steps[None, :] <= ends) & (rows != schema.PADDING_INDEX)  # [P, L]
    later = steps[:, None] < steps[None, :]  # [L(u), L(v)]: v after u
    repeated_later = tf.reduce_any(
        tf.equal(rows[:, :, None], rows[:, None, :]) & later[None, :, :]
        & in_prefix[:, None, :], axis=2)  # [P, L]
    decay = tf.cast(steps[None, :] + 1, tf.float32) / tf.cast(ends + 1, tf.float32)
    return rows, tf.where(in_prefix & ~repeated_later, decay, 0.0)

  def similarities(self, item_ids: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """Cosine of each prefix with each training session: float32 [P, N].

    Columns are the training sessions, newest first.
    """
    rows, weights = self.prefix_weights(item_ids, positions)
    num_prefixes = tf.shape(rows)[0]
    nonzero = weights > 0.0
    prefix_of = tf.boolean_mask(
        tf.broadcast_to(tf.range(num_prefixes)[:, None], tf.shape(rows)), nonzero)  # [E]
    postings = tf.gather(self.sessions_of_item, tf.boolean_mask(rows, nonzero))  # [E, (n)]
    entry_of = row_ids(postings)  # which prefix item each posting belongs to
    cells = (tf.cast(tf.gather(prefix_of, entry_of), tf.int64) * self.num_sessions
             + tf.cast(postings.flat_values, tf.int64))
    dots = tf.math.unsorted_segment_sum(
        tf.gather(tf.boolean_mask(weights, nonzero), entry_of), cells,
        tf.cast(num_prefixes, tf.int64) * self.num_sessions)
    dots = tf.reshape(dots, [num_prefixes, self.num_sessions])
    norms = tf.sqrt(tf.reduce_sum(tf.square(weights), axis=1))  # |q|: [P]
    return dots / self.session_norms[None, :] / tf.maximum(norms, 1e-12)[:, None]

  def prefix_scores(self, item_ids: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """sum over the neighbours of cosine x 1[j in neighbour] + popularity: [P, V]."""
    similarities = self.similarities(item_ids, positions)  # [P, N], newest session first
    if self.sample_size:
      candidates = similarities > 0.0
      recency_rank = tf.cumsum(tf.cast(candidates, tf.float32), axis=1)  # 1 = newest
      similarities = tf.where(candidates & (recency_rank <= self.sample_size),
                              similarities, 0.0)
    top_similarities, top_sessions = tf.math.top_k(  # equal similarities: newest first
        similarities, k=min(self.neighbours, self.num_sessions))
    num_prefixes = tf.shape(similarities)[0]
    voting = top_similarities > 0.0  # fewer candidates than neighbours: the rest is 0
    prefix_of = tf.boolean_mask(
        tf.broadcast_to(tf.range(num_prefixes)[:, None], tf.shape(top_sessions)), voting)
    items = tf.gather(self.items_of_session, tf.boolean_mask(top_sessions, voting))
    neighbour_of = row_ids(items)  # which neighbour each item belongs to
    cells = (tf.cast(tf.gather(prefix_of, neighbour_of), tf.int64) * self.num_items
             + tf.cast(items.flat_values, tf.int64))
    scores = tf.math.unsorted_segment_sum(
        tf.gather(tf.boolean_mask(top_similarities, voting), neighbour_of), cells,
        tf.cast(num_prefixes, tf.int64) * self.num_items)
    scores = tf.reshape(scores, [num_prefixes, self.num_items])
    return scores + self.popularity[None, :]
