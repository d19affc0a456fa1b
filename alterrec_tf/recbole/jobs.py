"""What one RecBole run is asked to do: the job file `peers/recbole_run.py` reads.

The models' settings come from our own flags (a dataset's flagfile), so a
RecBole model trains on the budget ours do (`model_config`):

  ours                          RecBole
  --embedding_dim=d             hidden_size / embedding_size = d (GRU4Rec: both)
  --num_layers, --num_heads     n_layers, n_heads (Transformers: SASRec, BERT4Rec,
                                FDSA, S3Rec, CORE's encoder); GRU4Rec keeps 1 layer
  --dropout                     hidden_dropout_prob = attn_dropout_prob (GRU4Rec:
                                dropout_prob); CORE's session/item dropout stay 0.2
  feed-forward 4d (ReLU)        inner_size = 4d (RecBole's GELU kept)
  --learning_rate               learning_rate (Adam)
  --batch_size windows          train_batch_size = as many prefixes per step as our
                                windows hold on average (`prefixes_per_step`)
  --m_max                       epochs
  --early_stopping_patience p   stopping_step = p - 1 (RecBole stops after
                                stopping_step + 1 epochs without gain, ours after p)
  selection: validation Hits@20 valid_metric = Hit@20
  --seed                        seed

Everything else is RecBole's default for the model (its properties/model/*.yaml);
`extra` entries (--peers_config) override any of it.
"""

import hashlib
import json
from typing import Any, Dict, Optional

# Our names of RecBole's models, in report order.
MODELS = ("sasrec", "gru4rec", "bert4rec", "srgnn", "core", "fdsa", "s3rec")
# Those that read item attributes (the export's text codes).
NEEDS_TEXT_CODES = ("fdsa", "s3rec")
RECBOLE_VERSION = "1.2.1"


def model_config(model: str, settings: Any, train_batch_size: int, eval_batch_size: int,
                 s3rec_pretrain_epochs: int = 10,
                 extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """RecBole config entries of one model (the job's "config").

  Args:
    model: one of `MODELS`.
    settings: our training settings (a `config.TrainConfig`: embedding_dim,
      num_layers, num_heads, dropout, learning_rate, m_max,
      early_stopping_patience, seed).
    train_batch_size: rows (prefixes) per training step.
    eval_batch_size: rows per full-catalogue scoring batch.
    s3rec_pretrain_epochs: S3Rec's pre-training epochs (RecBole's default is 500).
    extra: entries that override the result (--peers_config).

  Returns:
    A JSON-serialisable dict.
  """
  if model not in MODELS:
    raise ValueError(f"unknown RecBole model {model!r}; choose from {', '.join(MODELS)}")
  d, dropout = settings.embedding_dim, settings.dropout
  entries: Dict[str, Any] = {
      "seed": settings.seed, "epochs": settings.m_max,
      "stopping_step": max(settings.early_stopping_patience - 1, 0),
      "learning_rate": settings.learning_rate, "train_batch_size": train_batch_size,
      "eval_batch_size": eval_batch_size}
  transformer = {"n_layers": settings.num_layers, "n_heads": settings.num_heads,
                 "inner_size": 4 * d, "hidden_dropout_prob": dropout,
                 "attn_dropout_prob": dropout}
  if model in ("sasrec", "bert4rec", "fdsa", "s3rec"):
    entries.update(transformer, hidden_size=d)
  if model == "core":
    entries.update(transformer, embedding_size=d)
  if model == "gru4rec":
    entries.update(embedding_size=d, hidden_size=d, dropout_prob=dropout)
  if model == "srgnn":
    entries.update(embedding_size=d)
  if model == "fdsa":
    entries.update(selected_features=["text_codes"], pooling_mode="mean")
  if model == "s3rec":
    entries.update(item_attribute="text_codes", pretrain_epochs=s3rec_pretrain_epochs,
                   save_step=s3rec_pretrain_epochs + 1)  # (its own checkpoints: never)
  entries.update(extra or {})
  return entries


def prefixes_per_step(batch_size: int, train_prefixes: int, train_windows: int) -> int:
  """Our training batch in prefixes: `batch_size` windows hold on average
  batch_size * prefixes / windows scored prefixes (rounded, at least 1)."""
  return max(1, round(batch_size * train_prefixes / max(train_windows, 1)))


def job_id(job: Dict[str, Any]) -> str:
  """Hash of what decides a RecBole process's output: the model, its config and
  this exact export (`export_id`: the data's bytes). It ties a work folder's
  lists and resume file to the export they were made from."""
  key = {name: job[name] for name in ("model", "config", "export_id", "top_k")}
  return _hash(key)


def export_settings(export: Dict[str, Any], text_codes: bool) -> Dict[str, Any]:
  """What an export adds to the data, as far as a model reads it: the export
  version, max_len and, for a model that reads item attributes, the text-code
  settings (subspaces, codes, k-means seed and iterations)."""
  return {"version": export["version"], "max_len": export["max_len"],
          "text_codes": export.get("text_codes") if text_codes else None}


def settings_id(job: Dict[str, Any], export: Dict[str, Any]) -> str:
  """Hash of what decides a run's result apart from the data: the model, its
  config, top_k and the export's settings (`export_settings`).

  Unlike `job_id` it names no bytes of the data, so two machines whose CPUs
  round the text table differently agree on it; whether a finished run was
  trained on the same data is checked apart, by its recorded `data_identity`
  (`lists.finished_run_conflicts`).
  """
  key = {name: job[name] for name in ("model", "config", "top_k")}
  key["export"] = export_settings(export, bool(job.get("text_codes")))
  return _hash(key)


def _hash(key: Dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()
