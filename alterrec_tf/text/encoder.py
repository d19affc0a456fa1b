"""Sentence vectors of raw item text in the graph: tokenizer + BERT + pooling.

`SentenceEncoder` is the sentence-transformers pipeline of a converted model
(Transformer -> mean Pooling -> Normalize, when the model has that module) as
one Keras layer: string [B] -> float32 [B, d]. `FieldMeanEncoder` embeds each
text field of an item separately and averages the fields that have text, as
`data_tools.embed.item_text_table` does: string [B, F] -> float32 [B, d].

An encoder folder (written by `alterrec_tf.text.convert.convert`) holds

  text_encoder.json   the `TextEncoderConfig` (architecture, tokenizer, pipeline)
  vocab.txt           the WordPiece vocabulary, one token a line
  text_encoder.npz    the weights in Keras layout, by `BertBackbone.named_weights`

and `load_encoder(folder)` builds the layer from it without torch.
`NumpyTextEncoder` gives it sentence-transformers' `encode(list) -> array`
interface (what data_tools calls), and `TextEncoderModule` is a tf.Module with
`encode` / `encode_fields` signatures for tf.saved_model.save.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from alterrec_tf.text import bert as text_bert
from alterrec_tf.text import tokenizer as text_tokenizer

CONFIG_FILE = "text_encoder.json"
VOCAB_FILE = "vocab.txt"
WEIGHTS_FILE = "text_encoder.npz"

SIGNATURE_ENCODE = "encode"
SIGNATURE_ENCODE_FIELDS = "encode_fields"
INPUT_TEXTS = "texts"
INPUT_FIELDS = "fields"
OUTPUT_EMBEDDINGS = "embeddings"
# Python's str.split() whitespace (what data_tools.sessions.clean_text collapses), in RE2
WHITESPACE_ONLY = r"[\s\p{Z}\x{1c}-\x{1f}\x{85}]*"


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
  """What a converted sentence model is.

  Attributes:
    bert: the transformer's architecture.
    max_seq_length: tokens per text with [CLS] and [SEP] (sentence-transformers'
      max_seq_length; longer texts are truncated).
    lower_case: the tokenizer lower-cases and strips accents.
    normalize: L2-normalize the pooled vector (the model has a Normalize module).
    source: the model it was converted from (a name or folder), for the record.
  """
  bert: text_bert.BertConfig = dataclasses.field(default_factory=text_bert.BertConfig)
  max_seq_length: int = 256
  lower_case: bool = True
  normalize: bool = True
  source: str = ""

  def __post_init__(self) -> None:
    if not 3 <= self.max_seq_length <= self.bert.max_positions:
      raise ValueError(f"max_seq_length={self.max_seq_length} must be in [3, "
                       f"{self.bert.max_positions}] (the position table)")

  @property
  def dim(self) -> int:
    return self.bert.hidden_size

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "TextEncoderConfig":
    values = json.loads(text)
    return cls(**{**values, "bert": text_bert.BertConfig(**values["bert"])})


class MeanPooling(keras.layers.Layer):
  """Mean of the token vectors at real tokens (sentence-transformers' Pooling).

  Call args:
    hidden: float [B, L, d].
    mask: bool [B, L], True at real tokens.

  Returns:
    float [B, d].
  """

  def call(self, hidden: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    weights = ops.cast(mask, hidden.dtype)[..., None]
    counts = ops.maximum(ops.sum(weights, axis=1), 1e-9)
    return ops.sum(hidden * weights, axis=1) / counts


class L2Normalize(keras.layers.Layer):
  """x / max(||x||, 1e-12) along the last axis (torch's F.normalize): [B, d] -> [B, d]."""

  def call(self, x: tf.Tensor) -> tf.Tensor:
    norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
    return x / ops.maximum(norm, 1e-12)


class SentenceEncoder(keras.layers.Layer):
  """Raw text -> sentence vector, the whole sentence-transformers pipeline.

  Args:
    config: the converted model's `TextEncoderConfig`.
    vocabulary: its WordPiece tokens in id order, or the path of vocab.txt.

  Call args:
    texts: string [B]. An empty string is encoded as "[CLS] [SEP]", as
      sentence-transformers does.

  Returns:
    float32 [B, d]; unit length when `config.normalize`.
  """

  def __init__(self, config: TextEncoderConfig, vocabulary: Union[str, Sequence[str]],
               **kwargs) -> None:
    kwargs.setdefault("trainable", False)
    super().__init__(**kwargs)
    self.config = config
    self.tokenizer = text_tokenizer.WordPieceTokenizer(
        vocabulary, config.max_seq_length, config.lower_case, name="tokenizer")
    if self.tokenizer.vocabulary_size != config.bert.vocab_size:
      raise ValueError(f"the vocabulary has {self.tokenizer.vocabulary_size} tokens, the "
                       f"model {config.bert.vocab_size}")
    self.backbone = text_bert.BertBackbone(config.bert, name="bert")
    self.pooling = MeanPooling(name="mean_pooling")
    self.normalize = L2Normalize(name="normalize") if config.normalize else None
    self.built = True  # the weights exist: no symbolic build on the first call

  @property
  def dim(self) -> int:
    return self.config.dim

  def call(self, texts: Union[tf.Tensor, Sequence[str]]) -> tf.Tensor:
    token_ids, mask = self.tokenizer(texts)
    vectors = self.pooling(self.backbone(token_ids, mask), mask)
    return self.normalize(vectors) if self.normalize is not None else vectors

  def compute_output_spec(self, texts: keras.KerasTensor) -> keras.KerasTensor:
    return keras.KerasTensor((texts.shape[0], self.dim), dtype="float32")

  def named_weights(self) -> Dict[str, keras.Variable]:
    return self.backbone.named_weights()

  def set_named_weights(self, arrays: Mapping[str, np.ndarray]) -> None:
    """Assigns {name: array} (all of `named_weights`, nothing else, same shapes)."""
    variables = self.named_weights()
    missing = sorted(set(variables) - set(arrays))
    extra = sorted(set(arrays) - set(variables))
    if missing or extra:
      raise ValueError(f"weights do not match the encoder: missing {missing[:5]}, "
                       f"unexpected {extra[:5]}")
    for name, variable in variables.items():
      value = np.asarray(arrays[name])
      if tuple(value.shape) != tuple(variable.shape):
        raise ValueError(f"weight {name}: shape {value.shape}, the encoder has "
                         f"{tuple(variable.shape)}")
      variable.assign(value.astype(np.float32))

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config()
    config.update(config=json.loads(self.config.to_json()),
                  vocabulary=self.tokenizer.vocabulary)
    return config

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "SentenceEncoder":
    config = dict(config)
    encoder_config = TextEncoderConfig.from_json(json.dumps(config.pop("config")))
    return cls(encoder_config, config.pop("vocabulary"), **config)


class FieldMeanEncoder(keras.layers.Layer):
  """An item's text vector: the mean of its fields' sentence vectors.

  Each field with text is encoded on its own; an item's vector is the mean over
  those fields (not re-normalized), zeros where no field has text, as
  `data_tools.embed.item_text_table` (with `require_text` off) builds the table
  the model was trained on. A field that is empty or only whitespace has no
  text (data_tools' `clean_text` turns such a cell into ""); other fields reach
  the encoder as they are (whitespace does not change the tokens).

  Args:
    encoder: the `SentenceEncoder`.

  Call args:
    fields: string [B, F].

  Returns:
    float32 [B, d].
  """

  def __init__(self, encoder: SentenceEncoder, **kwargs) -> None:
    kwargs.setdefault("trainable", False)
    super().__init__(**kwargs)
    self.encoder = encoder
    self.built = True

  def call(self, fields: Union[tf.Tensor, Sequence[Sequence[str]]]) -> tf.Tensor:
    fields = tf.convert_to_tensor(fields, tf.string)
    present = tf.logical_not(tf.strings.regex_full_match(fields, WHITESPACE_ONLY))
    where = tf.where(present)  # [n, 2] (item, field)
    vectors = self.encoder(tf.gather_nd(fields, where))  # [n, d]
    sums = tf.math.unsorted_segment_sum(vectors, where[:, 0], tf.shape(fields)[0])
    counts = tf.reduce_sum(tf.cast(present, vectors.dtype), axis=1, keepdims=True)
    return sums / tf.maximum(counts, 1.0)

  def compute_output_spec(self, fields: keras.KerasTensor) -> keras.KerasTensor:
    return keras.KerasTensor((fields.shape[0], self.encoder.dim), dtype="float32")


# --- the encoder folder ---------------------------------------------------------------
def save_encoder(encoder: SentenceEncoder, folder: str) -> str:
  """Writes `encoder` as an encoder folder (created); returns the folder."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, CONFIG_FILE), "w", encoding="utf-8") as f:
    f.write(encoder.config.to_json() + "\n")
  with open(os.path.join(folder, VOCAB_FILE), "w", encoding="utf-8") as f:
    f.writelines(token + "\n" for token in encoder.tokenizer.vocabulary)
  arrays: Dict[str, Any] = {name: np.asarray(v.numpy(), np.float32)
                            for name, v in encoder.named_weights().items()}
  np.savez(os.path.join(folder, WEIGHTS_FILE), **arrays)
  return folder


def is_encoder_folder(folder: str) -> bool:
  return all(os.path.isfile(os.path.join(folder, name))
             for name in (CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE))


def load_encoder(folder: str, name: str = "sentence_encoder") -> SentenceEncoder:
  """The `SentenceEncoder` of an encoder folder (no torch needed).

  Raises:
    FileNotFoundError: the folder lacks one of its three files.
  """
  if not is_encoder_folder(folder):
    raise FileNotFoundError(f"{folder} is not a text encoder folder (needs {CONFIG_FILE}, "
                            f"{VOCAB_FILE} and {WEIGHTS_FILE}; write one with "
                            "alterrec_tf.text.convert)")
  with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as f:
    config = TextEncoderConfig.from_json(f.read())
  encoder = SentenceEncoder(config, os.path.join(folder, VOCAB_FILE), name=name)
  with np.load(os.path.join(folder, WEIGHTS_FILE)) as arrays:
    encoder.set_named_weights({key: arrays[key] for key in arrays.files})
  return encoder


# --- eager use: sentence-transformers' encode interface ---------------------------------
class NumpyTextEncoder:
  """A `SentenceEncoder` behind sentence-transformers' `encode(list) -> array`.

  What `data_tools.embed.embed_texts` / `item_text_table` call, so they run
  unchanged without torch. Texts are encoded in batches of similar length (as
  sentence-transformers sorts them) by one traced graph, and returned in input
  order.

  Args:
    encoder: a `SentenceEncoder`.
  """

  def __init__(self, encoder: SentenceEncoder) -> None:
    self.encoder = encoder
    self._encode = tf.function(encoder, input_signature=[tf.TensorSpec([None], tf.string)],
                               reduce_retracing=True)

  def get_sentence_embedding_dimension(self) -> int:
    return self.encoder.dim

  def encode(self, texts: Sequence[str], batch_size: int = 32,
             show_progress_bar: Optional[bool] = None, convert_to_numpy: bool = True,
             **unused_kwargs) -> np.ndarray:
    """float32 [len(texts), d] in the order of `texts`."""
    del show_progress_bar, convert_to_numpy
    if isinstance(texts, str):
      return self.encode([texts], batch_size)[0]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = np.zeros((len(texts), self.encoder.dim), np.float32)
    for start in range(0, len(order), max(int(batch_size), 1)):
      rows = order[start:start + batch_size]
      out[rows] = self._encode(tf.constant([texts[i] for i in rows], tf.string)).numpy()
    return out


# --- SavedModel -------------------------------------------------------------------------
class TextEncoderModule(tf.Module):
  """A tf.Module to save a `SentenceEncoder` with its two signatures.

    encode         texts string [B]            -> embeddings float32 [B, d]
    encode_fields  fields string [B, F]        -> embeddings float32 [B, d]

  Save with `tf.saved_model.save(module, path, signatures=module.signatures())`;
  load with tensorflow_text imported.
  """

  def __init__(self, encoder: SentenceEncoder) -> None:
    super().__init__(name="text_encoder")
    self.encoder = encoder
    self.field_mean = FieldMeanEncoder(encoder, name="field_mean")

  def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    def encode(texts: tf.Tensor) -> Dict[str, tf.Tensor]:
      """Sentence vectors of string [B]."""
      return {OUTPUT_EMBEDDINGS: self.encoder(texts)}

    def encode_fields(fields: tf.Tensor) -> Dict[str, tf.Tensor]:
      """Mean field vectors of string [B, F]."""
      return {OUTPUT_EMBEDDINGS: self.field_mean(fields)}

    return {
        SIGNATURE_ENCODE: tf.function(encode, input_signature=[
            tf.TensorSpec([None], tf.string, name=INPUT_TEXTS)]).get_concrete_function(),
        SIGNATURE_ENCODE_FIELDS: tf.function(encode_fields, input_signature=[
            tf.TensorSpec([None, None], tf.string, name=INPUT_FIELDS)]
        ).get_concrete_function(),
    }
