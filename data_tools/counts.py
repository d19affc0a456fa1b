"""What the manifest counts about the written sessions, as one mergeable tally.

`SplitCounts` adds one session at a time and merges with another tally, so that
the local `data_tools.prepare` (one pass over its DataFrame) and the Beam
pipeline (`data_tools.beam`, a CombineFn whose accumulators are `SplitCounts`)
count by the same rule: per split the sessions, the interactions (items) and the
scored examples (len(items) - eval_start), and the same for guest sessions
(`sessions.is_guest_user`).
"""

import dataclasses
from typing import Dict

import pandas as pd

from alterrec_tf.formats import schema
from data_tools import sessions as S


def _zeros() -> Dict[str, int]:
  return {split: 0 for split in schema.SPLITS}


@dataclasses.dataclass
class SplitCounts:
  """Sessions, interactions and examples per split, in all and of guests."""
  sessions: Dict[str, int] = dataclasses.field(default_factory=_zeros)
  interactions: Dict[str, int] = dataclasses.field(default_factory=_zeros)
  examples: Dict[str, int] = dataclasses.field(default_factory=_zeros)
  guest_sessions: Dict[str, int] = dataclasses.field(default_factory=_zeros)
  guest_examples: Dict[str, int] = dataclasses.field(default_factory=_zeros)

  def add(self, split: str, length: int, eval_start: int, guest: bool) -> "SplitCounts":
    """Counts one session (a split outside `schema.SPLITS` is not counted)."""
    if split not in self.sessions:
      return self
    examples = int(length) - int(eval_start)
    self.sessions[split] += 1
    self.interactions[split] += int(length)
    self.examples[split] += examples
    if guest:
      self.guest_sessions[split] += 1
      self.guest_examples[split] += examples
    return self

  def add_session(self, session: dict) -> "SplitCounts":
    """Counts one session record (the standard columns as keys)."""
    return self.add(session[S.SPLIT], len(session[S.ITEMS]), session[S.EVAL_START],
                    S.is_guest_user(session[S.USER_ID], session[S.SESSION_ID]))

  def merge(self, other: "SplitCounts") -> "SplitCounts":
    """Adds `other`'s counts to this tally."""
    for mine, theirs in ((self.sessions, other.sessions),
                         (self.interactions, other.interactions),
                         (self.examples, other.examples),
                         (self.guest_sessions, other.guest_sessions),
                         (self.guest_examples, other.guest_examples)):
      for split, count in theirs.items():
        mine[split] += count
    return self

  def totals(self) -> Dict[str, Dict[str, int]]:
    """The manifest's num_sessions, num_interactions and num_examples."""
    return {"num_sessions": dict(self.sessions),
            "num_interactions": dict(self.interactions),
            "num_examples": dict(self.examples)}

  def guests(self) -> Dict[str, Dict[str, int]]:
    """The manifest's `guests`: sessions and examples of guests per split."""
    return {"num_sessions": dict(self.guest_sessions),
            "num_examples": dict(self.guest_examples)}

  @classmethod
  def of_sessions(cls, sessions: pd.DataFrame) -> "SplitCounts":
    """The tally of a sessions DataFrame (standard columns)."""
    counts = cls()
    guest = S.is_guest(sessions)
    for split, items, start, is_guest in zip(sessions[S.SPLIT], sessions[S.ITEMS],
                                             sessions[S.EVAL_START], guest):
      counts.add(split, len(items), start, bool(is_guest))
    return counts


@dataclasses.dataclass
class SessionStats:
  """Everything the manifest states about the written sessions.

  Attributes:
    counts: the per-split tally.
    num_users: distinct non-empty user ids (guests count as one-session users).
    num_items: vocabulary size, padding row included.
    num_items_without_training: vocabulary items no training session holds.
  """
  counts: SplitCounts
  num_users: int
  num_items: int
  num_items_without_training: int


def session_stats(sessions: pd.DataFrame, num_items: int) -> SessionStats:
  """`SessionStats` of the sessions that `data_tools.prepare` writes."""
  users = sessions.loc[sessions[S.USER_ID] != "", S.USER_ID]
  train = {item for items in sessions.loc[sessions[S.SPLIT] == "train", S.ITEMS]
           for item in items}
  every = {item for items in sessions[S.ITEMS] for item in items}
  return SessionStats(SplitCounts.of_sessions(sessions), int(users.nunique()),
                      num_items, len(every - train))
