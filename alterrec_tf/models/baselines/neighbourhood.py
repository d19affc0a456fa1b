"""Session neighbourhoods, the machinery V-SKNN (`session_knn`) and STAN (`stan`) share.

Both follow the session-rec implementations (Ludewig & Jannach; github.com/rn5l/session-rec,
algorithms/knn/vsknn.py and stan.py): the current session is the prefix (here the window's
last max_len items); its candidate neighbours are the training sessions sharing at least
one item with it, of which only the `sample_size` most recent are kept (0: all);
each candidate gets a similarity from the prefix's position-weighted item vector q
(a repeated item keeps the weight of its latest position) and the candidate's binary
item vector b; the `neighbours` most similar candidates vote for their items, each
vote weighted by the neighbour's similarity and a model-specific decay. The scores of a
prefix are divided by their largest value (session-rec's `normalize`; it changes no
ranking and keeps the popularity tie-break of `CountFloor` within float32 resolution).

"Most recent" is the training sessions' timestamp (their start: the prepared data has one
time per session; session-rec uses the last event's), equal or missing times in file
order (a later file position is more recent; `data_tools` writes each split sorted by
time). Equal similarities: the more recent session first.

The training sessions are held as inverted lists (item -> sessions, session -> items);
the prefixes are scored in chunks, each holding a few dense [P, N] tensors (N training
sessions; at most 64 MB each), one [P, V] int32 map of the prefix items and the votes
of P x k neighbours.
"""

import dataclasses
import time
from typing import List, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from alterrec_tf.formats import schema
from alterrec_tf.models.baselines.floors import CountFloor, read_sessions_and_times, training_counts

# session-rec's decay names (vsknn.py `weighting` / `weighting_score`, sr.py `weighting`).
WEIGHTINGS = ("same", "div", "linear", "log", "quadratic")
SECONDS_PER_DAY = 86400.0
# Prefixes are scored in chunks of at most this many (prefix, training session) cells
# (the dense [P, N] tensors, 64 MB each) and (prefix, neighbour) slots (the votes: a
# slot holds its neighbour's items).
MAX_PREFIX_CELLS = 2 ** 24
MAX_VOTE_SLOTS = 2 ** 17
# A tensor, or what `tf.convert_to_tensor` takes (an array, a number).
TensorLike = Union[tf.Tensor, npt.ArrayLike]


def _log10(x: tf.Tensor) -> tf.Tensor:
  return tf.math.log(x) / tf.math.log(tf.constant(10.0, x.dtype))


def position_weight(name: str, place: TensorLike, length: TensorLike) -> tf.Tensor:
  """V-SKNN's weight of the prefix item at 1-based `place` of a prefix of `length` items.

  same: 1; div: place / length (the last item 1); linear: 1 - 0.1 (length - place),
  clipped at 0 (the last 10 items; session-rec writes it so that only prefixes of up to
  10 items get it); log: 1 / log10(length - place + 1.7); quadratic: (place / length)^2.

  Args:
    name: one of `WEIGHTINGS`.
    place, length: float tensors (broadcastable).
  """
  place = tf.convert_to_tensor(place)
  length = tf.cast(length, place.dtype)
  if name == "same":
    return tf.ones_like(place * length)
  if name == "div":
    return place / length
  if name == "linear":
    return tf.maximum(1.0 - 0.1 * (length - place), 0.0)
  if name == "log":
    return 1.0 / _log10(length - place + 1.7)
  if name == "quadratic":
    return tf.square(place / length)
  raise ValueError(f"position weighting {name!r} is not one of {WEIGHTINGS}")


def distance_weight(name: str, distance: TensorLike) -> tf.Tensor:
  """Decay of a distance d >= 1 in steps: SR's rule weight of j d steps after i, and
  V-SKNN's `weighting_score` of a neighbour whose most recent shared item is the d-th
  last of the prefix.

  same: 1; div: 1 / d; linear: 1 - 0.1 d, clipped at 0 (session-rec's turns negative
  beyond d = 10); log: 1 / log10(d + 1.7); quadratic: 1 / d^2.

  Args:
    name: one of `WEIGHTINGS`.
    distance: float tensor or array.
  """
  distance = tf.convert_to_tensor(distance)
  if name == "same":
    return tf.ones_like(distance)
  if name == "div":
    return 1.0 / distance
  if name == "linear":
    return tf.maximum(1.0 - 0.1 * distance, 0.0)
  if name == "log":
    return 1.0 / _log10(distance + 1.7)
  if name == "quadratic":
    return 1.0 / tf.square(distance)
  raise ValueError(f"distance weighting {name!r} is not one of {WEIGHTINGS}")


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")


def newest_first(timestamps: npt.ArrayLike) -> np.ndarray:
  """Session indices, most recent first; equal times: the later file position first."""
  return np.argsort(np.asarray(timestamps), kind="stable")[::-1]


def last_occurrences(items: npt.ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
  """The distinct items of a session and the 1-based place of each one's last occurrence,
  in session order: (int64 [n], int64 [n])."""
  items = np.asarray(items, np.int64)
  distinct, from_end = np.unique(items[::-1], return_index=True)
  places = len(items) - from_end
  order = np.argsort(places)
  return distinct[order], places[order]


def row_ids(ragged: tf.RaggedTensor) -> tf.Tensor:
  """Row of each flat value of a ragged [R, (n)] tensor: int64 [total].

  The same as `ragged.value_rowids()`, which builds on `tf.repeat` and is about
  ten times slower on these sizes (millions of values).
  """
  total = tf.shape(ragged.flat_values, out_type=tf.int64)[0]
  return tf.searchsorted(tf.cast(ragged.row_splits[1:], tf.int64), tf.range(total),
                         side="right")


@dataclasses.dataclass
class Prefixes:
  """The scored prefixes of a window batch.

  Attributes:
    rows: int32 [P, L] each prefix's window (later places and padding included).
    latest: bool [P, L] the prefix's items, each at its latest place only.
    places: float32 [1, L] 1-based place of each window position.
    lengths: float32 [P, 1] prefix length n (its last place).
  """
  rows: tf.Tensor
  latest: tf.Tensor
  places: tf.Tensor
  lengths: tf.Tensor


@dataclasses.dataclass
class Votes:
  """One entry per (prefix, neighbour, item of the neighbour), flat [F].

  Attributes:
    slot: int64 [F] p * k + r for neighbour r (0..k-1) of prefix p.
    prefix: int64 [F] p.
    item: int32 [F] the neighbour's item.
    session_place: float32 [F] its 1-based place in the neighbour session (last
      occurrence).
    prefix_place: float32 [F] its latest 1-based place in the prefix, 0 if absent.
    neighbour_weight: float32 [P * k] each neighbour's weight (0 if it does not vote).
    lengths: float32 [P] prefix lengths.
    num_slots: int64 scalar P * k.
  """
  slot: tf.Tensor
  prefix: tf.Tensor
  item: tf.Tensor
  session_place: tf.Tensor
  prefix_place: tf.Tensor
  neighbour_weight: tf.Tensor
  lengths: tf.Tensor
  num_slots: tf.Tensor


class NeighbourhoodFloor(CountFloor):
  """Session kNN over the training sessions (module doc); subclasses say how similar a
  candidate is (`neighbour_keys`, `neighbour_weights`) and what a vote weighs
  (`vote_values`).

  Args:
    sessions: list of N int item arrays, the training sessions in file order.
    timestamps: int [N] their times (0 where unknown).
    counts: training occurrences [V] (tie-break by popularity).
    neighbours: k, how many most similar candidates vote.
    sample_size: only the `sample_size` most recent candidates are compared; 0: all.
    exclude_seen: score the prefix's own items out.
  """

  def __init__(self, sessions: Sequence[np.ndarray], timestamps: npt.ArrayLike,
               counts: npt.ArrayLike, neighbours: int, sample_size: int,
               exclude_seen: bool = False, **kwargs) -> None:
    super().__init__(counts, exclude_seen, **kwargs)
    if neighbours < 1 or sample_size < 0:
      raise ValueError(f"need neighbours >= 1 and sample_size >= 0, got {neighbours} and "
                       f"{sample_size}")
    self.num_items = int(np.asarray(counts).shape[0])
    self.num_sessions = len(sessions)
    self.neighbours = int(neighbours)
    self.sample_size = int(sample_size)
    order = newest_first(timestamps)
    distinct: List[np.ndarray] = []
    places: List[np.ndarray] = []
    for n in order:
      items, item_places = last_occurrences(sessions[n])
      distinct.append(items)
      places.append(item_places)
    lengths = np.array([len(items) for items in distinct], np.int64)
    flat_items = (np.concatenate(distinct) if distinct else np.zeros([0])).astype(np.int32)
    flat_places = (np.concatenate(places) if places else np.zeros([0])).astype(np.float32)
    session_of = np.repeat(np.arange(self.num_sessions, dtype=np.int32), lengths)
    by_item = np.argsort(flat_items, kind="stable")  # postings keep newest-first order
    self.items_of_session = tf.RaggedTensor.from_row_lengths(flat_items, lengths)
    self.places_in_session = tf.RaggedTensor.from_row_lengths(flat_places, lengths)
    self.sessions_of_item = tf.RaggedTensor.from_row_lengths(
        session_of[by_item], np.bincount(flat_items, minlength=self.num_items).astype(np.int64))
    self.session_norms = tf.constant(np.sqrt(np.maximum(lengths, 1)).astype(np.float32))
    times = np.asarray(timestamps, np.float64)[order]
    # days from the newest training session (<= 0), newest first
    self.session_days = tf.constant(
        ((times - times.max(initial=0.0)) / SECONDS_PER_DAY).astype(np.float32))

  @classmethod
  def from_files(cls, train_files: Sequence[str], num_items: int, exclude_seen: bool = False,
                 **params) -> "NeighbourhoodFloor":
    """Indexes only the sessions of `train_files` (the training split); `params`: the
    subclass's parameters (`models.floor_defaults.PARAMETERS`)."""
    start = time.perf_counter()
    sessions, timestamps = read_sessions_and_times(train_files)
    model = cls(sessions, timestamps, training_counts(sessions, num_items),
                exclude_seen=exclude_seen, **params)
    model.fit_seconds = time.perf_counter() - start
    return model

  # --- hooks --------------------------------------------------------------------------

  def position_weights(self, places: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
    """Weight of each prefix place: float32 [P, L] from places [1, L], lengths [P, 1]."""
    raise NotImplementedError

  def neighbour_keys(self, dots: tf.Tensor, prefixes: Prefixes,
                     weights: tf.Tensor) -> tf.Tensor:
    """Order of the candidates: float32 [P, N], -inf for non-neighbours (the base
    then drops those outside the sample).

    Args:
      dots: [P, N] q.b of each prefix with each session.
      prefixes: the scored prefixes.
      weights: [P, L] q's weight at each window place (0 outside `prefixes.latest`).
    """
    raise NotImplementedError

  def neighbour_weights(self, top_keys: tf.Tensor) -> tf.Tensor:
    """Each chosen neighbour's similarity from its key: [P, k] (0 where -inf)."""
    raise NotImplementedError

  def vote_values(self, votes: Votes) -> tf.Tensor:
    """What each entry of `votes` adds to its item's score: float32 [F]."""
    raise NotImplementedError

  # --- the shared steps -------------------------------------------------------------
  def prefixes(self, item_ids: tf.Tensor, positions: tf.Tensor) -> Prefixes:
    """The scored prefixes' windows, latest places and lengths."""
    item_ids = tf.cast(item_ids, tf.int32)
    positions = tf.cast(positions, tf.int32)
    steps = tf.range(tf.shape(item_ids)[1])
    rows = tf.gather(item_ids, positions[:, 0])  # [P, L]
    ends = positions[:, 1:2]  # [P, 1]
    in_prefix = (steps[None, :] <= ends) & (rows != schema.PADDING_INDEX)
    later = steps[:, None] < steps[None, :]  # [L(u), L(v)]: v after u
    repeated_later = tf.reduce_any(
        tf.equal(rows[:, :, None], rows[:, None, :]) & later[None, :, :]
        & in_prefix[:, None, :], axis=2)  # [P, L]
    return Prefixes(rows, in_prefix & ~repeated_later,
                    tf.cast(steps + 1, tf.float32)[None, :], tf.cast(ends + 1, tf.float32))

  def session_dots(self, prefixes: Prefixes,
                   weights: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """q.b of each prefix with each training session, and whether they share an item.

    Returns:
      (dots float32 [P, N], shared bool [P, N]); columns: sessions newest first.
    """
    num_prefixes = tf.shape(prefixes.rows)[0]
    prefix_of = tf.boolean_mask(
        tf.broadcast_to(tf.range(num_prefixes)[:, None], tf.shape(prefixes.rows)),
        prefixes.latest)  # [E]
    postings = tf.gather(self.sessions_of_item, tf.boolean_mask(prefixes.rows, prefixes.latest))
    entry_of = row_ids(postings)  # which prefix item each posting belongs to
    cells = (tf.cast(tf.gather(prefix_of, entry_of), tf.int64) * self.num_sessions
             + tf.cast(postings.flat_values, tf.int64))
    values = tf.gather(tf.boolean_mask(weights, prefixes.latest), entry_of)
    values = tf.stack([values, tf.ones_like(values)], axis=1)  # [weight, shared item]
    sums = tf.math.unsorted_segment_sum(values, cells,
                                        tf.cast(num_prefixes, tf.int64) * self.num_sessions)
    sums = tf.reshape(sums, [num_prefixes, self.num_sessions, 2])
    return sums[:, :, 0], sums[:, :, 1] > 0.0

  def sample(self, shared: tf.Tensor) -> tf.Tensor:
    """The candidates compared: the `sample_size` most recent sharing sessions: [P, N]."""
    if not self.sample_size:
      return shared
    recency_rank = tf.cumsum(tf.cast(shared, tf.float32), axis=1)  # 1 = newest
    return shared & (recency_rank <= self.sample_size)

  def prefix_places(self, prefixes: Prefixes) -> tf.Tensor:
    """Latest 1-based place of each item in each prefix, 0 if absent: int32 [P, V]."""
    num_prefixes = tf.shape(prefixes.rows)[0]
    prefix_of = tf.broadcast_to(tf.range(num_prefixes)[:, None], tf.shape(prefixes.rows))
    indices = tf.boolean_mask(tf.stack([prefix_of, prefixes.rows], axis=-1), prefixes.latest)
    places = tf.boolean_mask(
        tf.broadcast_to(tf.cast(prefixes.places, tf.int32), tf.shape(prefixes.rows)),
        prefixes.latest)
    return tf.tensor_scatter_nd_max(tf.zeros([num_prefixes, self.num_items], tf.int32),
                                    indices, places)

  def prefix_scores(self, item_ids: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """The neighbours' votes, divided by the prefix's largest, + popularity: [P, V].

    In chunks of prefixes (`chunk_scores`), so that memory is bounded by
    `MAX_PREFIX_CELLS` and `MAX_VOTE_SLOTS` whatever the batch and k.
    """
    chunk = max(1, min(MAX_PREFIX_CELLS // max(self.num_sessions, 1),
                       MAX_VOTE_SLOTS // self.neighbours))
    total = tf.shape(positions)[0]
    num_chunks = tf.maximum((total + chunk - 1) // chunk, 1)  # one, maybe empty

    def body(i: tf.Tensor, parts: tf.TensorArray) -> Tuple[tf.Tensor, tf.TensorArray]:
      return i + 1, parts.write(i, self.chunk_scores(item_ids,
                                                     positions[i * chunk:(i + 1) * chunk]))

    parts = tf.TensorArray(tf.float32, size=num_chunks, infer_shape=False,
                           element_shape=tf.TensorShape([None, self.num_items]))
    _, parts = tf.while_loop(lambda i, _: i < num_chunks, body, [tf.constant(0), parts])
    return tf.reshape(parts.concat(), [total, self.num_items])

  def chunk_scores(self, item_ids: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """`prefix_scores` of some prefixes at once: [P, V]."""
    prefixes = self.prefixes(item_ids, positions)
    weights = tf.where(prefixes.latest,
                       self.position_weights(prefixes.places, prefixes.lengths), 0.0)
    dots, shared = self.session_dots(prefixes, weights)
    keys = tf.where(self.sample(shared), self.neighbour_keys(dots, prefixes, weights), -np.inf)
    k = min(self.neighbours, self.num_sessions)
    top_keys, top_sessions = tf.math.top_k(keys, k=k)  # equal keys: the newer first
    voting = top_keys > -np.inf
    num_prefixes = tf.shape(keys)[0]
    slots = tf.boolean_mask(tf.reshape(tf.range(num_prefixes * k), [-1, k]), voting)
    sessions = tf.boolean_mask(top_sessions, voting)
    items = tf.gather(self.items_of_session, sessions)
    slot = tf.cast(tf.gather(slots, row_ids(items)), tf.int64)  # [F]
    prefix = slot // k
    item = items.flat_values
    prefix_place = tf.gather_nd(self.prefix_places(prefixes),
                                tf.stack([tf.cast(prefix, tf.int32), item], axis=1))
    votes = Votes(
        slot=slot, prefix=prefix, item=item,
        session_place=tf.gather(self.places_in_session, sessions).flat_values,
        prefix_place=tf.cast(prefix_place, tf.float32),
        neighbour_weight=tf.reshape(
            tf.where(voting, self.neighbour_weights(top_keys), 0.0), [-1]),
        lengths=prefixes.lengths[:, 0], num_slots=tf.cast(num_prefixes * k, tf.int64))
    cells = prefix * self.num_items + tf.cast(item, tf.int64)
    scores = tf.math.unsorted_segment_sum(self.vote_values(votes), cells,
                                          tf.cast(num_prefixes, tf.int64) * self.num_items)
    scores = tf.reshape(scores, [num_prefixes, self.num_items])
    return normalized(scores) + self.popularity[None, :]


def cosines(dots: tf.Tensor, weights: tf.Tensor, session_norms: tf.Tensor) -> tf.Tensor:
  """q.b / (|q| |b|) of each prefix with each session: [P, N].

  Args:
    dots: [P, N] q.b.
    weights: [P, L] q's weights (each distinct item once).
    session_norms: [N] |b|, the square root of each session's distinct items.
  """
  norms = tf.sqrt(tf.reduce_sum(tf.square(weights), axis=1, keepdims=True))
  return dots / session_norms[None, :] / tf.maximum(norms, 1e-12)


def normalized(scores: tf.Tensor) -> tf.Tensor:
  """Each row divided by its largest value (rows without a positive value unchanged)."""
  largest = tf.reduce_max(scores, axis=1, keepdims=True)
  return scores / tf.where(largest > 0.0, largest, 1.0)
