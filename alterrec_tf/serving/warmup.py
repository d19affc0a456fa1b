"""TF Serving warmup records (`assets.extra/tf_serving_warmup_requests`).

Each record is a serialised `tensorflow.serving.PredictionLog` holding one
PredictRequest. With the `tensorflow-serving-api` package they are built with
its classes; without it, a small protobuf encoder writes the same bytes (a test
checks both agree).
"""

import os
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from alterrec_tf.serving import module as serving


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited protobuf field (wire type 2)."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


# A request's inputs by name: arrays, and numpy scalars (k).
Inputs = Dict[str, Union[np.ndarray, np.generic]]


def encode_predict_log(model_name: str, signature_name: str, inputs: Inputs) -> bytes:
  """Serialised `tensorflow.serving.PredictionLog` holding one PredictRequest.

  Written from the field numbers of tensorflow_serving/apis/{prediction_log,
  predict,model}.proto (PredictionLog.predict_log = 6, PredictLog.request = 1,
  PredictRequest.model_spec = 1, .inputs = 2 (map<string, TensorProto>),
  ModelSpec.name = 1, .signature_name = 3), in the canonical field order, so
  it is byte-equal to the official package's deterministic serialisation (a
  test checks this where tensorflow-serving-api is installed). Used when that
  package is not installed.
  """
  spec = b""
  if model_name:
    spec += _field(1, model_name.encode("utf-8"))
  if signature_name:
    spec += _field(3, signature_name.encode("utf-8"))
  request = _field(1, spec)
  for name in sorted(inputs):
    tensor = tf.make_tensor_proto(inputs[name]).SerializeToString(deterministic=True)
    request += _field(2, _field(1, name.encode("utf-8")) + _field(2, tensor))
  return _field(6, _field(1, request))


def predict_log_bytes(model_name: str, signature_name: str, inputs: Inputs) -> bytes:
  """PredictionLog bytes, from tensorflow-serving-api if installed."""
  try:
    from tensorflow_serving.apis import (  # optional: the PredictionLog is hand-encoded without it
      model_pb2,
      predict_pb2,
      prediction_log_pb2,
    )
  except ImportError:
    return encode_predict_log(model_name, signature_name, inputs)
  request = predict_pb2.PredictRequest(
      model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name))
  for name, value in inputs.items():
    request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
  log = prediction_log_pb2.PredictionLog(
      predict_log=prediction_log_pb2.PredictLog(request=request))
  return log.SerializeToString(deterministic=True)


# (signature name, its inputs) of one warm-up request.
Request = Tuple[str, Inputs]


def warmup_requests(rows: Sequence[Sequence[str]], popularity: np.ndarray, max_len: int, k: int,
                    num_text_fields: int = 0) -> List[Request]:
  """(signature, inputs) of the warmup requests: popular items as sessions.

  With `num_text_fields` (an export with text signatures), also one request of
  each text signature: the titles of the two most popular titled items and a
  row without text as candidates, so that TF Serving's replay at load time
  pays the text graph's first-call cost (function instantiation, the
  tokenizer's tables) instead of the first user.
  """
  order = [int(i) for i in np.argsort(-popularity[1:], kind="stable") + 1][:max_len]
  short = np.zeros([1, max_len], np.int64)
  short[0, :min(3, len(order))] = order[:3]
  full = np.zeros([2, max_len], np.int64)
  full[0, :len(order)] = order
  full[1, :min(5, len(order))] = order[:5][::-1]
  raw = np.array([[rows[i][0].encode("utf-8") for i in order[:3]]], dtype=object)
  top_k = np.int32(min(k, 5))
  requests: List[Request] = [
      (serving.SIGNATURE_DEFAULT, {serving.INPUT_ITEM_IDS: short}),
      (serving.SIGNATURE_DEFAULT, {serving.INPUT_ITEM_IDS: full}),
      (serving.SIGNATURE_TOP_K, {serving.INPUT_ITEM_IDS: short, serving.INPUT_K: top_k}),
      (serving.SIGNATURE_RAW, {serving.INPUT_RAW_ITEM_IDS: raw}),
      (serving.SIGNATURE_RAW_TOP_K, {serving.INPUT_RAW_ITEM_IDS: raw, serving.INPUT_K: top_k}),
  ]
  if num_text_fields:
    titles = [str(rows[i][1]) for i in order if str(rows[i][1]).strip()][:2] or ["item"]
    fields = np.array([[title if f == 0 else "" for f in range(num_text_fields)]
                       for title in titles] + [[""] * num_text_fields], dtype=object)
    fields = np.vectorize(lambda text: text.encode("utf-8"), otypes=[object])(fields)
    requests += [
        (serving.SIGNATURE_NEW_ITEM_VECTORS, {serving.INPUT_FIELDS: fields}),
        (serving.SIGNATURE_SCORE_TEXT, {serving.INPUT_RAW_ITEM_IDS: raw,
                                        serving.INPUT_CANDIDATE_FIELDS: fields}),
    ]
  return requests


def write_warmup(path: str, model_name: str, requests: Sequence[Request]) -> int:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path) as writer:
    for signature, inputs in requests:
      writer.write(predict_log_bytes(model_name, signature, inputs))
  return len(requests)


# --- sizes and versions -----------------------------------------------------------------
