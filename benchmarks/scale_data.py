"""Synthetic prepared datasets of a chosen size with realistic skew (scale.py).

Items: popularity follows Zipf's law, P(item of rank r) proportional to
r^-exponent (default 1.0), the ranks shuffled over the item indices so that
popularity does not follow the index order.

Session lengths: log-normal, fitted to the prepared Online Retail sessions of
all three splits (18,260 sessions: median 17, mean 28, 90th percentile 54,
99th 225, longest 1,085; log-length mean 2.77, standard deviation 1.02),
rounded and clipped to [2, max_session_length] (default 200, so the mean is
~26 items). Items within a session are distinct, as in Online Retail (its
sessions are de-duplicated): each session draws from the Zipf law until it
holds that many different items. The manifest says `sessions_deduplicated`, so
the trainer scores seen items out as it does on Online Retail.

Text: a random normal [items + 1, text_dim] table (row 0, padding, zeros), so
the text tower exists and costs what a real one of that width costs; its
values carry no signal.

Splits: `num_sessions` training sessions and `test_sessions` test sessions
(drawn alike), no validation split. Written with `tests.synthetic.write_sessions`
(the real schema, one shard per split).
"""

import os
import tempfile
import time
from typing import Any, Dict, List

import numpy as np

LOG_LENGTH_MEAN = 2.77  # Online Retail, prepared: mean of log(session length)
LOG_LENGTH_STD = 1.02   # and its standard deviation
CACHE_VERSION = 1       # bump when the generator changes (cached folders are keyed by it)


def default_cache_root() -> str:
  """Where generated datasets are kept between runs: <tmp>/alterrec_benchmarks/scale."""
  return os.path.join(tempfile.gettempdir(), "alterrec_benchmarks", "scale")


def zipf_cdf(num_items: int, exponent: float) -> np.ndarray:
  """Cumulative probabilities [num_items] of ranks 1..num_items under Zipf's law."""
  weights = np.arange(1, num_items + 1, dtype=np.float64) ** -exponent
  cdf = np.cumsum(weights)
  return cdf / cdf[-1]


def session_lengths(rng: np.random.Generator, count: int, max_length: int) -> np.ndarray:
  """`count` session lengths, log-normal like Online Retail's, in [2, max_length]."""
  lengths = np.rint(rng.lognormal(LOG_LENGTH_MEAN, LOG_LENGTH_STD, count))
  return np.clip(lengths, 2, max_length).astype(np.int64)


def distinct_draws(rng: np.random.Generator, cdf: np.ndarray, item_of_rank: np.ndarray,
                   length: int) -> np.ndarray:
  """`length` distinct item indices drawn from the popularity law, in draw order."""
  length = min(length, len(cdf))
  items = np.zeros([0], np.int64)
  while len(items) < length:
    ranks = np.searchsorted(cdf, rng.random(2 * (length - len(items)) + 4), side="right")
    draws = np.concatenate([items, item_of_rank[np.minimum(ranks, len(cdf) - 1)]])
    _, first = np.unique(draws, return_index=True)
    items = draws[np.sort(first)]
  return items[:length]


def draw_sessions(rng: np.random.Generator, cdf: np.ndarray, item_of_rank: np.ndarray,
                  count: int, max_length: int) -> List[np.ndarray]:
  """`count` sessions of distinct items (indices 1..items)."""
  return [distinct_draws(rng, cdf, item_of_rank, int(n))
          for n in session_lengths(rng, count, max_length)]


def dataset_key(num_items: int, num_sessions: int, exponent: float, text_dim: int,
                max_length: int, test_sessions: int, seed: int) -> str:
  """Folder name of a dataset in the cache: every parameter that shapes it."""
  return (f"v{CACHE_VERSION}_items{num_items}_sessions{num_sessions}_zipf{exponent:g}"
          f"_text{text_dim}_len{max_length}_test{test_sessions}_seed{seed}")


def write_dataset(folder: str, num_items: int, num_sessions: int, exponent: float = 1.0,
                  text_dim: int = 32, max_length: int = 200, test_sessions: int = 2000,
                  seed: int = 0) -> dict:
  """Writes a prepared dataset of `num_items` items (+ padding) and returns its manifest."""
  from tests import synthetic
  rng = np.random.default_rng(seed)
  item_of_rank = rng.permutation(num_items) + 1
  cdf = zipf_cdf(num_items, exponent)
  sessions = {"train": draw_sessions(rng, cdf, item_of_rank, num_sessions, max_length),
              "test": draw_sessions(rng, cdf, item_of_rank, test_sessions, max_length)}
  text = rng.standard_normal((num_items + 1, text_dim), dtype=np.float32)
  text[0] = 0.0
  return synthetic.write_sessions(
      folder, sessions, num_items + 1, text, dataset_name="synthetic_zipf",
      sessions_deduplicated=True,
      generator={"zipf_exponent": exponent, "log_length_mean": LOG_LENGTH_MEAN,
                 "log_length_std": LOG_LENGTH_STD, "max_session_length": max_length,
                 "text_dim": text_dim, "seed": seed,
                 "interactions": {k: int(sum(len(s) for s in v)) for k, v in sessions.items()}})


def cached_dataset(cache_root: str, num_items: int, num_sessions: int, **params) -> tuple:
  """(folder, manifest, seconds spent writing: 0 when cached) of a dataset,
  generated on first use under `cache_root`/`dataset_key(...)`."""
  from alterrec_tf.formats import schema
  defaults: Dict[str, Any] = dict(exponent=1.0, text_dim=32, max_length=200,
                                  test_sessions=2000, seed=0)
  defaults.update(params)
  folder = os.path.join(cache_root, dataset_key(num_items, num_sessions, **defaults))
  if os.path.exists(os.path.join(folder, schema.MANIFEST_FILE)):
    return folder, schema.load_manifest(folder), 0.0
  start = time.perf_counter()
  staging = f"{folder}.partial-{os.getpid()}"
  write_dataset(staging, num_items, num_sessions, **defaults)
  os.replace(staging, folder)  # the manifest is written last: a folder is whole or absent
  return folder, schema.load_manifest(folder), time.perf_counter() - start
