"""Train / validation / test splits for layouts that do not come split.

Purchase logs (`chronological_user_split`, the paper's Appendix F: "we select
the most recent sessions from different users; 10% of these sessions are
designated for validation and 20% for testing"). Registered users' sessions and
guest sessions (no user id: `sessions.is_guest`) are split separately, each
population with the same fractions, so that train, validation and test hold the
two populations in the same shares:

  Registered users (N_r sessions): number each user's sessions from the end in
  time order (sorted by (timestamp, session_id); the user's last session has
  recency rank 0, the one before rank 1, ...). Order the sessions by (rank,
  newest timestamp first, larger session_id first). The first
  round(test_fraction * N_r) sessions are test, the next
  round(valid_fraction * N_r) validation, the rest training. So test and
  validation take the most recent session of as many different users as
  possible, the newest first, and reach back to a user's earlier sessions only
  when the last sessions of all users do not fill them. For every user,
  training sessions come before validation sessions, which come before test
  sessions (ties in time allowed).

  Guests (N_g sessions, each a one-session user): ordered by (timestamp,
  session_id) from the newest, the first round(test_fraction * N_g) are test,
  the next round(valid_fraction * N_g) validation, the rest (the oldest)
  training. A session is never cut: each guest invoice goes whole to one split.

  (Until issue 15 a guest counted as a user whose only session has rank 0, so
  every guest session filled test and validation before any registered user's
  earlier session and none was left for training: on Online Retail guests held
  78.5% of validation prefixes, 44.6% of test prefixes and none of training.)

Amazon-M2 validation (`random_holdout`): a uniformly random
round(valid_fraction * n) of the n training sessions, drawn with numpy's
RandomState(split_seed), become validation sessions.
"""

import math

import numpy as np
import pandas as pd

from data_tools.sessions import SESSION_ID, SPLIT, TIMESTAMP, USER_ID, is_guest


def _round(value: float) -> int:
  return int(math.floor(value + 0.5))


def chronological_rule(valid_fraction: float, test_fraction: float) -> str:
  """The text of the purchase-log rule stored as the manifest's `split_rule`."""
  return (
      "per-user chronological (AlterRec Appendix F), registered users and "
      "guests split separately with the same fractions: registered users' "
      "sessions are ranked per user from the newest (rank 0) by (timestamp, "
      "session_id) and ordered by (rank, timestamp descending, session_id "
      f"descending); of these N_r sessions the first round({test_fraction:g} "
      f"* N_r) are test, the next round({valid_fraction:g} * N_r) validation, "
      "the rest training; the N_g guest sessions (no user id, one session "
      "each) are ordered by (timestamp, session_id) descending: the first "
      f"round({test_fraction:g} * N_g) are test, the next "
      f"round({valid_fraction:g} * N_g) validation, the rest (the oldest) "
      "training; sessions are never cut")


def _assign(order: pd.Index, split: pd.Series, valid_fraction: float,
            test_fraction: float) -> None:
  """Sets test, then validation, on the first rows of `order` (newest first)."""
  num_test = _round(test_fraction * len(order))
  num_valid = _round(valid_fraction * len(order))
  split[order[:num_test]] = "test"
  split[order[num_test:num_test + num_valid]] = "valid"


def chronological_user_split(sessions: pd.DataFrame, valid_fraction: float,
                             test_fraction: float) -> pd.DataFrame:
  """Assigns `split` by the purchase-log rule of the module docstring.

  Args:
    sessions: unsplit sessions with user ids; guests (`sessions.is_guest`:
      user_id "" or "guest-<session_id>") are split by time among themselves.
    valid_fraction: share of the sessions of each population for validation.
    test_fraction: share of the sessions of each population for testing.

  Returns:
    The sessions in the same order with `split` set.
  """
  frame = sessions.reset_index(drop=True).copy()
  guest = is_guest(frame)
  split = pd.Series("train", index=frame.index, dtype=object)
  order = frame.loc[~guest, [USER_ID, TIMESTAMP, SESSION_ID]]
  order = order.sort_values([USER_ID, TIMESTAMP, SESSION_ID], kind="stable")
  order["rank"] = order.groupby(USER_ID, sort=False).cumcount(ascending=False)
  order = order.sort_values(["rank", TIMESTAMP, SESSION_ID],
                            ascending=[True, False, False], kind="stable")
  _assign(order.index, split, valid_fraction, test_fraction)
  guests = frame.loc[guest, [TIMESTAMP, SESSION_ID]].sort_values(
      [TIMESTAMP, SESSION_ID], ascending=False, kind="stable")
  _assign(guests.index, split, valid_fraction, test_fraction)
  frame[SPLIT] = split
  return frame


def holdout_rule(valid_fraction: float, seed: int) -> str:
  """The text of the random validation hold-out rule."""
  return (f"validation = a random round({valid_fraction:g} * n) of the n "
          f"training sessions (numpy RandomState({seed}))")


def random_holdout(sessions: pd.DataFrame, valid_fraction: float,
                   seed: int) -> pd.DataFrame:
  """Moves a random share of the training sessions to validation.

  Args:
    sessions: sessions whose `split` is "train" or "test".
    valid_fraction: share of the training sessions to hold out.
    seed: seed of numpy's RandomState.

  Returns:
    The sessions in the same order, some "train" turned into "valid".
  """
  frame = sessions.reset_index(drop=True).copy()
  train = np.flatnonzero((frame[SPLIT] == "train").to_numpy())
  count = _round(valid_fraction * len(train))
  chosen = np.random.RandomState(seed).permutation(len(train))[:count]
  split = frame[SPLIT].to_numpy(dtype=object).copy()
  split[train[chosen]] = "valid"
  frame[SPLIT] = split
  return frame
