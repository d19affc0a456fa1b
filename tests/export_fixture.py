"""The tiny trained run the export tests share, and how they call a signature."""

import tensorflow as tf

from alterrec_tf.config import TrainConfig
from alterrec_tf.training import loading
from alterrec_tf.training.trainer import train
from tests import synthetic

MAX_LEN = 12  # > 8: the serving graph encodes lengths <= 8 and 9..12 as two buckets
K = 10
ALPHA = 0.3
TEMPERATURE = 0.5


def train_tiny_run(data_dir: str, run_dir: str) -> dict:
  """A tiny trained two-tower run, loaded back from disk as the exporter does.

  Returns:
    {"data_dir", "run_dir", "loaded": `loading.load_run(run_dir)`}.
  """
  synthetic.write_dataset(data_dir, num_items=300, num_sessions=240, text_dim=16,
                          max_session_length=20)
  train(TrainConfig(data_dir=data_dir, run_dir=run_dir, embedding_dim=32, max_len=MAX_LEN,
                    train_window_stride=4, k1=2, k2=40, m_random=1, m_gap=1, m_max=2,
                    batch_size=128, eval_batch_size=256, verbose=0, alpha=ALPHA,
                    text_temperature=TEMPERATURE, num_heads=2, num_layers=1))
  return {"data_dir": data_dir, "run_dir": run_dir, "loaded": loading.load_run(run_dir)}


def call(module, signature, **inputs):
  out = module.signatures[signature](**{n: tf.constant(v) for n, v in inputs.items()})
  return {name: value.numpy() for name, value in out.items()}
