"""TF Serving export of single-tower models and of new (cold-start) items: their
text-only or imputed ID part, exclusion, and the item-embedding tool's table."""

import os

import numpy as np
import pytest
import tensorflow as tf

from alterrec_tf import export
from alterrec_tf.data import windows as alter_data
from alterrec_tf.formats import new_items, schema
from alterrec_tf.models import alterrec as alter_model
from alterrec_tf.models import cold_items
from alterrec_tf.models.names import ALTERREC_VARIANTS
from alterrec_tf.models.settings import ModelSettings
from alterrec_tf.serving import build as serving_build
from alterrec_tf.serving import check as export_check
from alterrec_tf.serving import module as serving
from alterrec_tf.serving import pipeline
from tests.export_fixture import ALPHA, MAX_LEN, TEMPERATURE, K, call


@pytest.mark.parametrize("towers", [("id",), ("text",)])
def test_single_tower_models_export(export_run, towers, tmp_path):
  model, config, manifest, data_dir = export_run["loaded"]
  single_config = config.replace(model="id_only" if towers == ("id",) else "text_only")
  single = alter_model.AlterRec(ModelSettings.of(single_config), model.num_items,
                                model.text_tower.item_encoder.text_table.numpy(),
                                variant=ALTERREC_VARIANTS[single_config.model])
  single.build_all()
  single.tower(towers[0]).set_weights(model.tower(towers[0]).get_weights())
  info = export.export(export_run["run_dir"], str(tmp_path / "m"), k=K, warmup=False,
                       loaded_run=(single, single_config, manifest, data_dir))
  assert info["verified_sessions"] > 0  # export() raises if the top-k differ
  module = tf.saved_model.load(info["path"])
  assert tuple(module.item_matrix.shape) == (model.num_items, config.embedding_dim)


def test_cold_start_items_with_a_zero_id_part_score_by_text_only_and_exclusion(export_run,
                                                                              tmp_path):
  model, config, manifest, data_dir = export_run["loaded"]
  text_table = model.text_tower.item_encoder.text_table.numpy()
  twin = 5  # the new item "NEW-TWIN" has exactly item 5's text
  rng = np.random.default_rng(1)
  folder = new_items.write(str(tmp_path / "new"), ["NEW-TWIN", "NEW-OTHER"],
                           ["twin of five", "another\tnew item"],
                           np.stack([text_table[twin], rng.normal(size=text_table.shape[1])]))
  with pytest.raises(export.ExportError, match="SKU00003"):
    clash = new_items.write(str(tmp_path / "clash"), ["SKU00003"], ["x"], text_table[3:4])
    export.export(export_run["run_dir"], str(tmp_path / "bad"), loaded_run=export_run["loaded"],
                  new_items=clash, warmup=False, verify=False)
  assert not os.path.exists(tmp_path / "bad" / "1")
  info = export.export(export_run["run_dir"], str(tmp_path / "m"), k=K, exclude_session_items=True,
                       new_items=folder, warmup=False, loaded_run=export_run["loaded"],
                       cold_id_part="zero")
  assert info["cold_id_part"] == "zero"
  V = model.num_items
  assert info["num_items"] == V + 2 and info["num_new_items"] == 2
  module = tf.saved_model.load(info["path"])
  matrix = module.item_matrix.numpy()
  d = config.embedding_dim
  assert not matrix[V:, :d].any()  # the ID part of new items is zero
  np.testing.assert_allclose(matrix[V, d:], matrix[twin, d:], atol=1e-6)

  def all_scores(session):
    out = call(module, serving.SIGNATURE_TOP_K, item_ids=np.array([session], np.int64),
               k=np.int32(V + 10))  # k is clipped to every item
    scores = np.full(V + 2, np.nan, np.float32)
    scores[out[serving.OUTPUT_INDICES][0]] = out[serving.OUTPUT_SCORES][0]
    return scores, out

  # a session of trained items: new items score (1 - alpha) * text only
  session = [11, 12, 13]
  scores, out = all_scores(session)
  window = export_check.pad_sessions([session], MAX_LEN)
  text_scores = model.text_tower(tf.constant(window))[0, len(session) - 1].numpy()
  np.testing.assert_allclose(scores[V], (1 - ALPHA) * text_scores[twin], rtol=1e-5, atol=1e-5)
  assert scores[V] in out[serving.OUTPUT_SCORES][0]
  assert b"NEW-TWIN" in out[serving.OUTPUT_ITEM_IDS][0]
  # exclusion: the session's items come last at -1e9, never in the fixed-k list
  np.testing.assert_array_equal(scores[session], serving.NEG_INF)
  top = call(module, serving.SIGNATURE_DEFAULT, item_ids=np.array([session], np.int64))
  assert not set(top[serving.OUTPUT_INDICES][0].tolist()) & set(session)
  # a session holding a new item: text reads it (as its twin), ID skips it
  scores, _ = all_scores([11, 12, V])
  id_scores = model.id_tower(tf.constant(export_check.pad_sessions([[11, 12]], MAX_LEN)))[0, 1]
  text_window = export_check.pad_sessions([[11, 12, twin]], MAX_LEN)
  text_scores = model.text_tower(tf.constant(text_window))[0, 2]
  expected = ALPHA * id_scores.numpy() + (1 - ALPHA) * text_scores.numpy()
  keep = np.ones(V, bool)
  keep[[0, 11, 12]] = False  # padding, and the excluded session items
  np.testing.assert_allclose(scores[:V][keep], expected[keep], rtol=1e-4, atol=1e-4)
  raw = call(module, serving.SIGNATURE_RAW, raw_item_ids=np.array([[b"NEW-TWIN"]]))
  assert raw[serving.OUTPUT_IGNORED].tolist() == [0]
  assert not raw[serving.OUTPUT_FALLBACK][0]
  assert b"NEW-TWIN" not in raw[serving.OUTPUT_ITEM_IDS][0]  # excluded: it is the session


def test_cold_start_items_get_an_id_part_imputed_from_their_text(export_run, tmp_path):
  model, config, manifest, data_dir = export_run["loaded"]
  text_table = model.text_tower.item_encoder.text_table.numpy()
  twin = 5
  folder = new_items.write(str(tmp_path / "new"), ["NEW-TWIN"], ["twin of five"],
                           text_table[twin:twin + 1])
  info = export.export(export_run["run_dir"], str(tmp_path / "m"), k=K, new_items=folder,
                       warmup=False, loaded_run=export_run["loaded"])  # verified by export
  assert info["cold_id_part"] == "imputed"
  assert "cold items' ID part: imputed" in pipeline.format_info(info)
  module = tf.saved_model.load(info["path"])
  matrix, V, d = module.item_matrix.numpy(), model.num_items, config.embedding_dim
  counts = alter_data.item_counts(schema.split_files(data_dir, manifest, "train"), V)
  imputed = cold_items.for_model(model, counts)(matrix[V:, d:])
  np.testing.assert_allclose(matrix[V:, :d], imputed, rtol=1e-5, atol=1e-6)
  # its text equals item 5's, so item 5 is its nearest neighbour and weighs most:
  # the imputed row is nearer to item 5's ID row than a zero row is
  assert counts[twin] > 0
  assert (np.linalg.norm(matrix[V, :d] - matrix[twin, :d])
          < np.linalg.norm(matrix[twin, :d]))
  # a session of trained items scores it alpha * ID + (1 - alpha) * text, ID on its imputed row
  session = [11, 12, 13]
  out = call(module, serving.SIGNATURE_TOP_K, item_ids=np.array([session], np.int64),
             k=np.int32(V + 10))
  scores = dict(zip(out[serving.OUTPUT_INDICES][0].tolist(), out[serving.OUTPUT_SCORES][0]))
  u_id = export_check.reference_text_vectors(model, [session], "id")[0]
  u_text = export_check.reference_text_vectors(model, [session])[0]
  expected = ALPHA * u_id @ matrix[V, :d] + (1 - ALPHA) / TEMPERATURE * u_text @ matrix[V, d:]
  np.testing.assert_allclose(scores[V], expected, rtol=1e-4, atol=1e-4)


def test_embed_items_writes_a_table_the_exporter_reads(export_run, tmp_path):
  pytest.importorskip("pandas")
  from data_tools import embed_items

  class FakeEncoder:  # a deterministic stand-in for the sentence model
    def encode(self, texts, **kwargs):
      del kwargs
      return np.stack([np.random.default_rng(sum(map(ord, t))).normal(size=16)
                       for t in texts]).astype(np.float32)

  catalog = tmp_path / "catalog.csv"
  catalog.write_text("id,title\nSKU00003,known item\nNEW1,red mug\nNEW2,blue lamp\n")
  summary = embed_items.embed_catalog(str(catalog), str(tmp_path / "out"), [],
                                      data_dir=export_run["data_dir"], encoder=FakeEncoder())
  assert summary["num_items"] == 2 and summary["skipped_known"] == 1
  table = new_items.read(str(tmp_path / "out"), text_dim=16)
  assert table.raw_ids == ["NEW1", "NEW2"] and table.titles == ["red mug", "blue lamp"]
  np.testing.assert_allclose(table.embeddings[0], FakeEncoder().encode(["red mug"])[0])
  model, _, manifest, _ = export_run["loaded"]
  read = serving_build.read_new_items(str(tmp_path / "out"), model, manifest,
                               schema.read_vocab(export_run["data_dir"]))
  assert read.raw_ids == ["NEW1", "NEW2"]
