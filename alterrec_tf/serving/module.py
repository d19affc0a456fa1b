"""The TF Serving module: fused top-K recommendation as one matmul and one top_k.

`ServingModule` is a plain `tf.Module` (not a Keras model) that holds only what
serving needs, defines the signatures and maps requests to dense indices and
back to raw ids; its two sides are `serving.query` (sessions -> fused query)
and `serving.topk` (fused query -> the top k of the catalogue). It holds:

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

which equals alpha * ID + (1 - alpha) * text of the trained model (Eq. 12)
(the query: `serving.query.SessionQuery`; the scores and the top k, chunked
or not: `serving.topk.CatalogueScorer`).

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

Ranking: the top k by score, equal scores by lower item index, also when the
catalogue is scored in chunks (`chunk_size`, export: --serving_chunk_size; see
`serving.topk`). Cost: the session encoders dominate a small catalogue; see
`serving.query` for how they run (one pass or length buckets, shared windows,
stacked encoders) and why the variables are only ever read whole.
Only standard TensorFlow ops (While, MatMul, TopKV2, If, ...).
benchmarks/serving_profile.py times each piece (the SCOPE_* name scopes).
"""

from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from alterrec_tf.formats import schema
from alterrec_tf.models import cold_items, scoring
from alterrec_tf.serving import query as serving_query
from alterrec_tf.serving import topk as serving_topk

if TYPE_CHECKING:
  from alterrec_tf.text.item_space import ItemTextVectors

Outputs = Dict[str, tf.Tensor]  # a signature's outputs by name

NEG_INF = serving_topk.NEG_INF  # score of excluded items (as towers.NEG_INF)
PADDING_SCORE = serving_topk.PADDING_SCORE  # the padding column: below every item

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

FAST_PATH_BATCH = serving_query.FAST_PATH_BATCH  # default fast_path_batch

# name scopes of the serving graph's pieces (benchmarks/serving_profile.py adds
# up the time of each; the session encoders are the Keras layers' own scopes)
SCOPE_IDS_IN = "ids_in"
SCOPE_COMPACT = serving_query.SCOPE_COMPACT
SCOPE_BUCKETS = serving_query.SCOPE_BUCKETS
SCOPE_WINDOWS = serving_query.SCOPE_WINDOWS
SCOPE_SCORES = serving_topk.SCOPE_SCORES
SCOPE_SEEN = serving_topk.SCOPE_SEEN
SCOPE_TOP_K = serving_topk.SCOPE_TOP_K
SCOPE_IDS_OUT = "ids_out"


tower_scales = scoring.fused_query_scales  # one definition for training and serving
TowerPart = serving_query.TowerPart  # how one tower enters the serving graph


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

  def __init__(self, item_matrix: np.ndarray, towers: Sequence[TowerPart],
               popularity: np.ndarray, vocab_path: str,
               max_len: int, k: int, exclude_session_items: bool,
               text_item_vectors: Optional["ItemTextVectors"] = None, num_text_fields: int = 0,
               cold_id_imputer: Optional[cold_items.ColdIdImputer] = None, chunk_size: int = 0,
               fast_path_batch: int = FAST_PATH_BATCH, stack_encoders: bool = True) -> None:
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
    # (lists, tuples and dicts are tracked children of a tf.Module: names kept)
    self._parts = tuple(towers)
    self._columns = serving_query.tower_columns(self._parts)
    self._tower_groups = serving_query.tower_groups(self._parts, self.num_items)
    self.length_buckets = serving_query.length_buckets(self.max_len)
    # Tracked children: only the session encoders (not the towers, whose item
    # encoders hold the ID table and the SBERT table that serving never reads):
    # each group's towers stacked where they can be, else their Keras layers.
    self.stacked_encoders, self._stacked = serving_query.stack_groups(
        self._parts, self._tower_groups, stack_encoders)
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
    self.item_blocks = tf.Variable(serving_topk.blocks(item_matrix, self.block_size),
                                   trainable=False, name="item_blocks")
    self.popularity = tf.Variable(popularity, dtype=tf.float32, trainable=False,
                                  name="popularity")
    self.vocab_asset = tf.saved_model.Asset(vocab_path)
    self.raw_to_index = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(self.vocab_asset, tf.string, 1, tf.int64, 0,
                                      delimiter="\t"), default_value=-1)
    self.index_to_raw = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(self.vocab_asset, tf.int64, 0, tf.string, 1,
                                      delimiter="\t"), default_value="")
    # the graph's two sides (plain objects: what they read is tracked above)
    self._query = serving_query.SessionQuery(
        self._parts, self._columns, self._tower_groups, self.length_buckets,
        self.stacked_encoders, self._stacked, self._rows, self.num_items, self.max_len,
        self.fast_path_batch)
    self._scorer = serving_topk.CatalogueScorer(self.item_blocks, self.popularity,
                                                self.num_items, self.block_size,
                                                self.exclude_session_items)
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

    def with_k(outputs: Outputs) -> Outputs:  # the static list length of the fixed-k signatures
      return {name: (tf.ensure_shape(value, [None, fixed_k]) if value.shape.rank == 2
                     else value) for name, value in outputs.items()}

    def serving_default(item_ids: tf.Tensor) -> Outputs:
      """Dense indices int64 [B, L] (0 = padding) -> top k (fixed at export)."""
      return with_k(core(*self._from_indices(item_ids), tf.constant(fixed_k)))

    def top_k(item_ids: tf.Tensor, k: tf.Tensor) -> Outputs:
      """As serving_default, with the list length k (clipped to [0, V - 1])."""
      return core(*self._from_indices(item_ids), k)

    def raw_ids(raw_item_ids: tf.Tensor) -> Outputs:
      """Raw item ids string [B, L] ("" = padding) -> top k (fixed at export)."""
      return with_k(core(*self._from_raw(raw_item_ids), tf.constant(fixed_k)))

    def raw_ids_top_k(raw_item_ids: tf.Tensor, k: tf.Tensor) -> Outputs:
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

  def _text_signatures(self, query: Callable[[tf.Tensor], tf.Tensor]
                       ) -> Dict[str, tf.types.experimental.GenericFunction]:
    """new_item_vectors and score_text_candidates around one text function."""
    fields_shape = [None, self.num_text_fields]
    text_rows = tf.function(self._text_rows, input_signature=[
        tf.TensorSpec(fields_shape, tf.string)])

    def new_item_vectors(fields: tf.Tensor) -> Outputs:
      """Text fields string [N, F] ("" = none) -> text_item_vectors float [N, d_text],
      item_vectors float [N, D] (a cold-start row of item_matrix: imputed ID part
      or zeros)."""
      text, rows = text_rows(fields)
      return {OUTPUT_TEXT_ITEM_VECTORS: text, OUTPUT_ITEM_VECTORS: rows}

    def score_text_candidates(raw_item_ids: tf.Tensor, candidate_fields: tf.Tensor) -> Outputs:
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

  def _text_rows(self, fields: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Text fields string [N, F] -> (text tower item vectors [N, d_text], item
    matrix rows [N, D]: the imputed ID part, or zeros, in the ID columns)."""
    text = self.text_item_vectors(fields)
    count = tf.shape(text)[0]

    columns, start = {}, 0
    for part in self._parts:
      columns[part.name] = slice(start, start + part.dim)
      start += part.dim

    def block(part: TowerPart) -> tf.Tensor:
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
  def _from_indices(self, item_ids: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """int64 [B, L] -> (valid dense indices int32 [B, L], ignored counts [B])."""
    with tf.name_scope(SCOPE_IDS_IN):
      item_ids = tf.convert_to_tensor(item_ids, tf.int64)
      known = (item_ids >= 0) & (item_ids < self.num_items)
      ignored = tf.reduce_sum(
          tf.cast(~known & (item_ids != schema.PADDING_INDEX), tf.int32), axis=1)
      return tf.cast(tf.where(known, item_ids, schema.PADDING_INDEX), tf.int32), ignored

  def _from_raw(self, raw_item_ids: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """string [B, L] -> (valid dense indices int32 [B, L], ignored counts [B])."""
    with tf.name_scope(SCOPE_IDS_IN):
      index = self.raw_to_index.lookup(raw_item_ids)
      # "[PAD]" names row 0 of the vocabulary, the padding index: not an item
      known = index > schema.PADDING_INDEX
      ignored = tf.reduce_sum(tf.cast(~known & (raw_item_ids != ""), tf.int32), axis=1)
      dense = tf.where(known, index, tf.constant(schema.PADDING_INDEX, tf.int64))
      return tf.cast(dense, tf.int32), ignored

  def _rows(self, indices: tf.Tensor) -> tf.Tensor:
    """Item matrix rows float [..., D] of item indices int [...], read from the
    variables whole (`serving.query.item_rows`)."""
    return serving_query.item_rows(self.item_matrix if self.num_chunks == 1 else None,
                                   self.item_blocks, self.block_size, indices)

  def session_query(self, session: tf.RaggedTensor) -> tf.Tensor:
    """Fused query vectors [B, D] of compacted sessions (ragged int32 [B, None]):
    `serving.query.SessionQuery`."""
    return self._query(session)

  def _dense_query(self, dense: tf.Tensor) -> tf.Tensor:
    """dense int32 [B, L] valid indices (0 = padding, any layout) -> fused query [B, D]."""
    return self.session_query(serving_query.compact(dense))

  def _recommend(self, dense: tf.Tensor, ignored: tf.Tensor, k: Union[int, tf.Tensor],
                 query: Optional[Callable[[tf.Tensor], tf.Tensor]] = None) -> Outputs:
    """dense int32 [B, L] valid indices (0 = padding, any layout) -> outputs.

    `query`: the (shared) function dense -> fused query [B, D]; default
    `_dense_query`. The top k: `serving.topk.CatalogueScorer` (one [B, V]
    matmul, or chunk by chunk into a running top k: the same lists)."""
    queries = (query or self._dense_query)(dense)
    empty = tf.reduce_all(tf.equal(dense, schema.PADDING_INDEX), axis=1)
    values, indices = self._scorer.top_k(queries, dense, empty, k)
    with tf.name_scope(SCOPE_IDS_OUT):
      raw_ids = self.index_to_raw.lookup(indices)
    return {
        OUTPUT_ITEM_IDS: raw_ids,
        OUTPUT_INDICES: indices,
        OUTPUT_SCORES: values,
        OUTPUT_IGNORED: ignored,
        OUTPUT_FALLBACK: empty,
    }
