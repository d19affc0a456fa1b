"""Filtering of sessions, shared by every reader.

Rules, applied in this order by `data_tools.prepare`:

1. Frequency filter (`filter_rare_items`), repeated until stable: count in how
   many sessions each item occurs (items are unique within a session, so this
   equals its number of occurrences), over all sessions of all splits; remove
   the items seen fewer than `min_item_count` times from every session; then
   drop the sessions shorter than `min_session_length` (default 2: a session
   needs one input and one target). Dropping sessions lowers other items'
   counts, so both steps repeat until nothing changes; afterwards every item
   occurs at least `min_item_count` times and every session has at least
   `min_session_length` items.
2. The split (for layouts without a given split; see `data_tools.splits`).
3. Truncation (`truncate`): with `max_session_length` > 0 a longer session
   keeps only its last `max_session_length` items. This runs after the
   frequency filter, so an item seen only in the cut-off parts may end with
   fewer than `min_item_count` occurrences.
4. Unseen items (`drop_unseen_items`): items of validation and test sessions
   that never occur in a training session are removed from those sessions
   (their ID embedding would never be trained), and sessions that become
   shorter than `min_session_length` are dropped. Training sessions are not
   touched, so one pass suffices; the vocabulary then holds exactly the items of
   the training split.

Layouts whose validation and test rows are a published benchmark
(`RawSessions.keep_eval_rows`, the RecBole / UniSRec files) keep those rows
whole: rule 1 still counts them but removes items from, and drops, training
sessions only (`protected_splits`), and rule 4 is replaced by a count
(`items_without_training`): an item that only validation/test rows hold stays
in the vocabulary, with its text row and an ID row that training never fits.
So validation/test rows in = rows out.

Removing items keeps the scored targets honest (`remap_eval_start`): a session
keeps `eval_start` = the number of kept items before the first originally
scored position (at least 1); a leave-one-out session whose target is removed
is dropped.
"""

import collections
from typing import Container, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from data_tools.sessions import EVAL_START, ITEMS, SPLIT, DataToolsError, normalize_sessions


def remap_eval_start(keep: Sequence[bool], eval_start: int) -> int:
  """`eval_start` after removing the items whose `keep` is False.

  Args:
    keep: one flag per item of the session.
    eval_start: the first scored position before removal.

  Returns:
    The new first scored position, or 0 if no scored target is kept.
  """
  if not any(keep[eval_start:]):
    return 0
  return max(1, sum(keep[:eval_start]))


def drop_from_session(items: Sequence[str], eval_start: int, dropped: Container[str],
                      min_session_length: int) -> Optional[Tuple[List[str], int]]:
  """Removes `dropped` items from one session (the per-session step of `drop_items`).

  Args:
    items: the session's raw item ids, in order.
    eval_start: its first scored position.
    dropped: the raw item ids to remove (anything with `in`).
    min_session_length: the session is dropped if it ends shorter than this.

  Returns:
    (kept items, new eval_start), or None when the session is dropped (too
    short, or no scored target left).
  """
  keep = [item not in dropped for item in items]
  start = remap_eval_start(keep, int(eval_start))
  kept = [item for item, flag in zip(items, keep) if flag]
  if start <= 0 or len(kept) < min_session_length:
    return None
  return kept, start


def drop_items(sessions: pd.DataFrame, dropped: Container[str],
               min_session_length: int,
               only_rows: Optional[Sequence[bool]] = None) -> pd.DataFrame:
  """Removes items from sessions and drops sessions that become too short.

  Args:
    sessions: the sessions (standard columns).
    dropped: the raw item ids to remove.
    min_session_length: sessions shorter than this afterwards are dropped.
    only_rows: if given, only rows whose flag is True are changed (or dropped).

  Returns:
    The filtered sessions.
  """
  new_items, new_starts, kept_rows = [], [], []
  if only_rows is None:
    only_rows = [True] * len(sessions)
  for items, eval_start, apply in zip(sessions[ITEMS], sessions[EVAL_START],
                                      only_rows):
    result = (drop_from_session(items, eval_start, dropped, min_session_length)
              if apply else (items, eval_start))
    kept_rows.append(result is not None)
    new_items.append(result[0] if result else [])
    new_starts.append(result[1] if result else 0)
  result = sessions.copy()
  result[ITEMS] = new_items
  result[EVAL_START] = new_starts
  return normalize_sessions(result[np.asarray(kept_rows, dtype=bool)])


def _item_counts(sessions: pd.DataFrame) -> collections.Counter:
  return collections.Counter(item for items in sessions[ITEMS] for item in items)


def make_summary(sessions: int, items: int, interactions: int) -> Dict[str, int]:
  """The before/after record of the frequency filter's report."""
  return {"sessions": int(sessions), "items": int(items),
          "interactions": int(interactions)}


def summary(sessions: pd.DataFrame) -> Dict[str, int]:
  """Numbers of sessions, distinct items and interactions."""
  return make_summary(len(sessions), len(_item_counts(sessions)),
                      sessions[ITEMS].map(len).sum())


def filter_rare_items(sessions: pd.DataFrame, min_item_count: int,
                      min_session_length: int,
                      protected_splits: Sequence[str] = ()
                      ) -> Tuple[pd.DataFrame, dict]:
  """Rule 1 of the module docstring, repeated until stable.

  Args:
    sessions: the sessions (standard columns).
    min_item_count: items in fewer sessions than this are removed.
    min_session_length: sessions shorter than this are dropped.
    protected_splits: sessions of these splits count but are never changed.

  Returns:
    The filtered sessions and a dict of before/after counts and iterations.
  """
  before = summary(sessions)
  iterations = 0
  while True:
    free = ~sessions[SPLIT].isin(list(protected_splits)).to_numpy()
    counts = _item_counts(sessions)
    rare = {item for item in _item_counts(sessions[free])
            if counts[item] < min_item_count}
    too_short = (sessions[ITEMS].map(len)[free] < min_session_length).any()
    if not rare and not too_short:
      break
    sessions = drop_items(sessions, rare, min_session_length,
                          only_rows=list(free))
    iterations += 1
  return sessions, frequency_report(before, summary(sessions), iterations)


def frequency_report(before: dict, after: dict, iterations: int) -> dict:
  """The frequency filter's report: `make_summary` before and after, passes."""
  return {"before": before, "after": after, "iterations": int(iterations)}


def truncate_session(items: Sequence[str], eval_start: int,
                     max_session_length: int) -> Tuple[List[str], int]:
  """Rule 3 for one session: (its last `max_session_length` items, eval_start)."""
  if max_session_length <= 0:
    return list(items), int(eval_start)
  cut = max(0, len(items) - max_session_length)
  return list(items[-max_session_length:]), max(1, int(eval_start) - cut)


def truncate(sessions: pd.DataFrame, max_session_length: int) -> pd.DataFrame:
  """Rule 3: keeps the last `max_session_length` items (0 = no limit)."""
  if max_session_length <= 0:
    return sessions
  result = sessions.copy()
  cut = [truncate_session(items, start, max_session_length)
         for items, start in zip(result[ITEMS], result[EVAL_START])]
  result[ITEMS] = [items for items, _ in cut]
  result[EVAL_START] = [start for _, start in cut]
  return normalize_sessions(result)


def _unseen(sessions: pd.DataFrame):
  """(training-row mask, items of validation/test sessions not in training)."""
  is_train = (sessions[SPLIT] == "train").to_numpy()
  seen = set(_item_counts(sessions[is_train]))
  unseen = {item for items, train in zip(sessions[ITEMS], is_train)
            if not train for item in items if item not in seen}
  return is_train, unseen


def drop_unseen_items(sessions: pd.DataFrame,
                      min_session_length: int) -> Tuple[pd.DataFrame, dict]:
  """Rule 4: removes validation/test items that no training session has."""
  is_train, unseen = _unseen(sessions)
  before = sessions[SPLIT].value_counts().to_dict()
  result = drop_items(sessions, unseen, min_session_length,
                      only_rows=list(~is_train))
  after = result[SPLIT].value_counts().to_dict()
  return result, unseen_report(len(unseen), before, after)


def unseen_report(unseen_items: int, before: Mapping[str, int],
                  after: Mapping[str, int]) -> dict:
  """Rule 4's report: items removed, sessions per split before and after."""
  return {
      "unseen_items_removed": int(unseen_items), "items_without_training": 0,
      "sessions_dropped": {split: int(before.get(split, 0) - after.get(split, 0))
                           for split in ("valid", "test")}}


def items_without_training(sessions: pd.DataFrame) -> dict:
  """Rule 4 for `keep_eval_rows` layouts: counts unseen items, removes none."""
  _, unseen = _unseen(sessions)
  return without_training_report(len(unseen))


def without_training_report(unseen_items: int) -> dict:
  """Rule 4's report for `keep_eval_rows` layouts (nothing removed)."""
  return {"unseen_items_removed": 0, "items_without_training": int(unseen_items),
          "sessions_dropped": {"valid": 0, "test": 0}}


def require_sessions(sessions: pd.DataFrame, source: str, required_splits:
                     Sequence[str], hint: str) -> None:
  """Fails if a required split is empty after filtering (see `require_splits`)."""
  require_splits(sessions[SPLIT].value_counts().to_dict(), source,
                 required_splits, hint)


def require_splits(counts: Mapping[str, int], source: str,
                   required_splits: Sequence[str], hint: str) -> None:
  """Fails if a required split has no session.

  Args:
    counts: sessions per split after filtering.
    source: the input, for the message.
    required_splits: the splits that must not be empty.
    hint: what the user can change.

  Raises:
    DataToolsError: naming the input, the empty split and what to change.
  """
  counts = {split: int(count) for split, count in counts.items() if count}
  empty = [split for split in required_splits if not counts.get(split)]
  if empty:
    raise DataToolsError(
        f"{source}: no {'/'.join(empty)} sessions left after filtering "
        f"(sessions per split: {dict(sorted(counts.items()))}); {hint}")
