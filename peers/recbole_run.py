"""Trains one RecBole 1.2.1 model on an atomic export and writes its top-k lists.

Runs only in the peers virtual environment (`make peers`: .venv-peers, with
numpy 1.26, pandas 1.5, torch and recbole): it imports recbole, torch, numpy,
pandas and the standard library, never alterrec_tf or TensorFlow.

  .venv-peers/bin/python peers/recbole_run.py <job.json>

The job (written by `python -m alterrec_tf.peers`) names the atomic folder
(`alterrec_tf.recbole.atomic`), the RecBole model, its config entries, the
output folder and the thread count. Only recbole.config, recbole.data,
recbole.utils and the model's trainer are used (recbole.quick_start imports
ray). Steps:

1. `Config` + `create_dataset` + `data_preparation` read the benchmark files
   (train / valid / test rows kept in file order) and the `.item` catalogue.
2. The model's `full_sort_predict` is wrapped to score out the items of the
   row's history (our seen-item rule: the items the model reads, its last
   max_len; padding is never ranked), so RecBole's validation, and with it its
   early stopping, sees the protocol we report.
3. RecBole's trainer fits with validation-based early stopping (`fit`,
   `valid_metric`, `stopping_step`); the best epoch's weights are kept in
   memory (the trainer's checkpoint file is not used: torch >= 2.6 refuses to
   load its pickled config by default). S3Rec pre-trains first (its
   `S3RecTrainer`), then fine-tunes from those weights. After every epoch the
   whole training state (weights, optimizer, early-stopping counters, best
   weights, the epoch log, the dropout and shuffling generators) is written to
   `<output_dir>/resume.pt` (tensors only, replaced atomically), so a killed
   run started again with the same job goes on after its last finished epoch,
   as if it had not stopped; S3Rec's pre-trained weights are reused likewise.
   A checkpoint of another job is set aside, not resumed.
4. With the best weights, every valid and test row gets its top-k items over
   the whole catalogue, mapped from RecBole's internal ids back to our item
   indices, in our row order (checked against the export's targets).

Output, written under a temporary name and renamed to `<output_dir>/result`
(a killed run leaves no result, only its resume.pt): topk_valid.npy,
topk_test.npy (int32 [rows, k], our item indices), history.json (per epoch:
loss, RecBole's validation figures, seconds) and run.json (RecBole's final
config, best epoch, timings, versions, the epoch a resumed run went on from).
RecBole's log goes to `<output_dir>/recbole.log`.
"""

import json
import logging
import os
import shutil
import sys
import time
from typing import Any, Dict, List

import numpy as np

RESULT_DIR = "result"
RESUME_FILE = "resume.pt"
S3REC_PRETRAINED = "s3rec_pretrained.pth"
# RecBole model classes by our names (the peers command's --models).
MODEL_CLASSES = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "bert4rec": "BERT4Rec",
                 "srgnn": "SRGNN", "core": "CORE", "fdsa": "FDSA", "s3rec": "S3Rec"}


def internal_to_ours(id_tokens) -> np.ndarray:
  """Our item index of every RecBole internal item id: int64 [item_num].

  Args:
    id_tokens: RecBole's `field2id_token['item_id']`: the token of each internal
      id, '[PAD]' at 0, our indices as decimal strings after it.
  """
  return np.array([0 if token == "[PAD]" else int(token) for token in id_tokens], np.int64)


def mask_seen(scores, item_seq):
  """Scores the row's history out (our seen-item rule) and padding (id 0).

  Args:
    scores: float tensor [B, item_num] of internal ids.
    item_seq: long tensor [B, L], right-padded with 0.

  Returns:
    `scores` with -inf at every history item and at column 0.
  """
  scores = scores.scatter(1, item_seq, float("-inf"))
  scores[:, 0] = float("-inf")
  return scores


def top_k_ours(scores, k: int, to_ours: np.ndarray) -> np.ndarray:
  """Top-k of each row in our item indices: int32 [B, k] (ties as torch.topk)."""
  import torch
  indices = torch.topk(scores, k, dim=1).indices.cpu().numpy()
  return to_ours[indices].astype(np.int32)


def base_config(job: Dict[str, Any]) -> Dict[str, Any]:
  """RecBole's config for the export: its files, fields, protocol and outputs."""
  item_columns = ["item_id"] + (["text_codes"] if job.get("text_codes") else [])
  work = job["output_dir"]
  return {
      "data_path": job["data_path"], "benchmark_filename": ["train", "valid", "test"],
      "USER_ID_FIELD": "prefix_id", "ITEM_ID_FIELD": "item_id",
      "load_col": {"inter": ["prefix_id", "item_id_list", "item_id"], "item": item_columns},
      "alias_of_item_id": ["item_id_list"], "MAX_ITEM_LIST_LENGTH": job["max_len"],
      "seq_len": {"item_id_list": job["max_len"]},
      "repeatable": True, "train_neg_sample_args": None, "metrics": ["Hit", "NDCG"],
      "topk": [10, 20], "valid_metric": "Hit@20", "show_progress": False, "save_dataset": False,
      "save_dataloaders": False, "log_wandb": False, "worker": 0,
      "checkpoint_dir": os.path.join(work, "saved"), "reproducibility": True,
  }


def _setup_logging(output_dir: str) -> None:
  handler = logging.FileHandler(os.path.join(output_dir, "recbole.log"), mode="a")
  handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
  root = logging.getLogger()
  root.handlers[:] = [handler]
  root.setLevel(logging.INFO)


def _num(value) -> float:
  return float(value.item()) if hasattr(value, "item") else float(value)


def job_key(job: Dict[str, Any]) -> str:
  """The job as one canonical string: a checkpoint resumes only the job it was made by."""
  return json.dumps(job, sort_keys=True)


def save_atomic(state: Dict[str, Any], path: str) -> None:
  """torch.save to a temporary name, then rename: a kill leaves the old file whole."""
  import torch
  staging = path + ".tmp"
  torch.save(state, staging)
  os.replace(staging, path)


class EpochLog:
  """Wraps a RecBole trainer's epoch methods to time them, keep the best weights
  and checkpoint the training state after every validated epoch.

  Args:
    trainer: RecBole trainer (`optimizer`, `cur_step`, `stopping_step`,
      `best_valid_score`, `start_epoch`, `epochs`, `_train_epoch`, `_valid_epoch`).
    model: the trainer's torch model.
    label: model name for the progress lines.
    checkpoint: path of the resume file; empty: no checkpoints.
    key: `job_key` of the job (stored in and checked against the checkpoint).
    shuffle_generator: the training loader's `torch.Generator` (its state is
      saved so a resumed epoch sees the order an uninterrupted one would).
  """

  def __init__(self, trainer, model, label: str, checkpoint: str = "", key: str = "",
               shuffle_generator=None):
    self.records: List[Dict[str, Any]] = []
    self.best_state = None
    self.best_epoch = 0
    self.resumed_after = 0
    self.model, self.trainer, self.label = model, trainer, label
    self.checkpoint, self.key, self.shuffle_generator = checkpoint, key, shuffle_generator
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def timed_train(train_data, epoch_idx, *args, **kwargs):
      start = time.perf_counter()
      loss = train_epoch(train_data, epoch_idx, *args, **kwargs)
      total = _num(sum(loss) if isinstance(loss, tuple) else loss)
      self.records.append({"epoch": epoch_idx + 1, "train_seconds": time.perf_counter() - start,
                           "train/loss": total / max(len(train_data), 1)})  # (per batch)
      return loss

    def timed_valid(valid_data, *args, **kwargs):
      start = time.perf_counter()
      score, result = valid_epoch(valid_data, *args, **kwargs)
      record = self.records[-1]
      record["eval_seconds"] = time.perf_counter() - start
      record.update({f"valid/recbole/{key}": _num(value) for key, value in result.items()})
      return score, result

    trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid

  def after_validation(self, epoch_idx: int, valid_score: float) -> None:
    """fit's callback_fn: copies the weights when this epoch is the best so far."""
    import copy
    record = self.records[-1]
    best = self.trainer.cur_step == 0  # early_stopping resets it on a new best
    print(f"  {self.label} epoch {epoch_idx + 1}: loss {record['train/loss']:.4f}, "
          f"valid Hits@20 {100 * valid_score:.2f}{' (best)' if best else ''}, "
          f"{record['train_seconds']:.0f}+{record.get('eval_seconds', 0):.0f} s", flush=True)
    if best:
      self.best_epoch = epoch_idx + 1
      self.best_state = copy.deepcopy(self.model.state_dict())
    if self.checkpoint:
      self.save(epoch_idx)

  def save(self, epoch_idx: int) -> None:
    """Writes the state after epoch `epoch_idx` (0-based) to the resume file."""
    import torch
    trainer = self.trainer
    state = {
        "job": self.key, "epoch": epoch_idx + 1,
        # fit stops after this epoch (early stopping): a resume must not train on
        "stopped": bool(trainer.cur_step > trainer.stopping_step),
        "model": self.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
        "cur_step": int(trainer.cur_step), "best_valid_score": float(trainer.best_valid_score),
        "best_epoch": self.best_epoch, "best_state": self.best_state,
        "records": json.dumps(self.records), "torch_rng": torch.get_rng_state()}
    if self.shuffle_generator is not None:
      state["shuffle_rng"] = self.shuffle_generator.get_state()
    save_atomic(state, self.checkpoint)

  def restore(self) -> int:
    """Loads the resume file of this job, if any; returns the epochs it holds.

    The trainer then starts at the next epoch (or trains no more when early
    stopping had ended the run). A file of another job is renamed
    `<resume file>.other-job`, and training starts from the beginning.
    """
    import torch
    if not self.checkpoint or not os.path.isfile(self.checkpoint):
      return 0
    state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
    if state.get("job") != self.key:
      os.replace(self.checkpoint, self.checkpoint + ".other-job")
      print(f"  {self.label}: {self.checkpoint} was written by another job; set aside "
            f"(.other-job), training from the start", flush=True)
      return 0
    trainer = self.trainer
    self.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.cur_step, trainer.best_valid_score = state["cur_step"], state["best_valid_score"]
    trainer.start_epoch = trainer.epochs if state["stopped"] else state["epoch"]
    self.best_epoch, self.best_state = state["best_epoch"], state["best_state"]
    self.records = json.loads(state["records"])
    torch.set_rng_state(state["torch_rng"])
    if self.shuffle_generator is not None and "shuffle_rng" in state:
      self.shuffle_generator.set_state(state["shuffle_rng"])
    self.resumed_after = state["epoch"]
    print(f"  {self.label}: resumed after epoch {state['epoch']} (best so far: epoch "
          f"{self.best_epoch}{', early stopping had ended it' if state['stopped'] else ''})",
          flush=True)
    return state["epoch"]


def rank_split(model, loader, k: int, to_ours: np.ndarray, iid_field: str, device):
  """Top-k of every row of a full-sort loader, in row order, and its targets (ours)."""
  import torch
  lists, targets = [], []
  model.eval()
  with torch.no_grad():
    for batch in loader:
      interaction = batch[0].to(device)
      scores = model.full_sort_predict(interaction).view(len(interaction), -1)
      lists.append(top_k_ours(scores, k, to_ours))
      targets.append(to_ours[interaction[iid_field].cpu().numpy()])
  return np.concatenate(lists), np.concatenate(targets).astype(np.int32)


def _with_seen_items_scored_out(model) -> None:
  """Instance-level wrapper of full_sort_predict (used by RecBole's evaluation and ours)."""
  predict = model.full_sort_predict

  def masked(interaction):
    scores = predict(interaction)
    return mask_seen(scores.view(len(interaction), -1), interaction[model.ITEM_SEQ])

  model.full_sort_predict = masked


def _json_value(value):
  try:
    json.dumps(value)
    return value
  except TypeError:
    return str(value)


def _fit(config, train_data, valid_data, label, checkpoint: str = "", key: str = ""):
  """Builds the model and fits it with RecBole's trainer, from the resume file
  where one of this job exists: (model, EpochLog)."""
  from recbole.utils import get_model, get_trainer
  model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
  _with_seen_items_scored_out(model)
  trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
  log = EpochLog(trainer, model, label, checkpoint, key,
                 getattr(train_data, "generator", None))
  log.restore()
  trainer.fit(train_data, valid_data, verbose=True, saved=False, show_progress=False,
              callback_fn=log.after_validation)
  if log.best_state is None:
    raise RuntimeError(f"{label}: no validation epoch ran (epochs={config['epochs']})")
  model.load_state_dict(log.best_state)
  return model, log


def _pretrain_s3rec(config, train_data, output_dir, key: str) -> str:
  """S3Rec's pre-training stage; returns the path of the pre-trained weights.

  Weights this job pre-trained before (a resumed run) are reused, with the
  random state that followed them."""
  import torch
  from recbole.model.sequential_recommender import S3Rec
  from recbole.utils import get_trainer
  path = os.path.join(output_dir, S3REC_PRETRAINED)
  if os.path.isfile(path):
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("job") == key:
      torch.set_rng_state(saved["torch_rng"])
      print(f"  S3Rec pre-training: reused {path}", flush=True)
      config["train_stage"], config["pre_model_path"] = "finetune", path
      return path
  config["train_stage"] = "pretrain"
  model = S3Rec(config, train_data._dataset).to(config["device"])
  trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
  start = time.perf_counter()
  trainer.pretrain(train_data, verbose=True, show_progress=False)
  print(f"  S3Rec pre-training: {config['pretrain_epochs']} epochs, "
        f"{time.perf_counter() - start:.0f} s", flush=True)
  # tensors only (loads with weights_only); S3Rec reads "state_dict"
  save_atomic({"state_dict": model.state_dict(), "job": key,
               "torch_rng": torch.get_rng_state()}, path)
  config["train_stage"], config["pre_model_path"] = "finetune", path
  return path


def run(job: Dict[str, Any]) -> Dict[str, Any]:
  """Does steps 1-4 of the module docstring; returns run.json's content."""
  started = time.perf_counter()
  output_dir = job["output_dir"]
  os.makedirs(output_dir, exist_ok=True)
  _setup_logging(output_dir)
  import torch
  torch.set_num_threads(int(job.get("threads", 1)))
  sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value arguments from sys.argv
  import recbole
  from recbole.config import Config
  from recbole.data import create_dataset, data_preparation
  from recbole.utils import init_seed
  model_class = MODEL_CLASSES[job["model"]]
  config = Config(model=model_class, dataset=job["dataset"],
                  config_dict={**base_config(job), **job["config"]})
  init_seed(config["seed"], config["reproducibility"])
  dataset = create_dataset(config)
  train_data, valid_data, test_data = data_preparation(config, dataset)
  to_ours = internal_to_ours(dataset.field2id_token[dataset.iid_field])
  catalogue = set(range(1, job["num_items"]))
  if set(to_ours[1:].tolist()) != catalogue or len(to_ours) != job["num_items"]:
    raise RuntimeError(f"RecBole's catalogue ({len(to_ours) - 1} items) is not the export's "
                       f"{job['num_items'] - 1}: is the .item file complete?")
  loaded = time.perf_counter()
  print(f"  {model_class}: {len(train_data._dataset)} training rows, {len(to_ours) - 1} items, "
        f"device {config['device']}, {torch.get_num_threads()} threads", flush=True)
  key = job_key(job)
  if model_class == "S3Rec":
    _pretrain_s3rec(config, train_data, output_dir, key)
  model, log = _fit(config, train_data, valid_data, model_class,
                    os.path.join(output_dir, RESUME_FILE), key)
  trained = time.perf_counter()
  k = int(job.get("top_k", 20))
  with np.load(job["targets"], allow_pickle=False) as expected:
    lists = {}
    for split, loader in (("valid", valid_data), ("test", test_data)):
      lists[split], targets = rank_split(model, loader, k, to_ours, dataset.iid_field,
                                           config["device"])
      if not np.array_equal(targets, expected[split]):
        raise RuntimeError(f"{split}: RecBole's rows are not in the export's order "
                           "(targets differ): nothing written")
  ranked = time.perf_counter()
  staging = os.path.join(output_dir, ".result-staging")
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  for split, top in lists.items():
    np.save(os.path.join(staging, f"topk_{split}.npy"), top)
  with open(os.path.join(staging, "history.json"), "w", encoding="utf-8") as f:
    json.dump(log.records, f, indent=1)
  info = {
      "source": f"RecBole {recbole.__version__}", "recbole_version": recbole.__version__,
      "torch_version": torch.__version__, "numpy_version": np.__version__,
      "model": model_class, "best_epoch": log.best_epoch, "epochs_run": len(log.records),
      "train_rows": len(train_data._dataset), "device": str(config["device"]),
      "threads": torch.get_num_threads(), "top_k": k,
      "num_parameters": int(sum(p.numel() for p in model.parameters())),
      # this process's; a resumed run's earlier epochs are in history.json
      "seconds": {"load": loaded - started, "train": trained - loaded,
                  "rank": ranked - trained, "wall": time.perf_counter() - started},
      "resumed_after_epoch": log.resumed_after,
      "train_seconds_all_epochs": sum(r.get("train_seconds", 0.0) for r in log.records),
      "config": {name: _json_value(config[name]) for name in sorted(config.final_config_dict)},
  }
  with open(os.path.join(staging, "run.json"), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1, sort_keys=True)
  final = os.path.join(output_dir, RESULT_DIR)
  shutil.rmtree(final, ignore_errors=True)
  os.replace(staging, final)
  if os.path.isfile(os.path.join(output_dir, RESUME_FILE)):
    os.remove(os.path.join(output_dir, RESUME_FILE))  # the result holds what it resumed
  return info


def main(argv: List[str]) -> int:
  if len(argv) != 2:
    print("usage: recbole_run.py <job.json>", file=sys.stderr)
    return 2
  with open(argv[1], encoding="utf-8") as f:
    job = json.load(f)
  info = run(job)
  print(f"  {info['model']}: best epoch {info['best_epoch']} of {info['epochs_run']}, "
        f"{info['seconds']['wall']:.0f} s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
