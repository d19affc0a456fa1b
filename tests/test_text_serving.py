"""Text inside the graph (issue 14): export's text signatures and data_tools' keras backend.

A tiny two-tower model (untrained: the properties are equalities) on a synthetic
dataset whose 384-d text table is all-MiniLM-L6-v2's own embedding of the item
titles, so the exporter's check of the sentence encoder against the table passes.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from alterrec_tf import config as alter_config
from alterrec_tf import export
from alterrec_tf.config import TrainConfig
from alterrec_tf.data import windows as alter_data
from alterrec_tf.formats import schema
from alterrec_tf.models import cold_items, registry
from alterrec_tf.serving import build as serving_build
from alterrec_tf.serving import check as export_check
from alterrec_tf.serving import module as serving
from alterrec_tf.serving import pipeline, warmup
from alterrec_tf.text import convert, item_space
from alterrec_tf.text import encoder as keras_text
from data_tools import embed, embed_items, prepare
from data_tools.options import PrepareOptions
from data_tools.sessions import DataToolsError
from tests import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
NUM_ITEMS = 60
MAX_LEN = 6
ALPHA = 0.3
TEMPERATURE = 0.5
CANDIDATES = [["red retrospot cake stand"], ["ALARM CLOCK BAKELIKE GREEN"],
              ["Café crème mug, naïve"], ["wooden picture frame white finish"]]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
  """all-MiniLM-L6-v2 converted once (alterrec_tf.text.convert, no torch)."""
  folder = str(tmp_path_factory.mktemp("text_encoder"))
  convert.convert("all-MiniLM-L6-v2", folder)
  return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory, encoder_dir):
  """(model, config, manifest, data_dir): text table = the encoder's title vectors."""
  data_dir = str(tmp_path_factory.mktemp("text_data"))
  synthetic.write_dataset(data_dir, num_items=NUM_ITEMS, num_sessions=40, text_dim=384,
                          max_session_length=9)
  titles = [title for _, title in schema.read_vocab(data_dir)]
  field_mean = keras_text.FieldMeanEncoder(keras_text.load_encoder(encoder_dir))
  table = np.zeros([NUM_ITEMS, 384], np.float32)
  table[1:] = field_mean(tf.constant([[t] for t in titles[1:]])).numpy()
  np.save(os.path.join(data_dir, schema.TEXT_EMBEDDINGS_FILE), table)
  manifest_path = os.path.join(data_dir, schema.MANIFEST_FILE)
  with open(manifest_path, encoding="utf-8") as f:
    manifest = json.load(f)
  manifest["file_hashes"][schema.TEXT_EMBEDDINGS_FILE] = schema.file_sha256(
      os.path.join(data_dir, schema.TEXT_EMBEDDINGS_FILE))
  manifest.update(content_hash=schema.content_hash(manifest["file_hashes"]),
                  text_fields=["title"], text_model="all-MiniLM-L6-v2",
                  text_backend="keras")
  with open(manifest_path, "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
  manifest = schema.load_manifest(data_dir, verify_hashes=True)
  config = TrainConfig(data_dir=data_dir, run_dir=str(tmp_path_factory.mktemp("text_run")),
                       embedding_dim=16, max_len=MAX_LEN, num_heads=2, num_layers=1,
                       k1=2, k2=20, alpha=ALPHA, text_temperature=TEMPERATURE)
  config = alter_config.resolve_seen_items(config, manifest)  # (as training.loading does)
  model = registry.build_model(config, manifest, schema.load_text_embeddings(data_dir, manifest))
  return model, config, manifest, data_dir


@pytest.fixture(scope="module")
def text_export(run, encoder_dir, tmp_path_factory):
  """Export info of the run with --text_signatures (checked by export itself)."""
  model, config, _, _ = run
  info = export.export(config.run_dir, str(tmp_path_factory.mktemp("models") / "alterrec"),
                       k=5, warmup=False, loaded_run=run, text_signatures=True,
                       text_encoder_dir=encoder_dir)
  info["module"] = tf.saved_model.load(info["path"])
  return info


def text_layer(model, encoder_dir):
  """ItemTextVectors built here, from a fresh load of the encoder folder."""
  item_encoder = model.text_tower.item_encoder
  return item_space.ItemTextVectors(
      keras_text.FieldMeanEncoder(keras_text.load_encoder(encoder_dir)),
      [item_encoder.projection, item_encoder.norm])


def cold_id_imputer(run):
  """The ID part the export imputes for items known by text only."""
  model, _, manifest, data_dir = run
  counts = alter_data.item_counts(schema.split_files(data_dir, manifest, "train"),
                                  manifest["num_items"])
  return cold_items.for_model(model, counts)


def by_hand_scores(run, sessions, text_vectors):
  """(1 - alpha) / temperature * u_text . v + alpha * u_id . (imputed ID row of v)."""
  model = run[0]
  u_text = export_check.reference_text_vectors(model, sessions)
  u_id = export_check.reference_text_vectors(model, sessions, "id")
  return ((1 - ALPHA) / TEMPERATURE * u_text @ text_vectors.T
          + ALPHA * u_id @ cold_id_imputer(run)(text_vectors).T)


def raw_sessions(run, count=6):
  """(dense sessions, raw id rows padded with "") from the test split."""
  _, _, manifest, data_dir = run
  sessions = export_check.sample_sessions(data_dir, manifest, count)
  assert count == 1 or any(len(s) > MAX_LEN for s in sessions)
  vocab = [raw_id for raw_id, _ in schema.read_vocab(data_dir)]
  width = max(len(s) for s in sessions)
  raw = np.full([len(sessions), width], b"", dtype=object)
  for row, items in enumerate(sessions):
    raw[row, :len(items)] = [vocab[i].encode() for i in items]
  return sessions, raw


def test_export_info_states_the_text_signatures_and_their_size(text_export):
  assert text_export["text_signatures"] is True
  assert set(serving.TEXT_SIGNATURES) <= set(text_export["signatures"])
  text = text_export["text"]
  assert text["fields"] == ["title"] and text["dim"] == 384 and text["layers"] == 6
  assert 89e6 < text["encoder_weights_bytes"] < 92e6  # 22.6M float32 weights
  assert text["table_check"]["median_abs_diff"] < 1e-5
  assert text["verified"]["candidates"] > 0
  assert text_export["variables_bytes"] > text["encoder_weights_bytes"]
  lines = pipeline.format_info(text_export)
  assert "text signatures new_item_vectors, score_text_candidates" in lines
  assert "import tensorflow_text" in lines


def test_warmup_requests_cover_the_text_signatures(run, text_export):
  _, config, manifest, data_dir = run
  rows = schema.read_vocab(data_dir)
  popularity = np.arange(len(rows), dtype=np.float32)[::-1]
  requests = warmup.warmup_requests(rows, popularity, config.max_len, 5, num_text_fields=1)
  signatures = [signature for signature, _ in requests]
  assert set(signatures) == set(serving.SIGNATURES) | set(serving.TEXT_SIGNATURES)
  for signature, inputs in requests:  # each one a valid request of the export
    out = text_export["module"].signatures[signature](
        **{name: tf.constant(value) for name, value in inputs.items()})
    assert out, signature
  plain = warmup.warmup_requests(rows, popularity, config.max_len, 5)
  assert [signature for signature, _ in plain] == signatures[:len(plain)]
  # the candidates: the two most popular titles, and a row without text
  fields = dict(requests)[serving.SIGNATURE_NEW_ITEM_VECTORS][serving.INPUT_FIELDS]
  titled = [title for _, title in rows[1:] if title.strip()]
  assert fields[:, 0].tolist() == [titled[0].encode(), titled[1].encode(), b""]


def test_new_item_vectors_equal_item_text_vectors_in_python(run, text_export, encoder_dir):
  model, config, _, _ = run
  fields = CANDIDATES + [[""], [" \t "], ["Straße " * 200]]  # no text twice; truncated
  out = text_export["module"].signatures[serving.SIGNATURE_NEW_ITEM_VECTORS](
      fields=tf.constant(fields))
  expected = text_layer(model, encoder_dir)(tf.constant(fields)).numpy()
  text = out[serving.OUTPUT_TEXT_ITEM_VECTORS].numpy()
  rows = out[serving.OUTPUT_ITEM_VECTORS].numpy()
  d = config.embedding_dim
  assert text.shape == (len(fields), d) and rows.shape == (len(fields), 2 * d)
  np.testing.assert_allclose(text, expected, atol=1e-5)
  # ID columns: imputed from the text vector, as the cold-start rows of item_matrix
  np.testing.assert_allclose(rows[:, :d], cold_id_imputer(run)(text), rtol=1e-4, atol=1e-5)
  assert np.abs(rows[:, :d]).sum() > 0
  np.testing.assert_array_equal(rows[:, d:], text)
  np.testing.assert_allclose(text[len(CANDIDATES)], text[len(CANDIDATES) + 1], atol=1e-6)


def test_score_text_candidates_equal_a_new_items_export(run, text_export, encoder_dir,
                                                        tmp_path):
  model, config, _, data_dir = run
  # the same items as a --new_items table, embedded by data_tools (keras backend)
  catalog = tmp_path / "new.csv"
  pd.DataFrame({"id": [f"NEW{i}" for i in range(len(CANDIDATES))],
                "title": [row[0] for row in CANDIDATES]}).to_csv(catalog, index=False)
  embed_items.embed_catalog(str(catalog), str(tmp_path / "new"), [], data_dir=data_dir,
                            text_backend="keras", text_encoder_dir=encoder_dir)
  cold = export.export(config.run_dir, str(tmp_path / "cold"), k=5, warmup=False,
                       verify=False, loaded_run=run, new_items=str(tmp_path / "new"),
                       text_signatures=False)
  assert cold["text_signatures"] is False and serving.SIGNATURE_SCORE_TEXT not in (
      cold["signatures"])
  cold_module = tf.saved_model.load(cold["path"])
  sessions, raw = raw_sessions(run)
  raw = np.concatenate([raw, [[b"SKU00003", b"no-such-id"] + [b""] * (raw.shape[1] - 2),
                              [b"no-such-id"] + [b""] * (raw.shape[1] - 1)]])
  out = text_export["module"].signatures[serving.SIGNATURE_SCORE_TEXT](
      raw_item_ids=tf.constant(raw), candidate_fields=tf.constant(CANDIDATES))
  scores = out[serving.OUTPUT_CANDIDATE_SCORES].numpy()
  assert scores.shape == (len(raw), len(CANDIDATES))
  assert out[serving.OUTPUT_IGNORED].numpy().tolist() == [0] * len(sessions) + [1, 1]
  assert out[serving.OUTPUT_FALLBACK].numpy().tolist() == [False] * (len(sessions) + 1) + [True]
  assert not scores[-1].any()  # no known item: no session signal
  # == the scores the cold-start rows get in the --new_items export
  everything = cold_module.signatures[serving.SIGNATURE_RAW_TOP_K](
      raw_item_ids=tf.constant(raw[:-1]), k=tf.constant(NUM_ITEMS + 10))
  cold_scores = np.full([len(raw) - 1, NUM_ITEMS + len(CANDIDATES)], np.nan, np.float32)
  np.put_along_axis(cold_scores, everything[serving.OUTPUT_INDICES].numpy(),
                    everything[serving.OUTPUT_SCORES].numpy(), axis=1)
  np.testing.assert_allclose(scores[:-1], cold_scores[:, NUM_ITEMS:], rtol=1e-4, atol=1e-4)
  # == the Keras towers by hand: the text term plus the imputed ID term
  vectors = text_layer(model, encoder_dir)(tf.constant(CANDIDATES)).numpy()
  by_hand = by_hand_scores(run, sessions, vectors)
  np.testing.assert_allclose(scores[:len(sessions)], by_hand, rtol=1e-4, atol=1e-4)


FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
path, request_file, out_file = sys.argv[1:]
request = json.load(open(request_file))
try:
  tf.saved_model.load(path)
  print("loaded without tensorflow_text")
except Exception as error:  # the tokenizer's ops are not registered yet
  print("without tensorflow_text:", "not registered" in str(error))
from alterrec_tf import recommend  # imports tensorflow_text before loading
rows, ignored, fallback = recommend.recommend(path, request["session"], k=3)
print("recommend:", [raw_id for _, raw_id, _ in rows], ignored, fallback)
module = tf.saved_model.load(path)
out = module.signatures["score_text_candidates"](
    raw_item_ids=tf.constant([request["session"]]),
    candidate_fields=tf.constant(request["candidates"]))
scores = out["scores"].numpy()[0]
for rank, c in enumerate(np.argsort(-scores)):
  print("rank", rank + 1, request["candidates"][c][0], f"{scores[c]:.4f}")
np.save(out_file, scores)
assert "torch" not in sys.modules and "data_tools" not in sys.modules, "torch imported"
print("ok")
"""


def test_fresh_process_without_torch_ranks_raw_text_candidates(run, text_export, encoder_dir,
                                                               tmp_path):
  model, _, _, _ = run
  sessions, raw = raw_sessions(run, 1)
  session = [i.decode() for i in raw[0] if i]
  request = tmp_path / "request.json"
  request.write_text(json.dumps({"session": session, "candidates": CANDIDATES}))
  script = tmp_path / "load.py"
  script.write_text(FRESH_PROCESS)
  out = subprocess.run([sys.executable, str(script), text_export["path"], str(request),
                        str(tmp_path / "scores.npy")], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "without tensorflow_text: True" in out.stdout and "ok" in out.stdout, out.stdout
  assert "rank 4" in out.stdout
  vectors = text_layer(model, encoder_dir)(tf.constant(CANDIDATES)).numpy()
  expected = by_hand_scores(run, sessions, vectors)[0]
  np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), expected, rtol=1e-4,
                             atol=1e-4)


def test_auto_text_signatures_skip_with_the_reason(run, tmp_path):
  """Unset --text_signatures: a dataset without a usable text record exports as before."""
  model, config, manifest, data_dir = run
  bare = {k: v for k, v in manifest.items() if k not in ("text_fields", "text_model")}
  layer, info = serving_build.build_text_layer(model, bare, schema.read_vocab(data_dir), None, None)
  assert layer is None and "no text_fields" in info["skipped"]
  with pytest.raises(export.ExportError, match="--text_signatures: the dataset records no "
                     "text_fields"):
    serving_build.build_text_layer(model, bare, schema.read_vocab(data_dir), True, None)
  other = tmp_path / "not_an_encoder"
  other.mkdir()
  (other / "notes.txt").write_text("x")
  reason = serving_build.text_signature_obstacle(("id", "text"), manifest, str(other))
  assert "holds other files" in reason
  assert "no text tower" in serving_build.text_signature_obstacle(("id",), manifest, None)


# --- data_tools --text_backend=keras -----------------------------------------------------
INTERACTIONS = [
    ("u1", "s1", "i1", 100), ("u1", "s1", "i2", 101), ("u1", "s2", "i2", 200),
    ("u1", "s2", "i3", 201), ("u1", "s2", "i4", 202), ("u1", "s3", "i3", 300),
    ("u1", "s3", "i1", 301), ("u2", "s4", "i4", 110), ("u2", "s4", "i1", 111),
    ("u2", "s5", "i2", 400), ("u2", "s5", "i4", 401),
]
CATALOG = pd.DataFrame({
    "item_id": ["i1", "i2", "i3", "i4"],
    "title": ["RED RETROSPOT CAKE STAND", "Café crème mug, naïve", "", "日本語 lamp"],
    "description": ["three tiers", "", "alarm clock bakelike green", "desk lamp, warm"],
})


def test_prepare_with_the_keras_backend_matches_sentence_transformers(
    tmp_path, text_encoder, encoder_dir):
  """`text_encoder` (conftest): the sentence-transformers model."""
  pd.DataFrame(INTERACTIONS, columns=["user_id", "session_id", "item_id", "timestamp"]
               ).to_csv(tmp_path / "interactions.csv", index=False)
  CATALOG.to_csv(tmp_path / "items.csv", index=False)
  fields = ("title", "description")
  result = prepare.prepare(PrepareOptions(
      raw_format="purchase_log", raw_path=str(tmp_path / "interactions.csv"),
      catalog_path=str(tmp_path / "items.csv"), output_dir=str(tmp_path / "out"),
      text_fields=fields, min_item_count=1, text_backend="keras",
      text_encoder_dir=encoder_dir))
  manifest = result.manifest
  assert manifest["text_backend"] == "keras" and manifest["flags"]["text_backend"] == "keras"
  table = schema.load_text_embeddings(result.output_dir, manifest)
  texts = CATALOG.set_index("item_id").reindex(result.vocab[1:]).fillna("")
  reference = embed.item_text_table(text_encoder, texts, fields, 8, require_text=True)
  assert table.shape == reference.shape == (len(result.vocab), 384)
  np.testing.assert_allclose(table, reference, atol=1e-5)


def test_keras_backend_encoder_folder(tmp_path):
  new = tmp_path / "encoder"  # converted into a new folder, then reused
  first = embed.load_encoder("all-MiniLM-L6-v2", "keras", str(new))
  assert keras_text.is_encoder_folder(str(new))
  assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
  again = embed.load_encoder("all-MiniLM-L6-v2", "keras", str(new))
  texts = ["lunch bag cars blue", "frame"]
  np.testing.assert_allclose(again.encode(texts), first.encode(texts), atol=1e-6)
  with pytest.raises(DataToolsError, match="holds other files"):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    embed.load_encoder("all-MiniLM-L6-v2", "keras", str(tmp_path / "other"))
  with pytest.raises(DataToolsError, match="--text_backend=keras --text_model=no-such-model"):
    embed.load_encoder("no-such-model", "keras")
  with pytest.raises(DataToolsError, match="inside --output_dir"):
    PrepareOptions(raw_path="x", output_dir=str(tmp_path / "out"), text_backend="keras",
                   text_encoder_dir=str(tmp_path / "out" / "enc")).validate()
