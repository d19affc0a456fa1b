"""TF Serving export: parity with the Keras model in a fresh process, signatures,
OOV and empty requests, exclusion, atomicity, warmup, REST (cold-start items and
single-tower exports: test_export_new_items.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from alterrec_tf import export, recommend
from alterrec_tf.data import windows as alter_data
from alterrec_tf.formats import schema
from alterrec_tf.serving import check as export_check
from alterrec_tf.serving import module as serving
from alterrec_tf.serving import warmup
from tests.export_fixture import MAX_LEN, K, call

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


@pytest.fixture(scope="module")
def plain_export(export_run, tmp_path_factory):
  """Version 1, written by the command line in its own process."""
  export_dir = str(tmp_path_factory.mktemp("models") / "alterrec")
  command = [sys.executable, "-m", "alterrec_tf.export", f"--run_dir={export_run['run_dir']}",
             f"--export_dir={export_dir}", f"--k={K}"]
  out = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "equal the Keras model's" in out.stdout, out.stdout
  path = os.path.join(export_dir, "1")
  with open(os.path.join(path, export.ASSETS_EXTRA, export.EXPORT_INFO_FILE)) as f:
    info = json.load(f)
  return {"export_dir": export_dir, "path": path, "info": info, "stdout": out.stdout,
          "module": tf.saved_model.load(path)}


def sessions_of(export_run, count=24):
  model, _, manifest, data_dir = export_run["loaded"]
  sessions = export_check.sample_sessions(data_dir, manifest, count)
  assert any(len(s) > MAX_LEN for s in sessions) and any(len(s) <= 3 for s in sessions)
  return sessions


def right_padded(sessions, width):
  out = np.zeros([len(sessions), width], np.int64)
  for row, items in enumerate(sessions):
    out[row, :len(items)] = items
  return out


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


def test_fresh_process_top_k_equals_the_keras_model(export_run, plain_export, tmp_path):
  model = export_run["loaded"][0]
  sessions = sessions_of(export_run)
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
  vocab = schema.read_vocab(export_run["data_dir"])
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
  assert tuple(matrix.shape) == (300, 64)  # [V, d_id + d_text]
  # scored against the same vectors transposed, one block below the chunk size
  np.testing.assert_array_equal(plain_export["module"].item_blocks.numpy(),
                                matrix.numpy().T[None])
  assert info["weights_bytes"] >= matrix.numpy().nbytes
  assert info["variables_bytes"] < 1.3 * info["weights_bytes"], info
  assert "ratio" in plain_export["stdout"]
  assert info["serving_chunk_size"] == 65536 and not info["chunked_scoring"]
  assert "scoring: one [B, V] matmul" in plain_export["stdout"]


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


def test_empty_or_all_unknown_session_returns_the_most_popular(export_run, plain_export):
  _, _, manifest, data_dir = export_run["loaded"]
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


def test_recommend_prints_titles(plain_export, export_run):
  version_dir = recommend.resolve_version_dir(plain_export["export_dir"])
  assert version_dir == plain_export["path"]
  rows, ignored, fallback = recommend.recommend(
      version_dir, ["SKU00005", "nope", "SKU00007"], k=4, loaded=plain_export["module"])
  assert len(rows) == 4 and ignored == 1 and not fallback
  titles = recommend.read_titles(version_dir)
  text = recommend.format_recommendations(["SKU00005", "nope", "SKU00007"], rows, ignored,
                                          fallback, titles)
  vocab = dict(schema.read_vocab(export_run["data_dir"]))
  assert vocab[rows[0][1]] in text and "(unknown id: ignored)" in text
  assert "1 unknown item id(s) ignored" in text


def test_failed_export_leaves_no_version_and_existing_version_is_refused(
    export_run, plain_export, tmp_path, monkeypatch):
  export_dir = str(tmp_path / "models")
  with pytest.raises(export.ExportError, match="exists"):
    export.export(export_run["run_dir"], plain_export["export_dir"], version=1,
                  loaded_run=export_run["loaded"])

  def broken(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(warmup, "write_warmup", broken)
  with pytest.raises(RuntimeError, match="disk full"):
    export.export(export_run["run_dir"], export_dir, k=K, loaded_run=export_run["loaded"],
                  verify=False)
  assert not os.path.exists(export_dir)  # no version, not even the folder it created
