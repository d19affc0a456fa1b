"""Item text inside the graph: a Keras port of a sentence-transformers BERT encoder.

  tokenizer.py  `WordPieceTokenizer`: strings [B] -> token ids [B, L] (tensorflow-text)
  bert.py       `BertBackbone`: token ids [B, L] -> hidden states [B, L, d]
  encoder.py    `SentenceEncoder` (strings [B] -> [B, d]), `FieldMeanEncoder`
                (fields [B, F] -> [B, d], as data_tools.embed), `load_encoder`
  item_space.py `ItemTextVectors`: fields [N, F] -> a trained text tower's item
                vectors (FieldMeanEncoder, then the tower's projection and LayerNorm)
  convert.py    `convert`: a sentence-transformers model folder -> an encoder folder
                (run once, offline; the only place that may import torch)

Nothing here imports torch, pandas or data_tools at import time. A SavedModel
that holds a `WordPieceTokenizer` needs `import tensorflow_text` in the process
that loads it (its custom ops register on import).
"""
