"""Requests of the serving benchmarks (serving_latency.py, serving_profile.py).

Sessions are rows of dense item indices [count, max_len], right-padded with 0:
prefixes of a prepared dataset's test sessions (as evaluation scores every
prefix), or random items with lengths uniform in [1, max_len]. Seeded.
"""

FIRST_OUTPUT = "top_k_indices"  # an output of every top-k signature (reading it waits)


def random_sessions(rng, count, num_items, max_len):
  """int64 [count, max_len]: random items 1..num_items - 1, lengths U[1, max_len]."""
  import numpy as np
  ids = np.zeros([count, max_len], np.int64)
  lengths = rng.integers(1, max_len + 1, count)
  for row, length in enumerate(lengths):
    ids[row, :length] = rng.integers(1, num_items, length)
  return ids


def prefix_sessions(rng, count, data_dir, max_len):
  """int64 [count, max_len]: random prefixes (>= 1 item, the last max_len kept)
  of the test split's sessions (the training split's without a test split)."""
  import numpy as np
  import tensorflow as tf

  from alterrec_tf.formats import schema
  manifest = schema.load_manifest(data_dir)
  files = schema.split_files(data_dir, manifest, "test") or schema.split_files(
      data_dir, manifest, "train")
  sessions = []
  for batch in tf.data.TFRecordDataset(files).batch(1024).map(schema.parse_examples):
    sessions += batch[schema.ITEM_IDS].to_list()
  ids = np.zeros([count, max_len], np.int64)
  for row, index in enumerate(rng.integers(0, len(sessions), count)):
    session = sessions[index]
    cut = int(rng.integers(1, len(session)))  # the prefix before target `cut`
    prefix = session[:cut][-max_len:]
    ids[row, :len(prefix)] = prefix
  return ids


def sessions(rng, count, num_items, max_len, data_dir=None):
  """Test-session prefixes of `data_dir`, else random sessions."""
  if data_dir:
    return prefix_sessions(rng, count, data_dir, max_len)
  return random_sessions(rng, count, num_items, max_len)
