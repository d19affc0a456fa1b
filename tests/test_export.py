"""TF Serving export: parity with the Keras model in a fresh process, signatures,
OOV and empty requests, exclusion, cold-start items, atomicity, warmup, REST."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from alterrec_tf import export, recommend
from alterrec_tf.config import TrainConfig
from alterrec_tf.data import windows as alter_data
from alterrec_tf.formats import new_items, schema
from alterrec_tf.models import alterrec as alter_model
from alterrec_tf.models import cold_items
from alterrec_tf.models.settings import ModelSettings
from alterrec_tf.serving import build as serving_build
from alterrec_tf.serving import check as export_check
from alterrec_tf.serving import module as serving
from alterrec_tf.serving import warmup
from alterrec_tf.train import train
from tests import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
MAX_LEN = 12  # > 8: the serving graph encodes lengths <= 8 and 9..12 as two buckets
K = 10
ALPHA = 0.3
TEMPERATURE = 0.5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny trained two-tower run, loaded back from disk as the exporter does."""
  data_dir = str(tmp_path_factory.mktemp("export_data"))
  synthetic.write_dataset(data_dir, num_items=300, num_sessions=240, text_dim=16,
                          max_session_length=20)
  run_dir = str(tmp_path_factory.mktemp("export_run"))
  train(TrainConfig(data_dir=data_dir, run_dir=run_dir, embedding_dim=32, max_len=MAX_LEN,
                    train_window_stride=4, k1=2, k2=40, m_random=1, m_gap=1, m_max=2,
                    batch_size=128, eval_batch_size=256, verbose=0, alpha=ALPHA,
                    text_temperature=TEMPERATURE, num_heads=2, num_layers=1))
  loaded = export.load_run(run_dir)
  return {"data_dir": data_dir, "run_dir": run_dir, "loaded": loaded}


@pytest.fixture(scope="module")
def plain_export(run, tmp_path_factory):
  """Version 1, written by the command line in its own process."""
  export_dir = str(tmp_path_factory.mktemp("models") / "alterrec")
  command = [sys.executable, "-m", "alterrec_tf.export", f"--run_dir={run['run_dir']}",
             f"--export_dir={export_dir}", f"--k={K}"]
  out = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "equal the Keras model's" in out.stdout, out.stdout
  path = os.path.join(export_dir, "1")
  with open(os.path.join(path, export.ASSETS_EXTRA, export.EXPORT_INFO_FILE)) as f:
    info = json.load(f)
  return {"export_dir": export_dir, "path": path, "info": info, "stdout": out.stdout,
          "module": tf.saved_model.load(path)}


def sessions_of(run, count=24):
  model, _, manifest, data_dir = run["loaded"]
  sessions = export_check.sample_sessions(data_dir, manifest, count)
  assert any(len(s) > MAX_LEN for s in sessions) and any(len(s) <= 3 for s in sessions)
  return sessions


def right_padded(sessions, width):
  out = np.zeros([len(sessions), width], np.int64)
  for row, items in enumerate(sessions):
    out[row, :len(items)] = items
  return out


def call(module, signature, **inputs):
  out = module.signatures[signature](**{n: tf.constant(v) for n, v in inputs.items()})
  return {name: value.numpy() for name, value in out.items()}


FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
path, sessions_file, out_file = sys.argv[1:]
module = tf.saved_model.load(path)  # nothing of alterrec_tf is imported here
sessions = json.load(open(sessions_file))
width = max(len(s) for s in sessions)
ids = np.zeros([len(sessions), width], np.int64)
raw = np.full([len(sessions), width], b"", dtype=object)
left = np.zeros([len(sessions), width + 3], np.int64)
gappy = np.zeros([len(sessions), 2 * width], np.int64)
vocab = [line.split("\t")[1] for line in open(path + "/assets/serving_vocab.tsv")]
for row, items in enumerate(sessions):
  ids[row, :len(items)] = items
  raw[row, :len(items)] = [vocab[i].encode() for i in items]
  left[row, width + 3 - len(items):] = items
  gappy[row, 1:2 * len(items):2] = items
results = {}
for name, sig, inputs in (("int", "serving_default", {"item_ids": ids}),
                          ("raw", "raw_ids", {"raw_item_ids": raw}),
                          ("left", "serving_default", {"item_ids": left}),
                          ("gappy", "serving_default", {"item_ids": gappy}),
                          ("k", "top_k", {"item_ids": ids, "k": np.int32(5)})):
  out = module.signatures[sig](**{n: tf.constant(v) for n, v in inputs.items()})
  for key, value in out.items():
    results[f"{name}/{key}"] = value.numpy()
np.savez(out_file, **results)
"""


def test_fresh_process_top_k_equals_the_keras_model(run, plain_export, tmp_path):
  model = run["loaded"][0]
  sessions = sessions_of(run)
  sessions_file = tmp_path / "sessions.json"
  sessions_file.write_text(json.dumps(sessions))
  script = tmp_path / "load.py"
  script.write_text(FRESH_PROCESS)
  out_file = tmp_path / "out.npz"
  out = subprocess.run([sys.executable, str(script), plain_export["path"], str(sessions_file),
                        str(out_file)], cwd=str(tmp_path), env=ENV, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  got = dict(np.load(out_file, allow_pickle=True))
  reference = export_check.reference_scores(model, sessions)
  indices = got[f"int/{serving.OUTPUT_INDICES}"]
  assert indices.shape == (len(sessions), K)
  assert export_check.top_k_mismatches(reference, indices, got[f"int/{serving.OUTPUT_SCORES}"]) == 0
  np.testing.assert_array_equal(indices, np.argsort(-reference, axis=1, kind="stable")[:, :K])
  vocab = schema.read_vocab(run["data_dir"])
  assert [[i.decode() for i in row] for row in got[f"int/{serving.OUTPUT_ITEM_IDS}"]] == [
      [vocab[i][0] for i in row] for row in indices]
  # the raw-id signature, left-padded and gappy layouts give the same lists
  for name in ("raw", "left", "gappy"):
    np.testing.assert_array_equal(got[f"{name}/{serving.OUTPUT_INDICES}"], indices)
    np.testing.assert_array_equal(got[f"{name}/{serving.OUTPUT_SCORES}"],
                                  got[f"int/{serving.OUTPUT_SCORES}"])
  np.testing.assert_array_equal(got[f"k/{serving.OUTPUT_INDICES}"], indices[:, :5])
  assert not got[f"int/{serving.OUTPUT_IGNORED}"].any()
  assert not got[f"int/{serving.OUTPUT_FALLBACK}"].any()


def test_saved_model_cli_lists_the_signatures(plain_export):
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  out = subprocess.run([cli, "show", "--all", "--dir", plain_export["path"]], env=ENV,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  for name in serving.SIGNATURES:
    assert f"signature_def['{name}']" in out.stdout
  for name in (serving.INPUT_ITEM_IDS, serving.INPUT_RAW_ITEM_IDS, serving.INPUT_K,
               *serving.OUTPUTS):
    assert f"['{name}']" in out.stdout
  assert "tensorflow/serving/predict" in out.stdout


def test_layout_size_and_export_info(plain_export):
  path, info = plain_export["path"], plain_export["info"]
  assert sorted(os.listdir(plain_export["export_dir"])) == ["1"]  # no staging left over
  for name in ("saved_model.pb", "variables", os.path.join("assets", serving.VOCAB_ASSET),
               os.path.join(export.ASSETS_EXTRA, export.WARMUP_FILE)):
    assert os.path.exists(os.path.join(path, name)), name
  data_bytes = sum(os.path.getsize(os.path.join(path, "variables", n))
                   for n in os.listdir(os.path.join(path, "variables")))
  assert data_bytes == info["variables_bytes"]
  matrix = plain_export["module"].item_matrix
  assert tuple(matrix.shape) == (300, 64)  # [V, d_id + d_text]: the item table once
  assert info["weights_bytes"] >= matrix.numpy().nbytes
  assert info["variables_bytes"] < 1.3 * info["weights_bytes"], info
  assert "ratio" in plain_export["stdout"]


def test_oov_ids_are_ignored_and_counted(plain_export):
  module = plain_export["module"]
  clean = call(module, serving.SIGNATURE_DEFAULT, item_ids=np.array([[5, 7, 0, 0]], np.int64))
  dirty = call(module, serving.SIGNATURE_DEFAULT,
               item_ids=np.array([[0, 5, 99999, -3, 7, 0]], np.int64))
  assert dirty[serving.OUTPUT_IGNORED].tolist() == [2]
  np.testing.assert_array_equal(dirty[serving.OUTPUT_INDICES], clean[serving.OUTPUT_INDICES])
  raw = call(module, serving.SIGNATURE_RAW,
             raw_item_ids=np.array([[b"SKU00005", b"no-such-item", b"", b"SKU00007"]]))
  assert raw[serving.OUTPUT_IGNORED].tolist() == [1]
  np.testing.assert_array_equal(raw[serving.OUTPUT_INDICES], clean[serving.OUTPUT_INDICES])


def test_empty_or_all_unknown_session_returns_the_most_popular(run, plain_export):
  _, _, manifest, data_dir = run["loaded"]
  counts = alter_data.item_counts(schema.split_files(data_dir, manifest, "train"),
                                  manifest["num_items"]).numpy()
  popular = sorted(range(1, len(counts)), key=lambda i: (-counts[i], i))[:K]
  out = call(plain_export["module"], serving.SIGNATURE_DEFAULT,
             item_ids=np.array([[0, 0, 0], [12345, 0, -1], [5, 0, 0]], np.int64))
  assert out[serving.OUTPUT_FALLBACK].tolist() == [True, True, False]
  assert out[serving.OUTPUT_IGNORED].tolist() == [0, 2, 0]
  assert out[serving.OUTPUT_INDICES][0].tolist() == popular
  assert out[serving.OUTPUT_INDICES][1].tolist() == popular
  np.testing.assert_array_equal(out[serving.OUTPUT_SCORES][0], counts[popular])
  raw = call(plain_export["module"], serving.SIGNATURE_RAW,
             raw_item_ids=np.array([[b"", b""]]))
  assert raw[serving.OUTPUT_FALLBACK].tolist() == [True]
  assert raw[serving.OUTPUT_INDICES][0].tolist() == popular


def test_long_sessions_keep_their_last_max_len_items(plain_export):
  module = plain_export["module"]
  session = np.arange(1, 21, dtype=np.int64)[None, :]  # 20 items > MAX_LEN
  full = call(module, serving.SIGNATURE_DEFAULT, item_ids=session)
  tail = call(module, serving.SIGNATURE_DEFAULT, item_ids=session[:, -MAX_LEN:])
  np.testing.assert_array_equal(full[serving.OUTPUT_INDICES], tail[serving.OUTPUT_INDICES])
  np.testing.assert_allclose(full[serving.OUTPUT_SCORES], tail[serving.OUTPUT_SCORES],
                             rtol=1e-6)


def test_rest_predict_body_maps_onto_the_signatures(plain_export):
  """The README's REST bodies, parsed as TF Serving does (row and columnar format)."""
  module = plain_export["module"]
  bodies = [
      {"signature_name": "serving_default",
       "instances": [{"item_ids": [5, 7, 9, 0, 0]}, {"item_ids": [11, 0, 0, 0, 0]}]},
      {"signature_name": "raw_ids",
       "instances": [{"raw_item_ids": ["SKU00005", "SKU00007", ""]}]},
      {"signature_name": "top_k", "inputs": {"item_ids": [[5, 7, 9]], "k": 3}},
  ]
  for body in bodies:
    body = json.loads(json.dumps(body))  # what travels is JSON
    signature = module.signatures[body["signature_name"]]
    specs = signature.structured_input_signature[1]
    if "instances" in body:  # row format: one object per session, stacked per input
      assert all(set(row) == set(specs) for row in body["instances"])
      inputs = {name: [row[name] for row in body["instances"]] for name in specs}
    else:  # columnar format: needed for the scalar k
      assert set(body["inputs"]) == set(specs)
      inputs = body["inputs"]
    tensors = {name: tf.constant(np.array(value, dtype=specs[name].dtype.as_numpy_dtype))
               for name, value in inputs.items()}
    for name, tensor in tensors.items():
      assert specs[name].shape.is_compatible_with(tensor.shape), (name, tensor.shape)
    out = signature(**tensors)
    response = {"predictions": [
        {name: value[row].tolist() for name, value in
         ((n, v.numpy().astype(str) if v.dtype == tf.string else v.numpy())
          for n, v in out.items())}
        for row in range(len(next(iter(tensors.values()))))]}
    json.dumps(response)
    assert set(response["predictions"][0]) == set(serving.OUTPUTS)


def _fields(data: bytes):
  """Length-delimited fields {number: [payload]} of a protobuf message (wire type 2 only)."""
  out, i = {}, 0
  while i < len(data):
    tag, shift = 0, 0
    while True:
      byte = data[i]
      i += 1
      tag |= (byte & 0x7F) << shift
      shift += 7
      if byte < 0x80:
        break
    assert tag & 7 == 2, tag
    size, shift = 0, 0
    while True:
      byte = data[i]
      i += 1
      size |= (byte & 0x7F) << shift
      shift += 7
      if byte < 0x80:
        break
    out.setdefault(tag >> 3, []).append(data[i:i + size])
    i += size
  return out


def test_warmup_records_are_valid_predict_requests(plain_export):
  records = list(tf.data.TFRecordDataset(
      os.path.join(plain_export["path"], export.ASSETS_EXTRA, export.WARMUP_FILE)))
  assert len(records) == plain_export["info"]["warmup_requests"] >= 2
  # without tensorflow-serving-api: walk PredictionLog.predict_log(6).request(1)
  module = plain_export["module"]
  for record in records:
    request = _fields(_fields(_fields(record.numpy())[6][0])[1][0])
    spec = _fields(request[1][0])
    assert spec[1] == [b"alterrec"]
    signature = spec[3][0].decode()
    inputs = {}
    for entry in request[2]:
      entry = _fields(entry)
      proto = tf.make_tensor_proto(0)
      proto.ParseFromString(entry[2][0])
      inputs[entry[1][0].decode()] = tf.constant(tf.make_ndarray(proto))
    assert serving.OUTPUT_ITEM_IDS in module.signatures[signature](**inputs)
  prediction_log_pb2 = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
  signatures = []
  for record in records:
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    request = log.predict_log.request
    assert request.model_spec.name == "alterrec"
    signatures.append(request.model_spec.signature_name)
    inputs = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
    out = plain_export["module"].signatures[request.model_spec.signature_name](**inputs)
    assert serving.OUTPUT_ITEM_IDS in out
    # the fallback encoder writes the same bytes as the official package
    assert warmup.encode_predict_log(
        "alterrec", request.model_spec.signature_name,
        {n: tf.make_ndarray(p) for n, p in request.inputs.items()}) == record.numpy()
  assert signatures.count(serving.SIGNATURE_DEFAULT) >= 2
  assert set(signatures) == set(serving.SIGNATURES)


def test_recommend_prints_titles(plain_export, run):
  version_dir = recommend.resolve_version_dir(plain_export["export_dir"])
  assert version_dir == plain_export["path"]
  rows, ignored, fallback = recommend.recommend(
      version_dir, ["SKU00005", "nope", "SKU00007"], k=4, loaded=plain_export["module"])
  assert len(rows) == 4 and ignored == 1 and not fallback
  titles = recommend.read_titles(version_dir)
  text = recommend.format_recommendations(["SKU00005", "nope", "SKU00007"], rows, ignored,
                                          fallback, titles)
  vocab = dict(schema.read_vocab(run["data_dir"]))
  assert vocab[rows[0][1]] in text and "(unknown id: ignored)" in text
  assert "1 unknown item id(s) ignored" in text


def test_failed_export_leaves_no_version_and_existing_version_is_refused(
    run, plain_export, tmp_path, monkeypatch):
  export_dir = str(tmp_path / "models")
  with pytest.raises(export.ExportError, match="exists"):
    export.export(run["run_dir"], plain_export["export_dir"], version=1,
                  loaded_run=run["loaded"])

  def broken(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(warmup, "write_warmup", broken)
  with pytest.raises(RuntimeError, match="disk full"):
    export.export(run["run_dir"], export_dir, k=K, loaded_run=run["loaded"], verify=False)
  assert os.listdir(export_dir) == []


@pytest.mark.parametrize("towers", [("id",), ("text",)])
def test_single_tower_models_export(run, towers, tmp_path):
  model, config, manifest, data_dir = run["loaded"]
  single_config = config.replace(model="id_only" if towers == ("id",) else "text_only")
  single = alter_model.AlterRec(ModelSettings.of(single_config), model.num_items,
                                model.text_tower.item_encoder.text_table.numpy(),
                                towers=towers)
  single.build_all()
  single.tower(towers[0]).set_weights(model.tower(towers[0]).get_weights())
  info = export.export(run["run_dir"], str(tmp_path / "m"), k=K, warmup=False,
                       loaded_run=(single, single_config, manifest, data_dir))
  assert info["verified_sessions"] > 0  # export() raises if the top-k differ
  module = tf.saved_model.load(info["path"])
  assert tuple(module.item_matrix.shape) == (model.num_items, config.embedding_dim)


def test_cold_start_items_with_a_zero_id_part_score_by_text_only_and_exclusion(run, tmp_path):
  model, config, manifest, data_dir = run["loaded"]
  text_table = model.text_tower.item_encoder.text_table.numpy()
  twin = 5  # the new item "NEW-TWIN" has exactly item 5's text
  rng = np.random.default_rng(1)
  folder = new_items.write(str(tmp_path / "new"), ["NEW-TWIN", "NEW-OTHER"],
                           ["twin of five", "another\tnew item"],
                           np.stack([text_table[twin], rng.normal(size=text_table.shape[1])]))
  with pytest.raises(export.ExportError, match="SKU00003"):
    clash = new_items.write(str(tmp_path / "clash"), ["SKU00003"], ["x"], text_table[3:4])
    export.export(run["run_dir"], str(tmp_path / "bad"), loaded_run=run["loaded"],
                  new_items=clash, warmup=False, verify=False)
  assert not os.path.exists(tmp_path / "bad" / "1")
  info = export.export(run["run_dir"], str(tmp_path / "m"), k=K, exclude_session_items=True,
                       new_items=folder, warmup=False, loaded_run=run["loaded"],
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
  text_scores = model.text_tower(tf.constant(export_check.pad_sessions([[11, 12, twin]], MAX_LEN)))[0, 2]
  expected = ALPHA * id_scores.numpy() + (1 - ALPHA) * text_scores.numpy()
  keep = np.ones(V, bool)
  keep[[0, 11, 12]] = False  # padding, and the excluded session items
  np.testing.assert_allclose(scores[:V][keep], expected[keep], rtol=1e-4, atol=1e-4)
  raw = call(module, serving.SIGNATURE_RAW, raw_item_ids=np.array([[b"NEW-TWIN"]]))
  assert raw[serving.OUTPUT_IGNORED].tolist() == [0]
  assert not raw[serving.OUTPUT_FALLBACK][0]
  assert b"NEW-TWIN" not in raw[serving.OUTPUT_ITEM_IDS][0]  # excluded: it is the session


def test_cold_start_items_get_an_id_part_imputed_from_their_text(run, tmp_path):
  model, config, manifest, data_dir = run["loaded"]
  text_table = model.text_tower.item_encoder.text_table.numpy()
  twin = 5
  folder = new_items.write(str(tmp_path / "new"), ["NEW-TWIN"], ["twin of five"],
                           text_table[twin:twin + 1])
  info = export.export(run["run_dir"], str(tmp_path / "m"), k=K, new_items=folder,
                       warmup=False, loaded_run=run["loaded"])  # verified by export
  assert info["cold_id_part"] == "imputed"
  assert "cold items' ID part: imputed" in export.format_info(info)
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


def test_embed_items_writes_a_table_the_exporter_reads(run, tmp_path):
  pytest.importorskip("pandas")
  from data_tools import embed_items  # pylint: disable=g-import-not-at-top

  class FakeEncoder:  # a deterministic stand-in for the sentence model
    def encode(self, texts, **kwargs):
      del kwargs
      return np.stack([np.random.default_rng(sum(map(ord, t))).normal(size=16)
                       for t in texts]).astype(np.float32)

  catalog = tmp_path / "catalog.csv"
  catalog.write_text("id,title\nSKU00003,known item\nNEW1,red mug\nNEW2,blue lamp\n")
  summary = embed_items.embed_catalog(str(catalog), str(tmp_path / "out"), [],
                                      data_dir=run["data_dir"], encoder=FakeEncoder())
  assert summary["num_items"] == 2 and summary["skipped_known"] == 1
  table = new_items.read(str(tmp_path / "out"), text_dim=16)
  assert table.raw_ids == ["NEW1", "NEW2"] and table.titles == ["red mug", "blue lamp"]
  np.testing.assert_allclose(table.embeddings[0], FakeEncoder().encode(["red mug"])[0])
  model, _, manifest, _ = run["loaded"]
  read = serving_build.read_new_items(str(tmp_path / "out"), model, manifest,
                               schema.read_vocab(run["data_dir"]))
  assert read.raw_ids == ["NEW1", "NEW2"]
