"""The in-graph text encoder (alterrec_tf.text) against sentence-transformers.

Real Online Retail titles, the packaged all-MiniLM-L6-v2 converted once per
module. The full 1,000-title parity and timings: benchmarks/text_encoder_parity.py.
"""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from alterrec_tf.models import layers as model_layers
from alterrec_tf.text import convert, item_space
from alterrec_tf.text import encoder as keras_text
from data_tools import embed

MIN_COSINE = 0.999


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def titles(online_retail_path):
  """64 real product names: every 16th of the first 1,024 sorted distinct ones."""
  names = sorted(pd.read_parquet(online_retail_path, columns=["Description"])
                 ["Description"].dropna().unique())
  return [str(name) for name in names[:1024:16]]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(encoder folder, its SentenceEncoder) converted from the packaged model."""
  folder = str(tmp_path_factory.mktemp("text_encoder"))
  return folder, convert.convert("all-MiniLM-L6-v2", folder)


@pytest.fixture(scope="module")
def encoder_dir(converted):
  return converted[0]


@pytest.fixture(scope="module")
def keras_encoder(converted):
  """The converted encoder (the fresh-process test loads it back from the folder)."""
  return converted[1]


def test_config_is_read_from_the_model_folder():
  config = convert.read_config(convert.resolve_model("all-MiniLM-L6-v2"))
  assert config.bert == keras_text.text_bert.BertConfig(
      vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536,
      max_positions=512, type_vocab_size=2, layer_norm_eps=1e-12)
  assert (config.max_seq_length, config.lower_case, config.normalize) == (256, True, True)


def test_a_torch_state_dict_converts_to_the_same_weights(text_encoder):
  """The safetensors file read with numpy == the loaded model's torch state_dict."""
  config = convert.read_config(convert.resolve_model("all-MiniLM-L6-v2"))
  from_torch = convert.keras_weights(text_encoder.state_dict(), config.bert)
  from_file = convert.keras_weights(
      convert.read_state_dict(convert.resolve_model("all-MiniLM-L6-v2")), config.bert)
  assert sorted(from_torch) == sorted(from_file) and len(from_file) == 5 + 6 * 16
  for name, value in from_file.items():
    np.testing.assert_array_equal(from_torch[name], value, err_msg=name)
  assert from_file["block_0/intermediate/kernel"].shape == (384, 1536)  # [in, out]


def test_tokenizer_matches_hugging_face(titles, keras_encoder, text_encoder):
  """`text_encoder` (conftest) is the sentence-transformers model."""
  texts = titles + ["Café Crème, naïve résumé", "Straße", "日本語 text", "",
                    " ".join(titles * 3)]  # the last one is cut to 256 tokens
  ids, mask = keras_encoder.tokenizer(tf.constant(texts))
  reference = text_encoder.tokenizer(texts, truncation=True, max_length=256)["input_ids"]
  ours = [row[keep].tolist() for row, keep in zip(ids.numpy(), mask.numpy())]
  assert ours == reference
  assert len(ours[-1]) == 256


def test_titles_match_sentence_transformers(titles, keras_encoder, text_encoder):
  long_text = " ".join(titles * 3)  # past max_seq_length: both truncate
  reference = np.concatenate([
      text_encoder.encode(titles, batch_size=32, convert_to_numpy=True),
      text_encoder.encode([long_text], convert_to_numpy=True)])
  adapter = keras_text.NumpyTextEncoder(keras_encoder)
  ours = np.concatenate([adapter.encode(titles, batch_size=32), adapter.encode([long_text])])
  texts = titles + [long_text]
  assert ours.shape == (65, 384) and ours.dtype == np.float32
  cosines = _cosines(ours, reference)
  assert cosines.min() >= MIN_COSINE, (cosines.min(), texts[int(cosines.argmin())])
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_field_mean_matches_item_text_table(titles, keras_encoder, text_encoder):
  """Two fields, some empty: data_tools' table with either encoder, and in-graph."""
  n = 24
  title = [t if i % 7 != 3 else "" for i, t in enumerate(titles[:n])]
  description = [titles[-1 - i] if i % 4 else "" for i in range(n)]
  description[3] = ""  # item 3 has no text at all: a zero row
  texts = pd.DataFrame({"title": title, "description": description},
                       index=[f"item{i}" for i in range(n)])
  fields = ["title", "description"]
  reference = embed.item_text_table(text_encoder, texts, fields, 8, require_text=False)
  table = embed.item_text_table(keras_text.NumpyTextEncoder(keras_encoder), texts, fields, 8,
                                require_text=False)
  raw = texts[fields].to_numpy().astype(object)
  raw[8, 1] = " \t\u00a0 "  # whitespace only: no text, as data_tools' clean_text makes it
  in_graph = keras_text.FieldMeanEncoder(keras_encoder)(tf.constant(raw.tolist())).numpy()
  assert not reference[4].any() and not table[4].any() and not in_graph[3].any()
  present = [i for i in range(n) if i != 3]
  for ours in (table[1:], in_graph):
    cosines = _cosines(ours[present], reference[1:][present])
    assert cosines.min() >= MIN_COSINE
    np.testing.assert_allclose(ours, reference[1:], atol=2e-5)


def test_item_text_vectors_are_the_text_item_encoder_of_the_field_mean(titles, keras_encoder):
  """Raw fields -> the trained text tower's item space, as export projects new items."""
  item_encoder = model_layers.TextItemEncoder(np.zeros((3, 384), np.float32), dim=16,
                                              dropout=0.5)
  field_mean = keras_text.FieldMeanEncoder(keras_encoder)
  layer = item_space.ItemTextVectors(field_mean, [item_encoder.projection, item_encoder.norm])
  fields = tf.constant([[titles[0], titles[1]], ["", titles[2]], ["", ""]])
  vectors = layer(fields).numpy()
  expected = item_encoder.norm(item_encoder.projection(field_mean(fields))).numpy()
  assert vectors.shape == (3, 16)
  np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_saved_model_round_trip_in_a_fresh_process_without_torch(
    titles, keras_encoder, encoder_dir, tmp_path):
  module = keras_text.TextEncoderModule(keras_encoder)
  path = str(tmp_path / "saved_model")
  tf.saved_model.save(module, path, signatures=module.signatures())
  texts = titles[:8] + [""]
  fields = [[titles[8], titles[9]], [titles[10], ""], ["", ""]]
  np.save(tmp_path / "texts.npy", np.asarray(texts, dtype=object), allow_pickle=True)
  np.save(tmp_path / "fields.npy", np.asarray(fields, dtype=object), allow_pickle=True)
  np.save(tmp_path / "expected.npy", keras_encoder(tf.constant(texts)).numpy())
  np.save(tmp_path / "expected_fields.npy",
          keras_text.FieldMeanEncoder(keras_encoder)(tf.constant(fields)).numpy())
  code = f"""
import sys
import numpy as np, tensorflow as tf, tensorflow_text  # tensorflow_text: the tokenizer's ops
folder = {str(tmp_path)!r}
texts = np.load(folder + "/texts.npy", allow_pickle=True).tolist()
fields = np.load(folder + "/fields.npy", allow_pickle=True).tolist()
loaded = tf.saved_model.load({path!r})
vectors = loaded.signatures["encode"](texts=tf.constant(texts))["embeddings"].numpy()
mean = loaded.signatures["encode_fields"](fields=tf.constant(fields))["embeddings"].numpy()
np.testing.assert_allclose(vectors, np.load(folder + "/expected.npy"), atol=1e-5)
np.testing.assert_allclose(mean, np.load(folder + "/expected_fields.npy"), atol=1e-5)
from alterrec_tf.text import encoder  # the encoder folder loads without torch too
again = encoder.NumpyTextEncoder(encoder.load_encoder({encoder_dir!r})).encode(texts)
np.testing.assert_allclose(again, vectors, atol=1e-5)
assert "torch" not in sys.modules and "data_tools" not in sys.modules, "torch imported"
print("ok", vectors.shape, mean.shape)
"""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "ok (9, 384) (3, 384)" in result.stdout
