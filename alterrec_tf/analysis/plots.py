"""The report's figures (matplotlib, Agg): Figure 3 (NFRec and its ID / text
parts), Figure 5 (AlterRec and its towers) and Figure 6 (long-tail groups).

Each function returns whether it drew its figure (it skips models that did not run).
matplotlib is imported on first use: it is the optional `report` extra, and
`report` writes its tables without it.
"""

from types import ModuleType
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from alterrec_tf.analysis import long_tail
from alterrec_tf.models import names as model_names

if TYPE_CHECKING:
  from matplotlib.axes import Axes
  from matplotlib.figure import Figure

  from alterrec_tf.analysis.runs import Run


def epoch_curve(model_runs: Sequence["Run"], key: str) -> Tuple[np.ndarray, np.ndarray]:
  """Epochs and the mean over seeds of history[key] at each epoch (seeds that
  reached it)."""
  values: dict = {}
  for run in model_runs:
    for record in run.history:
      if key in record and record.get("epoch", 0) > 0:
        values.setdefault(record["epoch"], []).append(record[key])
  epochs = sorted(values)
  return np.array(epochs), np.array([np.mean(values[e]) for e in epochs])


def _pyplot() -> ModuleType:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _integer_epochs(axis: "Axes") -> None:
  from matplotlib.ticker import MaxNLocator
  axis.xaxis.set_major_locator(MaxNLocator(integer=True))
  axis.set_xlabel("epoch")


def _seeds_note(model_runs: Sequence["Run"], key: str = "test/fused/hits@20") -> str:
  """"mean of N seeds", counting the runs that logged `key` per epoch (the
  experiments grid ranks the test split every epoch for the first seed only)."""
  count = sum(any(key in record for record in run.history) for run in model_runs)
  return f"mean of {count} seed{'s' if count != 1 else ''}"


def _save(plt: ModuleType, fig: "Figure", path: str,
          rect: Optional[Tuple[float, float, float, float]] = None) -> None:
  fig.tight_layout(rect=rect)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _plot_parts(axis: "Axes", runs: Sequence["Run"], name: str, keys: Sequence[str],
                scale: float = 1.0, fused_label: Optional[str] = None) -> None:
  """Draws a model's fused curve (solid black) and its ID / text parts (dashed
  red / green) from the history keys (fused, id, text), mean over seeds."""
  labels = (fused_label or name, f"ID in {name}", f"text in {name}")
  styles: Tuple[Dict[str, Any], ...] = (
      dict(color="black", lw=2.2), dict(color="tab:red", ls="--", lw=1.8),
      dict(color="tab:green", ls="--", lw=1.8))
  for key, label, style in zip(keys, labels, styles):
    epochs, values = epoch_curve(runs, key)
    axis.plot(epochs, scale * values, marker="o", ms=3, label=label, **style)


def plot_nfrec(grouped: Mapping[str, Sequence["Run"]], path: str,
               dataset: str = "") -> Optional[str]:
  """Figure 3: NFRec (concat, else sum) and its ID / text parts per epoch."""
  model = next((m for m in ("nfrec_concat", "nfrec_sum") if m in grouped), None)
  if model is None:
    return None
  plt = _pyplot()
  runs = grouped[model]
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
  name = model_names.display_name(model)
  _plot_parts(left, runs, name, ("test/fused/hits@20", "test/id/hits@20",
                                  "test/text/hits@20"), scale=100)
  for other, color in (("id_only", "tab:red"), ("text_only", "tab:green")):
    if other in grouped:
      epochs, values = epoch_curve(grouped[other], "test/fused/hits@20")
      label = "ID only" if other == "id_only" else "text only"
      left.plot(epochs, 100 * values, color=color, lw=1.2, alpha=0.6,
                label=f"{label} (AlterRec ablation, trained alone)")
  _integer_epochs(left)
  left.set_ylabel("test Hits@20 (%)")
  left.set_title("Test Hits@20")
  left.grid(alpha=0.3)
  left.legend(fontsize=9)
  _plot_parts(right, runs, name, ("train/loss", "train/id_loss", "train/text_loss"))
  _integer_epochs(right)
  right.set_ylabel("training cross-entropy (full softmax)")
  right.set_title("Training loss (mean over the epoch's batches)")
  right.grid(alpha=0.3)
  right.legend(fontsize=9)
  fig.suptitle(f"{name} and its ID / text score parts (Eq. 14){' on ' + dataset if dataset else ''}"
               f" (test: {_seeds_note(runs)}; loss: {_seeds_note(runs, 'train/loss')})")
  _save(plt, fig, path)
  return model


def plot_alterrec(grouped: Mapping[str, Sequence["Run"]], path: str,
                  dataset: str = "") -> Optional[str]:
  """Figure 5: AlterRec (else AlterRec_aug) and its ID / text scores per epoch,
  background = which tower trained in that epoch (hatched: random negatives)."""
  model = next((m for m in ("alterrec", "alterrec_aug") if m in grouped), None)
  if model is None:
    return None
  plt = _pyplot()
  from matplotlib.patches import Patch
  runs = grouped[model]
  fig, axis = plt.subplots(figsize=(11, 4.8))
  phases = {h["epoch"]: (h.get("train/phase"), h.get("train/hard_negatives"))
            for h in runs[0].history if h.get("epoch", 0) > 0}
  for epoch, (phase, hard) in phases.items():
    if phase is None:
      continue
    color = "tab:red" if phase == 0 else "tab:green"
    axis.axvspan(epoch - 0.5, epoch + 0.5, color=color, alpha=0.08, lw=0,
                 hatch=None if hard else "//")
  name = model_names.display_name(model)
  _plot_parts(axis, runs, name, ("test/fused/hits@20", "test/id/hits@20",
                                  "test/text/hits@20"), scale=100,
              fused_label=f"{name} (fused, Eq. 12)")
  handles, _ = axis.get_legend_handles_labels()
  handles += [Patch(color="tab:red", alpha=0.15, label="epoch trains the ID network"),
              Patch(color="tab:green", alpha=0.15, label="epoch trains the text network"),
              Patch(facecolor="white", edgecolor="gray", hatch="//",
                    label="random negatives (warm-up)")]
  axis.legend(handles=handles, fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  _integer_epochs(axis)
  axis.set_ylabel("test Hits@20 (%)")
  axis.grid(alpha=0.3)
  axis.set_title(f"{name}: fused score and its ID / text networks"
                 f"{' on ' + dataset if dataset else ''}, {_seeds_note(runs)}")
  _save(plt, fig, path)
  return model


def plot_long_tail(analysis: Optional[dict], path: str, dataset: str = "") -> bool:
  """Figure 6: improvement over the reference per popularity group (or, without
  the reference model, each model's metric per group), share of each group as bars."""
  if not analysis or not analysis["metrics"]:
    return False
  plt = _pyplot()
  labels = analysis["labels"]
  x = np.arange(len(labels))
  fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
  relative = bool(analysis["improvement"])
  lines = analysis["improvement"] if relative else analysis["metrics"]
  models = sorted(lines, key=model_names.order_key)
  markers = "osD^vP*Xh<>"
  reference = model_names.display_name(analysis["reference"]) if relative else None
  for axis, metric in zip(axes, long_tail.METRICS):
    bars = axis.twinx()
    bars.bar(x, 100 * np.array(analysis["share"]), width=0.6, color="lightgray",
             label="share of test prefixes")
    bars.set_ylabel("share of test prefixes (%)", color="dimgray")
    bars.set_ylim(0, max(100 * max(analysis["share"]) * 2.2, 1))
    axis.set_zorder(bars.get_zorder() + 1)
    axis.patch.set_visible(False)
    values = {m: 100 * np.array(lines[m][metric], dtype=np.float64) for m in models}
    for i, model in enumerate(models):
      axis.plot(x, values[model], marker=markers[i % len(markers)], lw=1.6,
                label=model_names.display_name(model))
    name = "Hits@20" if metric == "hits@20" else "NDCG@20"
    if relative:
      axis.axhline(0.0, color="black", lw=0.8)
      finite = np.concatenate([v[np.isfinite(v)] for v in values.values()] + [np.zeros(1)])
      if np.abs(finite).max() > 500:  # a near-zero reference group: keep the rest readable
        axis.set_yscale("symlog", linthresh=100)
      axis.set_ylabel(f"{name} improvement over {reference} (%)")
    else:
      axis.set_ylabel(f"{name} (%)")
    axis.set_xticks(x)
    axis.set_xticklabels(labels)
    axis.set_xlabel("training occurrences of the target item")
    axis.set_title(name)
    axis.grid(alpha=0.3)
  handles, names = axes[0].get_legend_handles_labels()
  handles.append(plt.Rectangle((0, 0), 1, 1, color="lightgray"))
  names.append("share of test prefixes (bars, right axis)")
  fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=9,
             frameon=False)
  title = (f"Long tail: improvement over {reference} by target popularity" if relative
           else "Long tail: metrics by target popularity")
  fig.suptitle(title + (f" on {dataset}" if dataset else ""))
  _save(plt, fig, path, rect=(0, 0.06 + 0.035 * ((len(names) - 1) // 4), 1, 1))
  return True


# --- the whole report ---------------------------------------------------------------------
