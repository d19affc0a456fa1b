"""BERT WordPiece tokenization in the graph, with tensorflow-text.

`WordPieceTokenizer` does what the Hugging Face BERT tokenizer of a
sentence-transformers model does before the transformer: lower-case, strip
accents (NFD, drop combining marks), split on whitespace, punctuation and CJK
characters, WordPiece with the model's vocab.txt, truncate to
`max_seq_length - 2` word pieces, add [CLS] ... [SEP] and pad. The vocabulary
is held in the graph (a constant-initialised table), so a SavedModel needs no
asset file, only `import tensorflow_text` where it is loaded.

Lower-casing is Unicode lower() (`tf.strings.lower`, as Python's and the
Rust tokenizers'), not tensorflow-text's ICU case folding, which maps "ß" to
"ss" and full-width letters to ASCII where Hugging Face does not. Known
differences left, none of which occur in the Online Retail titles (all 4,224
tokenize identically): the Hugging Face tokenizer keeps special tokens written
in the text ("[CLS]") as one token, deletes control characters where this one
puts a space, and sends words over 100 characters (here: 100 bytes) to [UNK].
"""

from typing import Any, Dict, List, Sequence, Tuple, Union

import keras
import tensorflow as tf
import tensorflow_text as tf_text

CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"


def read_vocabulary(path: str) -> List[str]:
  """The tokens of a BERT vocab.txt, one per line, in id order."""
  with open(path, encoding="utf-8") as f:
    return [line.rstrip("\n").rstrip("\r") for line in f]


class WordPieceTokenizer(keras.layers.Layer):
  """Strings -> BERT token ids and padding mask (TensorFlow backend only).

  Args:
    vocabulary: the tokens in id order, or the path of a vocab.txt.
    max_seq_length: tokens per text, [CLS] and [SEP] included; longer texts
      keep their first `max_seq_length - 2` word pieces.
    lower_case: lower-case and strip accents (an uncased model).
    max_bytes_per_word: a longer word becomes [UNK].

  Call args:
    texts: string [B].

  Returns:
    (token_ids int32 [B, L], mask bool [B, L]) with L = the longest tokenized
    text of the batch (at most `max_seq_length`); padding is [PAD] and False.
  """

  def __init__(self, vocabulary: Union[str, Sequence[str]], max_seq_length: int = 256,
               lower_case: bool = True, max_bytes_per_word: int = 100, **kwargs) -> None:
    kwargs.setdefault("trainable", False)
    super().__init__(**kwargs)
    if isinstance(vocabulary, str):
      vocabulary = read_vocabulary(vocabulary)
    self.vocabulary = list(vocabulary)
    if max_seq_length < 3:
      raise ValueError(f"max_seq_length={max_seq_length}: needs room for [CLS], [SEP] "
                       "and one token")
    missing = [t for t in (CLS_TOKEN, SEP_TOKEN, PAD_TOKEN, UNK_TOKEN)
               if t not in self.vocabulary]
    if missing:
      raise ValueError(f"the vocabulary has no {', '.join(missing)}")
    if len(set(self.vocabulary)) != len(self.vocabulary):
      raise ValueError("the vocabulary has repeated tokens")
    self.max_seq_length = int(max_seq_length)
    self.lower_case = bool(lower_case)
    self.max_bytes_per_word = int(max_bytes_per_word)
    self.cls_id = self.vocabulary.index(CLS_TOKEN)
    self.sep_id = self.vocabulary.index(SEP_TOKEN)
    self.pad_id = self.vocabulary.index(PAD_TOKEN)
    # One OOV bucket, as tensorflow-text builds it from a vocab.txt path; the
    # WordPiece op sees the underlying table and emits [UNK] for unknown words.
    table = tf.lookup.StaticVocabularyTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(self.vocabulary, tf.string),
            tf.range(len(self.vocabulary), dtype=tf.int64)),
        num_oov_buckets=1)
    # Lower-casing is done in `normalize`; the BertTokenizer only splits words
    # (whitespace, punctuation, CJK; control characters as spaces) and pieces.
    self.tokenizer = tf_text.BertTokenizer(
        table, token_out_type=tf.int32, unknown_token=UNK_TOKEN,
        max_bytes_per_word=self.max_bytes_per_word, lower_case=False,
        normalization_form=None)
    self.built = True

  @property
  def vocabulary_size(self) -> int:
    return len(self.vocabulary)

  def normalize(self, texts: tf.Tensor) -> tf.Tensor:
    """string [B] -> string [B]: lower-cased, accents stripped (uncased models)."""
    if not self.lower_case:
      return texts
    texts = tf_text.normalize_utf8(tf.strings.lower(texts, encoding="utf-8"), "NFD")
    return tf.strings.regex_replace(texts, r"\p{Mn}", "")

  def call(self, texts: Union[tf.Tensor, Sequence[str]]) -> Tuple[tf.Tensor, tf.Tensor]:
    texts = self.normalize(tf.convert_to_tensor(texts, tf.string))
    # [B, words, pieces] -> [B, pieces], then keep room for [CLS] and [SEP]
    pieces = self.tokenizer.tokenize(texts).merge_dims(-2, -1)
    pieces = pieces[:, :self.max_seq_length - 2]
    batch = tf.shape(pieces.row_splits)[0] - 1
    cls = tf.fill([batch, 1], tf.constant(self.cls_id, tf.int32))
    sep = tf.fill([batch, 1], tf.constant(self.sep_id, tf.int32))
    ids = tf.concat([cls, pieces, sep], axis=1)
    lengths = ids.row_lengths()
    token_ids = ids.to_tensor(default_value=self.pad_id)
    mask = tf.sequence_mask(lengths, tf.shape(token_ids)[1])
    return token_ids, mask

  def compute_output_spec(self, texts: keras.KerasTensor
                          ) -> Tuple[keras.KerasTensor, keras.KerasTensor]:
    batch = texts.shape[0]
    return (keras.KerasTensor((batch, None), dtype="int32"),
            keras.KerasTensor((batch, None), dtype="bool"))

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config()
    config.update(vocabulary=self.vocabulary, max_seq_length=self.max_seq_length,
                  lower_case=self.lower_case, max_bytes_per_word=self.max_bytes_per_word)
    return config
