"""The TF Serving module: fused top-K recommendation as one matmul and one top_k.

`ServingModule` is a plain `tf.Module` (not a Keras model) that holds only what
serving needs:

  item_matrix   float [V, D]: the item vectors of every tower side by side,
                D = sum of the towers' d (ID columns first); cold-start rows
                (items added at export) have in the ID columns the ID row
                imputed from their text (`models.cold_items`: the ID rows of
                the trained items nearest in text), or zeros. Kept only
                without chunks (the session encoders gather its rows).
  item_blocks   float [ceil(V / C), D, C]: the same vectors transposed, in
                blocks of C items (C = V without chunks): what scoring reads
  popularity    float [V]: training counts, the ranking of an empty session
  the session encoders of the towers (the trained Keras layers themselves)
  two lookup tables read from the vocabulary asset (raw id <-> dense index)

A request is scored as

  q = concat(alpha * u_id, (1 - alpha) / text_temperature * u_text)   [B, D]
  scores = q @ item_matrix^T = q @ item_blocks[b] per block           [B, V]

which equals alpha * ID + (1 - alpha) * text of the trained model (Eq. 12).
The weights alpha and 1/temperature multiply the session vector (B x D numbers
per request) instead of the matrix, so the item vectors the session encoders
read are the trained ones, unscaled.

Request layout: a session is a row of dense item indices (or raw ids) where 0
(or "") is padding. The graph compacts every row (non-padding items move left,
order kept), so right-padded, left-padded or gappy rows all mean the same
session, and keeps its last `max_len` items, as training and evaluation do.
Unknown items (dense index outside [0, V), raw id not in the vocabulary) are
dropped like padding and counted in `num_ignored_items`. A session left with no
item gets the most popular items (`popular_fallback` true, scores = training
counts). A cold-start item in a session is read by the text tower only (the ID
tower never learned it and skips it). With `exclude_session_items`, every item
of the request (also those beyond the last max_len) scores NEG_INF, so it is
never in a list of k <= V - 1 - (session items) items; the padding column
scores below that and is never returned.

Text signatures (optional, `text_item_vectors` given): new items as raw text,
scored without re-exporting. `new_item_vectors` maps text fields [N, F] (the
dataset's text fields, in the manifest's order; "" = no text; F is declared,
not enforced: an item's vector is the mean over whichever fields have text,
so the order does not matter) through the
sentence encoder and the text tower's item projection to the text tower's item
vectors [N, d_text] and to rows [N, D] laid out as the cold-start rows of
item_matrix (imputed ID part, or zeros). `score_text_candidates` scores such
candidates [C, F] for sessions of raw ids [B, L]: q @ rows^T [B, C], the very
score the items would get if exported with --new_items. The sentence encoder
(an `alterrec_tf.text` Keras BERT with a tensorflow-text tokenizer) is then part
of the SavedModel: a process that loads it must `import tensorflow_text` first.

Ranking: the top k by score; equal scores are listed by lower item index
(tf.math.top_k's order over the whole catalogue), also when the catalogue is
scored in chunks. With `chunk_size` (export: --serving_chunk_size) below V,
items [offset, offset + C) are scored chunk by chunk (their matmul [B, C],
the popularity of empty sessions, the request's items and the padding column
scored out inside the chunk) and folded into a running top k in a
tf.while_loop (`models.scoring.top_k_over_chunks`, as evaluation ranks big
catalogues), so a request's scores take B x C floats, not B x V; the lists are
the one-matmul lists. Only standard TensorFlow ops (While, MatMul, TopKV2, ...).

Cost: the session encoders dominate a small catalogue (the fused scoring is
one [B, D] x [D, V] matmul and one top_k); a request of at most
`fast_path_batch` sessions (default 16) runs them in one pass over its
sessions padded to the longest, a larger one per bucket of session lengths
(<= 8, 9..16, 17..32, ..., max_len), each bucket padded to its own longest
session, so a batch of mostly short sessions is not padded to max_len; one
tf.cond chooses. A causal encoder's output at a session's last item does not
depend on padding after it, so both equal the full-window model up to float
rounding. Towers that read the same items share the window and one gather of
item vectors, and Transformer encoders of one shape run as one stacked
computation (`encoders.StackedTransformer`: the ops of one encoder for both
towers, the last block only at the last item). The variables are only ever
read whole (`_rows`): a gather on a variable itself would make TensorFlow
copy all of it at every request.
benchmarks/serving_profile.py times each piece (the SCOPE_* name scopes).
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from alterrec_tf.formats import schema
from alterrec_tf.models import cold_items, scoring
from alterrec_tf.serving import encoders as serving_encoders

try:  # TensorFlow's un-lowered cond (see `_cond`)
  from tensorflow.python.ops.cond_v2 import fast_cond_v2 as _fast_cond_v2
except ImportError:  # pragma: no cover - an older or newer TensorFlow
  _fast_cond_v2 = None

NEG_INF = -1e9  # score of excluded items (as towers.NEG_INF)
PADDING_SCORE = 2 * NEG_INF  # the padding column: below every item

SIGNATURE_DEFAULT = "serving_default"
SIGNATURE_TOP_K = "top_k"
SIGNATURE_RAW = "raw_ids"
SIGNATURE_RAW_TOP_K = "raw_ids_top_k"
SIGNATURES = (SIGNATURE_DEFAULT, SIGNATURE_TOP_K, SIGNATURE_RAW, SIGNATURE_RAW_TOP_K)
SIGNATURE_NEW_ITEM_VECTORS = "new_item_vectors"
SIGNATURE_SCORE_TEXT = "score_text_candidates"
TEXT_SIGNATURES = (SIGNATURE_NEW_ITEM_VECTORS, SIGNATURE_SCORE_TEXT)

INPUT_ITEM_IDS = "item_ids"
INPUT_RAW_ITEM_IDS = "raw_item_ids"
INPUT_K = "k"
INPUT_FIELDS = "fields"
INPUT_CANDIDATE_FIELDS = "candidate_fields"

OUTPUT_ITEM_IDS = "top_k_item_ids"
OUTPUT_INDICES = "top_k_indices"
OUTPUT_SCORES = "top_k_scores"
OUTPUT_IGNORED = "num_ignored_items"
OUTPUT_FALLBACK = "popular_fallback"
OUTPUTS = (OUTPUT_ITEM_IDS, OUTPUT_INDICES, OUTPUT_SCORES, OUTPUT_IGNORED, OUTPUT_FALLBACK)
OUTPUT_TEXT_ITEM_VECTORS = "text_item_vectors"
OUTPUT_ITEM_VECTORS = "item_vectors"
OUTPUT_CANDIDATE_SCORES = "scores"

VOCAB_ASSET = "serving_vocab.tsv"  # index TAB raw_id TAB title, no header; row 0 = padding

_INT_IDS = tf.TensorSpec([None, None], tf.int64, name=INPUT_ITEM_IDS)
_RAW_IDS = tf.TensorSpec([None, None], tf.string, name=INPUT_RAW_ITEM_IDS)
_K = tf.TensorSpec([], tf.int32, name=INPUT_K)

FAST_PATH_BATCH = 16  # requests of at most this many sessions skip the length buckets

# name scopes of the serving graph's pieces (benchmarks/serving_profile.py adds
# up the time of each; the session encoders are the Keras layers' own scopes)
SCOPE_IDS_IN = "ids_in"
SCOPE_COMPACT = "compact"
SCOPE_BUCKETS = "length_buckets"
SCOPE_WINDOWS = "windows"
SCOPE_SCORES = "scores"
SCOPE_SEEN = "seen_items"
SCOPE_TOP_K = "top_k"
SCOPE_IDS_OUT = "ids_out"


tower_scales = scoring.fused_query_scales  # one definition for training and serving


class TowerPart:
  """How one tower enters the serving graph.

  Attributes:
    name: "id" or "text".
    session_encoder: the trained Keras session encoder ([B, L, d], mask) -> [B, L, d].
    dim: d.
    scale: weight of its session vector in the fused query (alpha, or
      (1 - alpha) / text_temperature, or 1 / temperature for a single tower).
    known_items: items with index >= this are skipped by this tower's session
      encoder (the ID tower: the trained catalogue size; text: all items).
  """

  def __init__(self, name: str, session_encoder, dim: int, scale: float, known_items: int):
    self.name, self.session_encoder, self.dim = name, session_encoder, int(dim)
    self.scale, self.known_items = float(scale), int(known_items)


class ServingModule(tf.Module):
  """Serving graph of a trained AlterRec (or single-tower) model.

  Args:
    item_matrix: float32 [V, D] numpy, towers' item vectors side by side in the
      order of `towers`.
    towers: `TowerPart`s, their dims summing to D.
    popularity: float [V] training counts.
    vocab_path: the vocabulary file (index, raw id, title; no header), copied
      into the SavedModel's assets.
    max_len: items of context kept per session.
    k: list length of the fixed-k signatures.
    exclude_session_items: never recommend an item of the request's session.
    text_item_vectors: optional layer string [N, F] -> float32 [N, d_text], the
      text tower's item vectors of raw text fields
      (`alterrec_tf.text.item_space.ItemTextVectors`); adds the text signatures.
    num_text_fields: F, the text fields a request gives per item.
    cold_id_imputer: optional `models.cold_items.ColdIdImputer`: the text
      signatures' rows get ID columns imputed from the trained items' rows of
      item_matrix (else zeros), as the export's --new_items rows.
    chunk_size: score a catalogue of more items chunk by chunk into a running
      top k (0: one [B, V] matmul at any size).
    fast_path_batch: requests of at most this many sessions run the session
      encoders in one pass (no length buckets).
    stack_encoders: run the towers' Transformer session encoders of one shape
      as one `encoders.StackedTransformer` (else each tower's Keras layer).
  """

  def __init__(self, item_matrix, towers: Sequence[TowerPart], popularity, vocab_path: str,
               max_len: int, k: int, exclude_session_items: bool,
               text_item_vectors=None, num_text_fields: int = 0,
               cold_id_imputer=None, chunk_size: int = 0,
               fast_path_batch: int = FAST_PATH_BATCH, stack_encoders: bool = True):
    super().__init__(name="alterrec_serving")
    num_items, width = item_matrix.shape
    if sum(t.dim for t in towers) != width:
      raise ValueError(f"tower dims {[t.dim for t in towers]} do not add up to the "
                       f"item matrix width {width}")
    if not 1 <= k < num_items:
      raise ValueError(f"k={k} must be in [1, {num_items - 1}] (the number of items)")
    if text_item_vectors is not None and (
        "text" not in [t.name for t in towers] or num_text_fields < 1):
      raise ValueError(f"text signatures need a text tower (towers: "
                       f"{[t.name for t in towers]}) and text fields ({num_text_fields})")
    self.num_items = int(num_items)
    self.max_len = int(max_len)
    self.k = int(k)
    self.exclude_session_items = bool(exclude_session_items)
    if chunk_size < 0:
      raise ValueError(f"chunk_size={chunk_size} must be >= 0 (0: one matmul)")
    self.chunk_size = int(chunk_size)
    self.fast_path_batch = int(fast_path_batch)
    self._parts = tuple(towers)
    self._columns: List[Tuple[int, int]] = []  # each tower's columns in item_matrix
    for part in self._parts:
      start = self._columns[-1][1] if self._columns else 0
      self._columns.append((start, start + part.dim))
    # towers that read the same items share their window: [(known_items, [tower index])]
    groups: Dict[int, list] = {}
    for index, part in enumerate(self._parts):
      groups.setdefault(min(part.known_items, self.num_items), []).append(index)
    self._tower_groups = tuple((known, tuple(members)) for known, members in groups.items())
    # session lengths <= 8, <= 16, <= 32, ... are encoded as separate batches
    self.length_buckets = tuple(b for b in (8, 16, 32, 64, 128, 256) if b < max_len)
    # Tracked children: only the session encoders (not the towers, whose item
    # encoders hold the ID table and the SBERT table that serving never reads):
    # each group's towers stacked where they can be, else their Keras layers.
    self.stacked_encoders: List[serving_encoders.StackedTransformer] = []
    self._stacked: Dict[Tuple[int, ...], int] = {}  # group -> its stacked_encoders entry
    for _, members in self._tower_groups:
      consecutive = members == tuple(range(members[0], members[-1] + 1))
      stacked = (serving_encoders.StackedTransformer.from_encoders(
          [self._parts[index].session_encoder for index in members])
          if stack_encoders and consecutive else None)
      if stacked is not None:
        self._stacked[members] = len(self.stacked_encoders)
        self.stacked_encoders.append(stacked)
    self.session_encoders = [self._parts[index].session_encoder
                             for _, members in self._tower_groups if members not in self._stacked
                             for index in members]
    # Scoring reads the matrix transposed, in blocks of `chunk_size` items
    # [chunks, D, C] (one block [1, D, V] without chunks): q @ block is a plain
    # matmul, 1.5-3x faster on CPU than q @ rows^T (transpose_b) for 1 to 256
    # sessions at 40k items. The session encoders gather rows: without chunks
    # from the matrix [V, D] kept beside it (at most chunk_size x D floats
    # more); with chunks from the blocks (strided, a small cost beside
    # scoring millions of items), so a big catalogue is held once.
    self.block_size = self.chunk_size if 0 < self.chunk_size < self.num_items \
        else self.num_items
    self.num_chunks = -(-self.num_items // self.block_size)
    item_matrix = np.asarray(item_matrix, np.float32)
    if self.num_chunks == 1:
      self.item_matrix = tf.Variable(item_matrix, trainable=False, name="item_matrix")
    self.item_blocks = tf.Variable(_blocks(item_matrix, self.block_size), trainable=False,
                                   name="item_blocks")
    self.popularity = tf.Variable(popularity, dtype=tf.float32, trainable=False,
                                  name="popularity")
    self.vocab_asset = tf.saved_model.Asset(vocab_path)
    self.raw_to_index = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(self.vocab_asset, tf.string, 1, tf.int64, 0,
                                      delimiter="\t"), default_value=-1)
    self.index_to_raw = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(self.vocab_asset, tf.int64, 0, tf.string, 1,
                                      delimiter="\t"), default_value="")
    # Tracked only with text signatures: the sentence encoder (~90 MB for
    # all-MiniLM-L6-v2) and the text tower's projection + LayerNorm.
    self.num_text_fields = int(num_text_fields)
    if text_item_vectors is not None:
      self.text_item_vectors = text_item_vectors
      if cold_id_imputer is not None:
        self.cold_trained_items = tf.Variable(
            np.asarray(cold_id_imputer.trained_items, np.int32), trainable=False,
            name="cold_trained_items")
        self._cold_neighbours = (cold_id_imputer.num_neighbours,
                                 cold_id_imputer.temperature)

  @property
  def has_text_signatures(self) -> bool:
    return hasattr(self, "text_item_vectors")

  @property
  def signature_names(self) -> tuple:
    return SIGNATURES + (TEXT_SIGNATURES if self.has_text_signatures else ())

  # --- signatures -----------------------------------------------------------------
  def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    """The concrete functions to pass as tf.saved_model.save(signatures=...).

    The four signatures only map their inputs to dense indices and call one
    shared function (`_recommend`), so saved_model.pb holds the scoring graph
    once; it and `score_text_candidates` share the session query function, and
    both text signatures share the text function (`_text_rows`). Nothing is a
    @tf.function attribute of the module: tf.saved_model.save would trace and
    store such a function again besides the signatures.
    """
    query = tf.function(self._dense_query, input_signature=[
        tf.TensorSpec([None, None], tf.int32)])
    core = tf.function(
        lambda dense, ignored, k: self._recommend(dense, ignored, k, query),
        input_signature=[tf.TensorSpec([None, None], tf.int32),
                         tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32)])
    fixed_k = self.k

    def with_k(outputs):  # the static list length of the fixed-k signatures
      return {name: (tf.ensure_shape(value, [None, fixed_k]) if value.shape.rank == 2
                     else value) for name, value in outputs.items()}

    def serving_default(item_ids):
      """Dense indices int64 [B, L] (0 = padding) -> top k (fixed at export)."""
      return with_k(core(*self._from_indices(item_ids), tf.constant(fixed_k)))

    def top_k(item_ids, k):
      """As serving_default, with the list length k (clipped to [0, V - 1])."""
      return core(*self._from_indices(item_ids), k)

    def raw_ids(raw_item_ids):
      """Raw item ids string [B, L] ("" = padding) -> top k (fixed at export)."""
      return with_k(core(*self._from_raw(raw_item_ids), tf.constant(fixed_k)))

    def raw_ids_top_k(raw_item_ids, k):
      """As raw_ids, with k in the request."""
      return core(*self._from_raw(raw_item_ids), k)

    functions = {
        SIGNATURE_DEFAULT: tf.function(serving_default, input_signature=[_INT_IDS]),
        SIGNATURE_TOP_K: tf.function(top_k, input_signature=[_INT_IDS, _K]),
        SIGNATURE_RAW: tf.function(raw_ids, input_signature=[_RAW_IDS]),
        SIGNATURE_RAW_TOP_K: tf.function(raw_ids_top_k, input_signature=[_RAW_IDS, _K]),
    }
    if self.has_text_signatures:
      functions.update(self._text_signatures(query))
    return {name: function.get_concrete_function() for name, function in functions.items()}

  def _text_signatures(self, query) -> Dict[str, tf.types.experimental.GenericFunction]:
    """new_item_vectors and score_text_candidates around one text function."""
    fields_shape = [None, self.num_text_fields]
    text_rows = tf.function(self._text_rows, input_signature=[
        tf.TensorSpec(fields_shape, tf.string)])

    def new_item_vectors(fields):
      """Text fields string [N, F] ("" = none) -> text_item_vectors float [N, d_text],
      item_vectors float [N, D] (a cold-start row of item_matrix: imputed ID part
      or zeros)."""
      text, rows = text_rows(fields)
      return {OUTPUT_TEXT_ITEM_VECTORS: text, OUTPUT_ITEM_VECTORS: rows}

    def score_text_candidates(raw_item_ids, candidate_fields):
      """Sessions of raw ids string [B, L] x candidates' text fields string [C, F]
      -> scores float [B, C] (fused, as --new_items rows), num_ignored_items
      int32 [B], popular_fallback bool [B] (no known item: scores are 0)."""
      dense, ignored = self._from_raw(raw_item_ids)
      _, rows = text_rows(candidate_fields)
      scores = tf.matmul(query(dense), rows, transpose_b=True)
      empty = tf.reduce_all(tf.equal(dense, schema.PADDING_INDEX), axis=1)
      return {OUTPUT_CANDIDATE_SCORES: scores, OUTPUT_IGNORED: ignored,
              OUTPUT_FALLBACK: empty}

    return {
        SIGNATURE_NEW_ITEM_VECTORS: tf.function(new_item_vectors, input_signature=[
            tf.TensorSpec(fields_shape, tf.string, name=INPUT_FIELDS)]),
        SIGNATURE_SCORE_TEXT: tf.function(score_text_candidates, input_signature=[
            _RAW_IDS, tf.TensorSpec(fields_shape, tf.string, name=INPUT_CANDIDATE_FIELDS)]),
    }

  def _text_rows(self, fields):
    """Text fields string [N, F] -> (text tower item vectors [N, d_text], item
    matrix rows [N, D]: the imputed ID part, or zeros, in the ID columns)."""
    text = self.text_item_vectors(fields)
    count = tf.shape(text)[0]

    columns, start = {}, 0
    for part in self._parts:
      columns[part.name] = slice(start, start + part.dim)
      start += part.dim

    def block(part):
      if part.name == "text":
        return text
      if part.name == "id" and hasattr(self, "cold_trained_items"):
        trained = self._rows(self.cold_trained_items)
        return cold_items.impute_id_rows(text, trained[:, columns["text"]],
                                         trained[:, columns["id"]], *self._cold_neighbours)
      return tf.zeros([count, part.dim], text.dtype)

    blocks = [block(part) for part in self._parts]
    return text, (blocks[0] if len(blocks) == 1 else tf.concat(blocks, axis=1))

  # --- graph ----------------------------------------------------------------------
  def _from_indices(self, item_ids):
    """int64 [B, L] -> (valid dense indices int32 [B, L], ignored counts [B])."""
    with tf.name_scope(SCOPE_IDS_IN):
      item_ids = tf.convert_to_tensor(item_ids, tf.int64)
      known = (item_ids >= 0) & (item_ids < self.num_items)
      ignored = tf.reduce_sum(
          tf.cast(~known & (item_ids != schema.PADDING_INDEX), tf.int32), axis=1)
      return tf.cast(tf.where(known, item_ids, schema.PADDING_INDEX), tf.int32), ignored

  def _from_raw(self, raw_item_ids):
    """string [B, L] -> (valid dense indices int32 [B, L], ignored counts [B])."""
    with tf.name_scope(SCOPE_IDS_IN):
      index = self.raw_to_index.lookup(raw_item_ids)
      # "[PAD]" names row 0 of the vocabulary, the padding index: not an item
      known = index > schema.PADDING_INDEX
      ignored = tf.reduce_sum(tf.cast(~known & (raw_item_ids != ""), tf.int32), axis=1)
      dense = tf.where(known, index, tf.constant(schema.PADDING_INDEX, tf.int64))
      return tf.cast(dense, tf.int32), ignored

  def _rows(self, indices):
    """Item matrix rows float [..., D] of item indices int [...].

    The variables are only ever read whole (a tensor of the variable, then
    gathered): a gather on a variable (ResourceGather) switches it to
    copy-on-read, after which TensorFlow copies all of it at every later
    read (the scoring matmul's), which cost more than the rest of a
    one-session request at 3.4k items."""
    if self.num_chunks == 1:
      return tf.gather(tf.convert_to_tensor(self.item_matrix), indices)
    # item i is column i % C of block i // C: element (i // C, d, i % C) of the blocks
    indices = tf.cast(indices, tf.int64)
    width = sum(part.dim for part in self._parts)
    block, column = indices // self.block_size, indices % self.block_size
    flat = ((block * width)[..., None] + tf.range(width, dtype=tf.int64)) * self.block_size \
        + column[..., None]
    return tf.gather(tf.reshape(tf.convert_to_tensor(self.item_blocks), [-1]), flat)

  def session_query(self, session):
    """Fused query vectors [B, D] of compacted sessions (ragged int32 [B, None]).

    Towers that read the same items (all of them, unless the ID tower skips
    cold-start items) share one window and one gather of item vectors
    [B, L, D]. A request of at most `fast_path_batch` sessions is encoded in
    one pass; a larger one per bucket of session lengths, both towers in one
    branch per bucket."""
    blocks = [None] * len(self._parts)
    for known, members in self._tower_groups:
      items = session
      if known < self.num_items:
        items = tf.ragged.boolean_mask(session, session < known)
      items = items[:, -self.max_len:]
      for index, vectors in zip(members, self._group_last_vectors(members, items)):
        blocks[index] = vectors * self._parts[index].scale
    return blocks[0] if len(blocks) == 1 else tf.concat(blocks, axis=-1)

  def _group_last_vectors(self, members, items):
    """Session vectors [n, d_t] of towers `members` (indices into the towers)
    at the last item of ragged sessions [n, None], in one pass or bucketed."""
    def one_pass():
      return self._last_vectors(members, items)

    encoders = [self._parts[index].session_encoder for index in members]
    if not self.length_buckets or not any(encoder.weights for encoder in encoders):
      return one_pass()
    return _cond(items.nrows(out_type=tf.int32) <= self.fast_path_batch, one_pass,
                 lambda: self._bucketed_last_vectors(members, items))

  def _last_vectors(self, members, items):
    """Session vectors [n, d_t] of towers `members` at the last item of ragged
    sessions [n, None] (zeros for an empty session), one window for all."""
    lengths = tf.cast(items.row_lengths(), tf.int32)
    # Right-padded to the longest session given, not to max_len: a causal
    # encoder's output at the last real item does not depend on the padding
    # after it, and short sessions cost proportionally less.
    with tf.name_scope(SCOPE_WINDOWS):
      window = items.to_tensor(default_value=schema.PADDING_INDEX)
      window = tf.pad(window, [[0, 0], [0, tf.maximum(1 - tf.shape(window)[1], 0)]])
      mask = tf.not_equal(window, schema.PADDING_INDEX)
      vectors = self._rows(window)  # [n, L, D]
      last_position = tf.maximum(lengths - 1, 0)
    if members in self._stacked:  # all of them at once: [T, n, d]
      start, end = self._columns[members[0]][0], self._columns[members[-1]][1]
      shape = tf.shape(vectors)
      stacked = tf.transpose(tf.reshape(
          vectors[:, :, start:end], [shape[0], shape[1], len(members), -1]), [2, 0, 1, 3])
      encoder = self.stacked_encoders[self._stacked[members]]
      last = encoder.last_vectors(stacked, mask, last_position)
      last = tf.where((lengths > 0)[None, :, None], last, tf.zeros_like(last))
      return tf.unstack(last, num=len(members))
    outputs = []
    for index in members:
      start, end = self._columns[index]
      prefixes = self._parts[index].session_encoder(vectors[:, :, start:end], mask,
                                                    training=False)
      last = tf.gather(prefixes, last_position, batch_dims=1)
      outputs.append(tf.where((lengths > 0)[:, None], last, tf.zeros_like(last)))
    return outputs

  def _bucketed_last_vectors(self, members, items):
    """As `_last_vectors`, run per session-length bucket, so that a batch of
    mostly short sessions is not padded to its longest one."""
    with tf.name_scope(SCOPE_BUCKETS):
      lengths = tf.cast(items.row_lengths(), tf.int32)
      bucket = tf.searchsorted(tf.constant(self.length_buckets, tf.int32), lengths,
                               side="left")
      rows = tf.range(tf.shape(lengths)[0])
      parts = tf.dynamic_partition(rows, bucket, len(self.length_buckets) + 1)
      subsets = [tf.gather(items, index) for index in parts]
    outputs = []
    for index, subset in zip(parts, subsets):
      outputs.append(_cond(
          tf.size(index) > 0,
          lambda subset=subset: self._last_vectors(members, subset),
          lambda index=index: [tf.zeros([tf.size(index), end - start])
                               for start, end in (self._columns[m] for m in members)]))
    with tf.name_scope(SCOPE_BUCKETS):
      return [tf.dynamic_stitch(parts, [bucket_outputs[position] for bucket_outputs in outputs])
              for position in range(len(members))]

  def _dense_query(self, dense):
    """dense int32 [B, L] valid indices (0 = padding, any layout) -> fused query [B, D]."""
    return self.session_query(_compact(dense))

  def _recommend(self, dense, ignored, k, query=None):
    """dense int32 [B, L] valid indices (0 = padding, any layout) -> outputs.

    `query`: the (shared) function dense -> fused query [B, D]; default
    `_dense_query`. The catalogue is scored in one [B, V] matmul, or, with a
    `chunk_size` below V, chunk by chunk into a running top k
    (`scoring.top_k_over_chunks`: the same lists, ties by lower item index)."""
    queries = (query or self._dense_query)(dense)
    empty = tf.reduce_all(tf.equal(dense, schema.PADDING_INDEX), axis=1)
    blocks = tf.convert_to_tensor(self.item_blocks)  # [chunks, D, C]

    def chunk_scores(offset, size):
      return {"fused": self._item_scores(queries, blocks[offset // self.block_size], dense,
                                         empty, offset, size)}

    k = tf.clip_by_value(tf.cast(k, tf.int32), 0, self.num_items - 1)
    with tf.name_scope(SCOPE_TOP_K):
      values, indices = scoring.top_k_over_chunks(chunk_scores, self.num_items, k,
                                                  self.block_size)["fused"]
    indices = tf.cast(indices, tf.int64)
    with tf.name_scope(SCOPE_IDS_OUT):
      raw_ids = self.index_to_raw.lookup(indices)
    return {
        OUTPUT_ITEM_IDS: raw_ids,
        OUTPUT_INDICES: indices,
        OUTPUT_SCORES: values,
        OUTPUT_IGNORED: ignored,
        OUTPUT_FALLBACK: empty,
    }

  def _item_scores(self, queries, block, dense, empty, offset, size):
    """Served scores [B, size] of items offset..offset + size - 1 (the first
    `size` columns of their block [D, C] of `item_blocks`): the fused score,
    the popularity of an empty session, NEG_INF for the request's items
    (`exclude_session_items`), PADDING_SCORE for the padding item."""
    with tf.name_scope(SCOPE_SCORES):
      scores = tf.matmul(queries, block)
      if not isinstance(size, int) or size < self.block_size:  # the last block: padded
        scores = scores[:, :size]
      popularity = self.popularity[offset:offset + size]
      scores = tf.where(empty[:, None], popularity[None, :], scores)
    if self.exclude_session_items:
      with tf.name_scope(SCOPE_SEEN):
        scores = scoring.mask_items(scores, dense, offset)
    with tf.name_scope(SCOPE_SCORES):
      # Padding ranks below everything, excluded items included, so that it
      # is never returned (k <= V - 1).
      is_padding = tf.equal(tf.range(size) + offset, schema.PADDING_INDEX)[None, :]
      return tf.where(is_padding, tf.constant(PADDING_SCORE, tf.float32), scores)


def _blocks(matrix: np.ndarray, chunk_size: int) -> np.ndarray:
  """The rows [V, D] as transposed blocks [ceil(V / C), D, C]: block b holds
  items b * C .. b * C + C - 1 as columns (the last block zero-padded)."""
  num_items, width = matrix.shape
  count = -(-num_items // chunk_size)
  blocks = np.zeros([count, width, chunk_size], np.float32)
  for block in range(count):
    rows = matrix[block * chunk_size:(block + 1) * chunk_size]
    blocks[block, :, :len(rows)] = rows.T
  return blocks


def _compact(dense):
  """Ragged int32 [B, None]: the items of each row of dense [B, L], in order."""
  with tf.name_scope(SCOPE_COMPACT):
    return tf.ragged.boolean_mask(dense, tf.not_equal(dense, schema.PADDING_INDEX))


def _cond(pred, true_fn, false_fn):
  """tf.cond as one If op that runs the branch taken and nothing of the other.

  A plain tf.cond is lowered to Switch/Merge when the function is instantiated,
  and the executor then walks every op of the branch not taken as dead: with
  the length buckets' four encoder passes per tower beside the one-pass path,
  that was 15% of a one-session call (BUILD_NOTES.md, "Serving latency").
  TensorFlow's `fast_cond_v2` keeps the If functional (a standard op: TF
  Serving runs it as any SavedModel's); the branches must not need automatic
  control dependencies (these only read variables). Falls back to tf.cond
  where a TensorFlow lacks it.
  """
  if _fast_cond_v2 is None:
    return tf.cond(pred, true_fn, false_fn)
  return _fast_cond_v2(pred, true_fn, false_fn)
