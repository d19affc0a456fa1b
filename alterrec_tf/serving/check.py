"""Checks that an exported SavedModel ranks like the Keras model it came from.

The exporter loads every version back before publishing it and compares its
top-k with the in-memory model's fused scores on real sessions, and (an export
with text signatures) its text item vectors and candidate scores with the
Keras layers'; the tests use the same helpers in a fresh process.

tensorflow_text is imported here because an export with text signatures holds
its tokenizer's ops, which register on import: without it tf.saved_model.load
of such an export fails ("Op type not registered").
"""

from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401

from alterrec_tf.formats import schema
from alterrec_tf.serving import module as serving
from alterrec_tf.serving.build import ExportError

if TYPE_CHECKING:
  from alterrec_tf.models.alterrec import AlterRec
  from alterrec_tf.models.cold_items import ColdIdImputer
  from alterrec_tf.text.item_space import ItemTextVectors


def pad_sessions(sessions: Sequence[Sequence[int]], max_len: int) -> np.ndarray:
  """Right-padded windows int32 [N, max_len] of each session's last max_len items."""
  window = np.zeros([len(sessions), max_len], np.int32)
  for row, items in enumerate(sessions):
    items = [int(i) for i in items if int(i) != schema.PADDING_INDEX][-max_len:]
    window[row, :len(items)] = items
  return window


def reference_scores(model: "AlterRec", sessions: Sequence[Sequence[int]],
                     batch_size: int = 64) -> np.ndarray:
  """The Keras model's fused scores [N, V] of each (non-empty) session's last prefix."""
  window = pad_sessions(sessions, model.settings.max_len)
  last = np.maximum((window != schema.PADDING_INDEX).sum(axis=1) - 1, 0)
  out = []
  for start in range(0, len(window), batch_size):
    scores = model(tf.constant(window[start:start + batch_size]), training=False)
    out.append(tf.gather(scores, last[start:start + batch_size], batch_dims=1).numpy())
  return np.concatenate(out) if out else np.zeros([0, model.num_items], np.float32)


def top_k_mismatches(reference: np.ndarray, ids: np.ndarray, scores: np.ndarray,
                     atol: float = 1e-4) -> int:
  """Places where served (ids, scores) differ from the reference scores [N, V].

  The served list must hold the reference's top-k ids in order, and its scores
  must equal the reference scores of those ids; two ids may swap only where
  their reference scores tie within `atol` (top_k's order among near-equal
  floats is not a property of the model).
  """
  k = ids.shape[1]
  top = tf.math.top_k(reference, k=k)
  ref_ids, ref_scores = top.indices.numpy(), top.values.numpy()
  served_ref = np.take_along_axis(reference, ids.astype(np.int64), axis=1)
  bad = ~np.isclose(scores, ref_scores, atol=atol, rtol=1e-5)
  bad |= ~np.isclose(served_ref, ref_scores, atol=atol, rtol=1e-5)
  del ref_ids  # ids may differ only where the scores tie (checked above)
  return int(bad.sum())


def sample_sessions(data_dir: str, manifest: dict, count: int = 32) -> List[List[int]]:
  """The first `count` sessions of the test split (valid, train if absent)."""
  for split in ("test", "valid", "train"):
    files = schema.split_files(data_dir, manifest, split) if manifest["files"].get(split) else []
    if files:
      sessions = tf.data.TFRecordDataset(files).take(count).batch(count)
      for batch in sessions.map(schema.parse_examples):
        return [list(map(int, row)) for row in batch[schema.ITEM_IDS].to_list()]
  return []


def reference_text_vectors(model: "AlterRec", sessions: Sequence[Sequence[int]],
                           tower_name: str = "text") -> np.ndarray:
  """A Keras tower's session vectors [N, d] at each session's last item (the
  text tower's unless `tower_name` says otherwise)."""
  window = pad_sessions(sessions, model.settings.max_len)
  last = np.maximum((window != schema.PADDING_INDEX).sum(axis=1) - 1, 0)
  tower = model.tower(tower_name)
  vectors = tower.prefix_vectors(tf.constant(window), tower.item_matrix(training=False))
  return tf.gather(vectors, last, batch_dims=1).numpy()


def expected_scores(model: "AlterRec", sessions: Sequence[Sequence[int]],
                    new_rows: Optional[np.ndarray] = None, exclude_session_items: bool = False,
                    cold_id_imputer: Optional["ColdIdImputer"] = None) -> np.ndarray:
  """What the export should score [N, V + new], computed from the Keras model.

  Trained items: the model's fused score. Cold-start items: (1 - alpha) /
  temperature * (text session vector . projected new row), plus, with
  `cold_id_imputer`, alpha * (ID session vector . imputed ID row). Excluded session
  items: NEG_INF. Padding: below everything.
  """
  scores = reference_scores(model, sessions)
  if new_rows is not None and len(new_rows):
    extra = cold_item_scores(model, sessions, new_rows, cold_id_imputer)
    scores = np.concatenate([scores, extra.astype(np.float32)], axis=1)
  if exclude_session_items:
    for row, items in enumerate(sessions):
      scores[row, [i for i in items if i != schema.PADDING_INDEX]] = serving.NEG_INF
  scores[:, schema.PADDING_INDEX] = serving.PADDING_SCORE
  return scores


def cold_item_scores(model: "AlterRec", sessions: Sequence[Sequence[int]], text_rows: np.ndarray,
                     cold_id_imputer: Optional["ColdIdImputer"] = None) -> np.ndarray:
  """Fused scores [N, C] of items known only by their text tower rows [C, d_text]:
  the text term, plus the ID term of their imputed ID rows with `cold_id_imputer`."""
  scales = serving.tower_scales(model.settings, model.tower_names)
  scores = scales["text"] * reference_text_vectors(model, sessions) @ text_rows.T
  if cold_id_imputer is not None:
    scores += scales["id"] * reference_text_vectors(model, sessions, "id") @ cold_id_imputer(
        text_rows).T
  return scores


def verify_export(path: str, model: "AlterRec", sessions: Sequence[Sequence[int]], k: int,
                  new_rows: Optional[np.ndarray] = None,
                  exclude_session_items: bool = False, loaded: Any = None,
                  cold_id_imputer: Optional["ColdIdImputer"] = None) -> int:
  """Loads the SavedModel at `path` (unless `loaded`); counts top-k places that
  differ from `expected_scores` (0 = the export ranks as the Keras model)."""
  # the requests are the sessions' last max_len items (what is sent is excluded)
  sessions = [list(s)[-model.settings.max_len:] for s in sessions if len(s)]
  if not sessions:
    return 0
  loaded = loaded or tf.saved_model.load(path)
  window = pad_sessions(sessions, model.settings.max_len)
  out = loaded.signatures[serving.SIGNATURE_TOP_K](
      item_ids=tf.constant(window, tf.int64), k=tf.constant(k, tf.int32))
  return top_k_mismatches(expected_scores(model, sessions, new_rows, exclude_session_items,
                                          cold_id_imputer),
                          out[serving.OUTPUT_INDICES].numpy(),
                          out[serving.OUTPUT_SCORES].numpy())


def sample_fields(titles: Sequence[str], num_fields: int, count: int = 8) -> List[List[str]]:
  """Text fields [count + 1, num_fields] to check the text signatures with: title
  i in field i % F (the other fields empty), and a last row without text."""
  rows = [["" if f != i % num_fields else str(t) for f in range(num_fields)]
          for i, t in enumerate(list(titles)[:count])]
  return rows + [[""] * num_fields]


def verify_text_signatures(loaded: Any, model: "AlterRec", text_layer: "ItemTextVectors",
                           sessions: Sequence[Sequence[int]], raw_ids: Sequence[str],
                           fields: Sequence[Sequence[str]], atol: float = 1e-4,
                           cold_id_imputer: Optional["ColdIdImputer"] = None
                           ) -> Tuple[int, int]:
  """Checks an export's text signatures against the Keras layers.

  Args:
    loaded: the loaded SavedModel.
    model: the Keras model it was exported from.
    text_layer: the `ItemTextVectors` layer the export holds.
    sessions: dense index sessions (their last max_len items are sent as raw ids).
    raw_ids: raw id of each dense index (the served vocabulary).
    fields: candidate text fields [C, F].
    cold_id_imputer: the export's `ColdIdImputer` (ID columns imputed), else None
      (ID columns zero).

  Returns:
    (values of new_item_vectors' outputs that differ from `text_layer` and the
    imputed (or zero) ID columns, scores of score_text_candidates that differ
    from `cold_item_scores`).
  """
  fields_tensor = tf.constant([list(row) for row in fields], tf.string)
  expected = text_layer(fields_tensor).numpy()
  out = loaded.signatures[serving.SIGNATURE_NEW_ITEM_VECTORS](
      **{serving.INPUT_FIELDS: fields_tensor})
  served = out[serving.OUTPUT_TEXT_ITEM_VECTORS].numpy()
  vector_mismatches = int((~np.isclose(served, expected, atol=atol, rtol=1e-5)).sum())
  rows = out[serving.OUTPUT_ITEM_VECTORS].numpy()
  text_columns = rows[:, rows.shape[1] - expected.shape[1]:]
  vector_mismatches += int((~np.isclose(text_columns, served, atol=1e-6)).sum())
  id_columns = rows[:, :rows.shape[1] - expected.shape[1]]
  expected_id = (cold_id_imputer(expected) if cold_id_imputer is not None
                 else np.zeros_like(id_columns))
  vector_mismatches += int((~np.isclose(id_columns, expected_id, atol=atol, rtol=1e-5)).sum())
  sessions = [list(s)[-model.settings.max_len:] for s in sessions if len(s)]
  if not sessions:
    return vector_mismatches, 0
  width = max(len(s) for s in sessions)
  request = np.full([len(sessions), width], b"", dtype=object)
  for row, items in enumerate(sessions):
    request[row, :len(items)] = [raw_ids[i].encode("utf-8") for i in items]
  scored = loaded.signatures[serving.SIGNATURE_SCORE_TEXT](
      **{serving.INPUT_RAW_ITEM_IDS: tf.constant(request),
         serving.INPUT_CANDIDATE_FIELDS: fields_tensor})
  reference = cold_item_scores(model, sessions, expected, cold_id_imputer)
  scores = scored[serving.OUTPUT_CANDIDATE_SCORES].numpy()
  score_mismatches = int((~np.isclose(scores, reference, atol=atol, rtol=1e-4)).sum())
  return vector_mismatches, score_mismatches


# --- before an export is published --------------------------------------------------
def verify_staged_export(target: str, model: "AlterRec", data_dir: str, manifest: dict, k: int,
                         module: serving.ServingModule, rows: Sequence[Sequence[str]],
                         new_rows: Optional[np.ndarray], exclude_session_items: bool,
                         cold_id_imputer: Optional["ColdIdImputer"],
                         text_layer: Optional["ItemTextVectors"],
                         text_info: dict) -> List[List[int]]:
  """Loads the staged SavedModel back and compares it with the Keras model.

  The top-k of test sessions (with new items and their imputed ID part), and with
  text signatures, their outputs on sample titles; records what was checked in
  `text_info["verified"]`. Returns the sessions checked.

  Raises:
    ExportError: any difference (nothing is published).
  """
  checked = sample_sessions(data_dir, manifest)
  loaded = tf.saved_model.load(target)
  mismatches = verify_export(target, model, checked, k, new_rows, exclude_session_items,
                             loaded=loaded, cold_id_imputer=cold_id_imputer)
  if mismatches:
    raise ExportError(f"the exported top-{k} differs from the Keras model's in "
                      f"{mismatches} places; nothing was exported")
  if text_layer is not None:
    fields = sample_fields([title for _, title in rows[1:]], module.num_text_fields)
    bad = verify_text_signatures(
        loaded, model, text_layer, checked, [raw_id for raw_id, _ in rows], fields,
        cold_id_imputer=cold_id_imputer)
    text_info["verified"] = {"candidates": len(fields), "sessions": len(checked)}
    if any(bad):
      raise ExportError(f"the exported text signatures differ from the Keras layers "
                        f"(new_item_vectors: {bad[0]} values, score_text_candidates: "
                        f"{bad[1]} scores); nothing was exported")
  return checked
