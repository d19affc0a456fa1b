"""Train / validation / test splits for layouts that do not come split.

Purchase logs (`chronological_user_split`, the paper's Appendix F: "we select
the most recent sessions from different users; 10% of these sessions are
designated for validation and 20% for testing"):

  Number each user's sessions from the end in time order (sorted by
  (timestamp, session_id); the user's last session has recency rank 0, the one
  before rank 1, ...). Order all sessions by (rank, newest timestamp first,
  larger session_id first). The first round(test_fraction * N) sessions are the
  test split, the next round(valid_fraction * N) the validation split, the rest
  training (N = sessions after filtering). So test and validation take the most
  recent session of as many different users as possible, the newest first, and
  reach back to a user's earlier sessions only when the last sessions of all
  users do not fill them. For every user, training sessions come before
  validation sessions, which come before test sessions (ties in time allowed).
  A guest (no user id) is a user with one session: that session has rank 0.

Amazon-M2 validation (`random_holdout`): a uniformly random
round(valid_fraction * n) of the n training sessions, drawn with numpy's
RandomState(split_seed), become validation sessions.
"""

import math

import numpy as np
import pandas as pd

from data_tools.sessions import SESSION_ID, SPLIT, TIMESTAMP, USER_ID


def _round(value: float) -> int:
  return int(math.floor(value + 0.5))


def chronological_rule(valid_fraction: float, test_fraction: float) -> str:
  """The text of the purchase-log rule stored as the manifest's `split_rule`."""
  return (
      "per-user chronological (AlterRec Appendix F): each user's sessions are "
      "ranked from the newest (rank 0) by (timestamp, session_id); all sessions "
      "are ordered by (rank, timestamp descending, session_id descending); the "
      f"first round({test_fraction:g} * N) are test, the next "
      f"round({valid_fraction:g} * N) validation, the rest training; guests "
      "are one-session users")


def chronological_user_split(sessions: pd.DataFrame, valid_fraction: float,
                             test_fraction: float) -> pd.DataFrame:
  """Assigns `split` by the purchase-log rule of the module docstring.

  Args:
    sessions: unsplit sessions with user ids ("" counts as one user per session).
    valid_fraction: share of all sessions for validation.
    test_fraction: share of all sessions for testing.

  Returns:
    The sessions in the same order with `split` set.
  """
  frame = sessions.reset_index(drop=True).copy()
  users = frame[USER_ID].where(frame[USER_ID] != "",
                               "\x00session:" + frame[SESSION_ID])
  order = pd.DataFrame({"user": users, TIMESTAMP: frame[TIMESTAMP],
                        SESSION_ID: frame[SESSION_ID]})
  order = order.sort_values(["user", TIMESTAMP, SESSION_ID], kind="stable")
  order["rank"] = order.groupby("user", sort=False).cumcount(ascending=False)
  order = order.sort_values(["rank", TIMESTAMP, SESSION_ID],
                            ascending=[True, False, False], kind="stable")
  num_test = _round(test_fraction * len(frame))
  num_valid = _round(valid_fraction * len(frame))
  split = pd.Series("train", index=frame.index, dtype=object)
  split[order.index[:num_test]] = "test"
  split[order.index[num_test:num_test + num_valid]] = "valid"
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
