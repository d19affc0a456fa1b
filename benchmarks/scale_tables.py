"""Tables of the scale benchmark (`benchmarks/scale.py`), from its result alone.

The cost ratio per doubling between consecutive points of one axis a -> b is
(c_b / c_a) ** (1 / log2(n_b / n_a)), c = seconds per prefix (or bytes of peak
RSS), n = items or sessions: 1.0 = does not grow, 2.0 = grows in proportion.
`scale.py --from_json=...` prints a saved result with these functions.
"""

import math

from benchmarks import common


def both_towers(training, kind):
  """Prefixes/s of an epoch split evenly between the ID and the text tower's
  `kind` ("random" / "hard") phase: 2 / (1/r_id + 1/r_text)."""
  rates = [training["phases"][f"{t}/{kind}"]["prefixes_per_second"] for t in ("id", "text")]
  return 2.0 / sum(1.0 / r for r in rates)


def per_doubling(a, b, size_a, size_b) -> float:
  """(b / a) ** (1 / log2(size_b / size_a)); nan when undefined."""
  if not a or not b or a != a or b != b or size_a == size_b:
    return float("nan")
  return (b / a) ** (1.0 / math.log2(size_b / size_a))


def costs(point) -> dict:
  """Per-prefix seconds and bytes of a point, the quantities compared per doubling."""
  out = {"eval": 1.0 / point["evaluation"]["prefixes_per_second"],
         "rss_eval": point["max_rss_after_evaluation_bytes"], "rss_end": point["max_rss_bytes"]}
  training = point.get("training")
  if training:
    out["random"] = 1.0 / both_towers(training, "random")
    out["hard"] = 1.0 / both_towers(training, "hard")
    out["epoch"] = training["split_prefixes"] * (out["random"] + out["hard"]) / 2
    out["split_load"] = training["split_load_seconds"]
  return out


def doubling_rows(points, base_items: int, base_sessions: int) -> list:
  """One row per consecutive pair of points on each axis: the items axis holds
  the points with `base_sessions` sessions, the sessions axis those with
  `base_items` items."""
  axes = (("items", lambda p: p["sessions"] == base_sessions, "items"),
          ("sessions", lambda p: p["items"] == base_items, "sessions"))
  rows = []
  for axis, on_axis, key in axes:
    line = sorted((p for p in points if on_axis(p) and "error" not in p), key=lambda p: p[key])
    for a, b in zip(line, line[1:]):
      ca, cb = costs(a), costs(b)
      ratios = {name: per_doubling(ca.get(name), cb.get(name), a[key], b[key])
                for name in ("random", "hard", "eval", "epoch", "split_load", "rss_eval",
                             "rss_end")}
      rows.append({"axis": axis, "from": a[key], "to": b[key],
                   "doublings": math.log2(b[key] / a[key]), "per_doubling": ratios})
  return rows


def _ratio(x) -> str:
  return "-" if x != x else f"x{x:.2f}"


def caption(result) -> str:
  """What the points table measured: model, data, machine, budgets."""
  config, data = result["config"], result["data"]
  cap = result.get("eval_prefix_items", 6e8)
  return (
      f"Scale: {config['model']}, d={config['embedding_dim']}, ID {config['id_encoder']}, "
      f"text {config['text_encoder']} ({config['num_layers']}x{config['num_heads']}), "
      f"k1={config['k1']}, k2={config['k2']} (items-2 when fewer), {config['batch_size']} "
      f"windows/batch (training), {config['eval_batch_size']} (evaluation), "
      f"--score_chunk_size={config['score_chunk_size']}; synthetic data: Zipf exponent "
      f"{data['exponent']:g}, Online-Retail-like session lengths (mean ~26, capped at "
      f"{data['max_length']}), {data['text_dim']}-d random text. "
      f"{common.machine_line(result['machine'])}, {result['load_average_end'][0]:.1f} at end. "
      f"Training: {result['train_steps']} timed steps per phase "
      f"({result.get('reference_train_steps', 6)} at the hard-vs-random point), "
      f"{result['warmup']} untimed before the first; 'random' and 'hard' = an epoch split "
      f"evenly between the ID and the text tower's phase (ID / text in brackets). "
      f"Evaluation: up to {result['eval_prefixes']:,} test prefixes"
      + (f" (at most {cap:,.0f} / items)" if cap else "")
      + f", in calls of at most {config['eval_batch_size']} windows. Peak RSS: getrusage of "
      f"the point's own process after evaluation / at the end. Figures are indicative: the "
      f"machine was shared.")


def print_tables(result):
  """The Markdown tables of a grid result (from the result alone)."""
  max_train = result["max_train_items"]
  print("\n" + caption(result))
  rows = []
  for p in result["points"]:
    if "error" in p:
      rows.append([f"{p['items']:,}", f"{p['sessions']:,}", f"failed: {p['error']}"]
                  + [""] * 8)
      continue
    t, e = p.get("training"), p["evaluation"]
    if t:
      ph = t["phases"]
      random = (f"{common.fmt_rate(both_towers(t, 'random'))} ("
                f"{common.fmt_rate(ph['id/random']['prefixes_per_second'])} / "
                f"{common.fmt_rate(ph['text/random']['prefixes_per_second'])})")
      hard = (f"{common.fmt_rate(both_towers(t, 'hard'))} ("
              f"{common.fmt_rate(ph['id/hard']['prefixes_per_second'])} / "
              f"{common.fmt_rate(ph['text/hard']['prefixes_per_second'])})")
      split = f"{t['split_prefixes']:,} ({t['split_load_seconds']:.0f} s)"
      epoch = f"{costs(p)['epoch']:,.0f} s"
    else:
      random = hard = f"not trained (items > --max_train_items={max_train:,})"
      split = epoch = "-"
    rows.append([f"{p['items']:,}", f"{p['sessions']:,}", str(p["k2"]), split, random, hard,
                 epoch, f"{common.fmt_rate(e['prefixes_per_second'])} ({e['prefixes']:,} "
                 f"prefixes, {e['windows']:,} windows, {e['seconds']:.0f} s)",
                 common.mib(p["max_rss_after_evaluation_bytes"]),
                 common.mib(p["max_rss_bytes"]), f"{p['wall_seconds']:.0f} s"])
  print(common.table(["items", "sessions", "k2", "train prefixes (split load)",
                      "random prefixes/s (ID / text)", "hard prefixes/s (ID / text)",
                      "epoch est.", "eval prefixes/s", "peak RSS after eval",
                      "peak RSS at end", "point wall"], rows))
  if any("training" not in p and "error" not in p for p in result["points"]):
    print(f"Not trained: catalogues above --max_train_items={max_train:,}. A hard "
          f"step there ranks the whole catalogue for each of the batch's ~1,300 prefixes "
          f"(at 1M items ~330 GFLOP of partner scores and a chunked top-k of k2 per step: "
          f"over a minute per step on 2 shared cores, BUILD_NOTES.md 'Scale benchmark'); "
          f"--max_train_items=1000000 measures it.")
  if any(p.get("chunked_top_k_workaround_needed") for p in result["points"]):
    print("(measured before the fix of scoring.top_k_over_chunks' list width, with an "
          "in-process workaround that changed no value)")
  if not result["per_doubling"]:
    print_reference(result)
    return
  print("\nCost ratio per doubling: between consecutive points of an axis a -> b, "
        "(c_b / c_a) ** (1 / log2(n_b / n_a)), c = seconds per prefix (training, "
        "evaluation), seconds (epoch estimate = split prefixes / rate, mean of random and hard; "
        "split load) or bytes (peak RSS); 1.0 = flat, 2.0 = proportional to the size.")
  rows = [[r["axis"], f"{r['from']:,} -> {r['to']:,}", f"{r['doublings']:.2f}"]
          + [_ratio(r["per_doubling"][k]) for k in ("random", "hard", "eval", "epoch",
                                                    "split_load", "rss_eval", "rss_end")]
          for r in result["per_doubling"]]
  print(common.table(["axis", "from -> to", "doublings", "train random", "train hard",
                      "evaluation", "epoch est.", "split load", "peak RSS (eval)",
                      "peak RSS (end)"], rows))
  print_reference(result)


def print_reference(result):
  """Hard vs random phase at the reference point, and where a hard step goes."""
  ref = next((p for p in result["points"] if p.get("reference") and p.get("training")), None)
  if ref is None:
    return
  phases = ref["training"]["phases"]
  print(f"\nHard vs random negatives at k2={ref['k2']}, {ref['items']:,} items "
        f"(issue 16 item 4: hard within 1.5x of random):")
  rows = []
  for tower in ("id", "text"):
    r, h = (phases[f"{tower}/{k}"]["prefixes_per_second"] for k in ("random", "hard"))
    rows.append([tower, common.fmt_rate(r), common.fmt_rate(h), f"x{r / h:.2f}",
                 "yes" if r / h <= 1.5 else "no"])
  r, h = both_towers(ref["training"], "random"), both_towers(ref["training"], "hard")
  rows.append(["both (even split)", common.fmt_rate(r), common.fmt_rate(h), f"x{r / h:.2f}",
               "yes" if r / h <= 1.5 else "no"])
  print(common.table(["tower", "random prefixes/s", "hard prefixes/s", "random / hard",
                      "within 1.5x"], rows))
  pieces = ref["training"].get("breakdown_seconds")
  if not pieces:
    return
  b, top_k = ref["training"]["breakdown_batch"], ref["training"]["top_k_seconds"]
  print(f"\nWhere a hard step goes ({b['rows']} x {b['width']} windows, {b['prefixes']} "
        f"prefixes; median of 3, ms; top_k of k2={ref['k2']} over [{b['prefixes']}, "
        f"{ref['num_items']}] random scores):")
  rows = []
  for name, p in pieces.items():
    step = {k: phases[f"{name}/{k}"]["step_seconds_median"] for k in ("random", "hard")}
    rows.append([name] + [f"{1e3 * x:.0f}" for x in (
        step["random"], step["hard"], p["partner_scores"], top_k["sorted"], top_k["unsorted"],
        p["partner_signal_total"], p["trained_tower_forward"],
        p["trained_tower_forward_backward"], p["optimizer_apply"])])
  print(common.table(["trained tower", "random step (median)", "hard step (median)",
                      "partner scores", "top_k sorted", "top_k unsorted",
                      "partner signal (scores+top_k+mix)", "trained fwd", "trained fwd+bwd",
                      "optimizer"], rows))
