"""Item co-occurrence in the training sessions, for the false-negative guard.

The partner's band (ranks k1..k2) is full of plausible next items: items bought
with the target, colour and size variants. Some of them are false negatives.
`top_cooccurring` lists, for every item, the items that share the most
training sessions with it; `negatives.drop_listed_negatives` turns a hard
negative on its target's list into padding (`--false_negative_cooccurrence`).

Counting: every unordered pair of distinct items of one session counts once,
however often or far apart they occur in it (a session is a basket). Only the
training split is read. Memory grows with the number of distinct pairs, not
with the catalogue squared: sessions are counted in chunks whose pair keys
(a * V + b, a < b) are reduced with `np.unique` and merged.
"""

from typing import Iterable, List, Tuple

import numpy as np

from alterrec_tf.formats import schema

PAIRS_PER_CHUNK = 4_000_000  # pair keys held at once before they are reduced


def _session_pairs(session: np.ndarray, num_items: int) -> np.ndarray:
  """int64 keys a * V + b (a < b) of the distinct item pairs of one session."""
  items = np.unique(session[session != schema.PADDING_INDEX]).astype(np.int64)
  if len(items) < 2:
    return np.zeros([0], np.int64)
  first, second = np.triu_indices(len(items), k=1)
  return items[first] * num_items + items[second]


def _reduce(keys: List[np.ndarray], counts: List[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
  """Sums the counts of equal keys: (unique keys int64 [N], counts int64 [N])."""
  all_keys = np.concatenate(keys)
  all_counts = np.concatenate(counts)
  unique, inverse = np.unique(all_keys, return_inverse=True)
  return unique, np.bincount(inverse, weights=all_counts, minlength=len(unique)).astype(
      np.int64)


def pair_counts(sessions: Iterable[np.ndarray],
                num_items: int) -> Tuple[np.ndarray, np.ndarray]:
  """Sessions in which each unordered pair of distinct items occurs together.

  Args:
    sessions: int item index arrays (0 = padding, ignored).
    num_items: V, the catalogue size including the padding row.

  Returns:
    (keys int64 [N]: a * V + b with a < b, counts int64 [N]), keys ascending.
  """
  keys: List[np.ndarray] = [np.zeros([0], np.int64)]
  counts: List[np.ndarray] = [np.zeros([0], np.int64)]
  pending = 0
  for session in sessions:
    pairs = _session_pairs(np.asarray(session), num_items)
    keys.append(pairs)
    counts.append(np.ones_like(pairs))
    pending += len(pairs)
    if pending >= PAIRS_PER_CHUNK:
      reduced = _reduce(keys, counts)
      keys, counts, pending = [reduced[0]], [reduced[1]], 0
  return _reduce(keys, counts)


def top_cooccurring(sessions: Iterable[np.ndarray], num_items: int,
                    top_n: int) -> np.ndarray:
  """Each item's `top_n` most frequent partners in the sessions.

  Ties in count go to the lower item index. An item with fewer partners is
  filled with `num_items`, an index no item has.

  Args:
    sessions: int item index arrays of the training split (0 = padding).
    num_items: V including the padding row 0.
    top_n: partners kept per item (> 0).

  Returns:
    int32 [V, top_n]: row i the partners of item i, ascending (the padding row
    and items without partners: all `num_items`), for `np.searchsorted` /
    `tf.searchsorted` membership tests.
  """
  if top_n <= 0:
    raise ValueError(f"top_n={top_n} must be positive")
  keys, counts = pair_counts(sessions, num_items)
  low, high = keys // num_items, keys % num_items
  rows = np.concatenate([low, high])  # both directions of every pair
  partners = np.concatenate([high, low])
  both_counts = np.concatenate([counts, counts])
  order = np.lexsort((partners, -both_counts, rows))  # by row, count desc, index
  rows, partners = rows[order], partners[order]
  starts = np.searchsorted(rows, rows, side="left")  # first slot of each row
  rank = np.arange(len(rows)) - starts
  keep = rank < top_n
  table = np.full([num_items, top_n], num_items, np.int64)
  table[rows[keep], rank[keep]] = partners[keep]
  return np.sort(table, axis=1).astype(np.int32)
