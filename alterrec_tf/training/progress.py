"""What a training run prints: one line per epoch, and the final test table with
the count floors of the same split beside it.

Pure functions of the run's records, so that they can be tested on hand-made
records; importing this module loads no TensorFlow (the train command prints
the table before and without it).
"""

from typing import Callable, Mapping, Optional, Sequence, Tuple

from alterrec_tf.models import names as model_names

LINE_METRICS = ("hits@20", "ndcg@20")
HEAD_ORDER = ("fused", "id", "text")


def _head_key(head: str) -> Tuple[int, str]:
  return (HEAD_ORDER.index(head) if head in HEAD_ORDER else len(HEAD_ORDER), head)


def _valid_heads(record: Mapping[str, float]) -> Sequence[str]:
  heads = {key.split("/")[1] for key in record
           if key.startswith("valid/") and key.count("/") == 2}
  return sorted(heads, key=_head_key)


def phase_words(record: Mapping[str, float],
                partner_of: Optional[Callable[[str], Optional[str]]]) -> str:
  """What trained in the epoch of `record`: "id network, uniform negatives",
  "text network, the id network's negatives", or "" for a model without phases.

  Args:
    record: one epoch's history record (`train/phase`, `train/hard_negatives`,
      `train/gated` where the model alternates).
    partner_of: the model's `partner_of` (tower -> the tower whose ranking
      gives its negatives, or None for uniform ones), or None.
  """
  if "train/phase" not in record:
    return ""
  from alterrec_tf.models.contract import ID_PHASE  # (loads TensorFlow: training has it)
  tower = "id" if int(record["train/phase"]) == ID_PHASE else "text"
  partner = partner_of(tower) if partner_of is not None else None
  hard = bool(record.get("train/hard_negatives", 0.0)) and not record.get("train/gated")
  negatives = (f"the {partner} network's negatives" if hard and partner
               else "uniform negatives")
  return f"{tower} network, {negatives}"


def epoch_line(record: Mapping[str, float], epochs: int, best_epoch: Optional[int],
               partner_of: Optional[Callable[[str], Optional[str]]] = None) -> str:
  """One line summarising an epoch.

  e.g. "epoch 3/4 | text network, the id network's negatives | valid H@20 / N@20 (%):
  fused 45.10 / 27.31, id 44.02 / 26.10, text 35.20 / 20.01 | best | 61 s + 9 s eval"

  Args:
    record: the epoch's history record (`callbacks.EpochEvaluation`): "epoch",
      "train_seconds", "eval_seconds", "valid/<head>/<metric>", "train/...".
    epochs: the run's epoch budget (--m_max).
    best_epoch: the epoch selected so far (marks this one "best" when equal).
    partner_of: see `phase_words`.
  """
  parts = [f"epoch {record['epoch']}/{epochs}"]
  phase = phase_words(record, partner_of)
  if phase:
    parts.append(phase)
  heads = [h for h in _valid_heads(record)
           if all(f"valid/{h}/{m}" in record for m in LINE_METRICS)]
  if heads:
    names = " / ".join(m.replace("hits@", "H@").replace("ndcg@", "N@") for m in LINE_METRICS)
    parts.append(f"valid {names} (%): " + ", ".join(
        f"{head} " + " / ".join(f"{100 * record[f'valid/{head}/{m}']:.2f}"
                                for m in LINE_METRICS) for head in heads))
  if best_epoch == record["epoch"]:
    parts.append("best")
  parts.append(f"{record.get('train_seconds', 0.0):.0f} s + "
               f"{record.get('eval_seconds', 0.0):.0f} s eval")
  return " | ".join(parts)


def results_table(results: Mapping, floors: Optional[Mapping[str, Mapping]] = None) -> str:
  """Markdown table of the test metrics (%) of every head of `results` at its
  selected epoch, then one row per count floor of the same split.

  Args:
    results: the run's results.json content ("model", "test": {head: {metric}}).
    floors: {floor model name: its results} (the floors' one head, "fused").
  """
  test = results.get("test", {})
  if not test:
    return "(no test split)"
  heads = sorted(test, key=_head_key)
  metrics = list(dict.fromkeys(m for head in heads for m in test[head]))  # fused's first
  model = results.get("model", "")
  lines = ["| model | head | " + " | ".join(metrics) + " |",
           "|---|---" + "|---" * len(metrics) + "|"]

  def row(name: str, head: str, values: Mapping[str, float]) -> str:
    # e.g. tfrs_hits@K only where a fused item matrix exists: "-" elsewhere
    return (f"| {name} | {head} | " + " | ".join(
        f"{100 * values[m]:.2f}" if m in values else "-" for m in metrics) + " |")

  for head in heads:
    lines.append(row(model_names.display_name(model) if model else "", head, test[head]))
  for floor, floor_results in (floors or {}).items():
    values = floor_results.get("test", {}).get("fused", {})
    lines.append(row(model_names.display_name(floor) + " (floor)", "-", values))
  return "\n".join(lines)
