"""Filtering and splitting in the Beam pipeline: the rules of `data_tools.filtering`
and `data_tools.splits`, in the order of `data_tools.prepare.select_sessions`.

1. Frequency filter. Beam pipelines are acyclic, so "repeat until stable" is
   unrolled into `--max_filter_passes` passes. Pass 1 counts every item over
   all sessions (Count.PerElement); each pass broadcasts the items counted
   fewer than `min_item_count` times as a side input, applies
   `filtering.drop_from_session` to every session outside the protected splits
   and emits a decrement for each item occurrence it removed (removed items and
   the items of dropped sessions), so the next pass's counts are the previous
   counts plus those decrements (CombinePerKey(sum)) rather than a recount. A
   pass that changes no session is stable, and so are the passes after it;
   `iterations` in the report counts the passes that changed something, as the
   local loop counts its rounds. If the last pass still changed a session the
   pipeline fails, naming the flag to raise.
2. The split (layouts without the reader's split): see `data_tools.beam`
   (keys to one worker, `splits.chronological_user_split`, join by session id).
3. Truncation: `filtering.truncate_session` per session.
4. Unseen items: the training items are a side input; validation/test
   sessions lose the others through `filtering.drop_from_session` (or, for
   `keep_eval_rows` layouts, they are only counted).
"""

from typing import Dict, List, NamedTuple, Tuple

import apache_beam as beam
import pandas as pd

from data_tools import filtering, prepare, splits
from data_tools import sessions as S
from data_tools.beam.read import progress
from data_tools.counts import SplitCounts
from data_tools.options import PrepareOptions

CHANGED, DECREMENTS = "changed", "decrements"


class Selected(NamedTuple):
  """The selected sessions and what the manifest reports about the selection."""
  sessions: beam.PCollection
  frequency: beam.PCollection  # one `filtering.frequency_report` dict
  unseen: beam.PCollection  # one `filtering.unseen_report` dict
  rule: beam.PCollection  # one split rule text


class SplitCountsFn(beam.CombineFn):
  """`counts.SplitCounts` of a PCollection of sessions."""

  def create_accumulator(self) -> SplitCounts:
    return SplitCounts()

  def add_input(self, accumulator: SplitCounts, session: dict) -> SplitCounts:
    return accumulator.add_session(session)

  def merge_accumulators(self, accumulators) -> SplitCounts:
    total = SplitCounts()
    for accumulator in accumulators:
      total.merge(accumulator)
    return total

  def extract_output(self, accumulator: SplitCounts) -> SplitCounts:
    return accumulator


def singleton(pcollection: beam.PCollection):
  """A one-element PCollection as a side input."""
  return beam.pvalue.AsSingleton(pcollection)


def _with(session: dict, result: Tuple[List[str], int]) -> dict:
  return dict(session, **{S.ITEMS: result[0], S.EVAL_START: result[1]})


def summarize(sessions: beam.PCollection, label: str) -> beam.PCollection:
  """One `filtering.make_summary` dict: sessions, distinct items, interactions."""
  num = sessions | f"{label}Sessions" >> beam.combiners.Count.Globally()
  interactions = (sessions | f"{label}Lengths" >> beam.Map(lambda s: len(s[S.ITEMS]))
                  | f"{label}Interactions" >> beam.CombineGlobally(sum))
  items = (sessions | f"{label}Items" >> beam.FlatMap(lambda s: s[S.ITEMS])
           | f"{label}Distinct" >> beam.Distinct()
           | f"{label}CountItems" >> beam.combiners.Count.Globally())
  return (num | f"{label}Summary" >> beam.Map(
      lambda n, items, interactions: filtering.make_summary(n, items, interactions),
      items=singleton(items), interactions=singleton(interactions)))


class FrequencyPassFn(beam.DoFn):
  """One pass of rule 1 over one session (see the module docstring).

  Outputs: main = the kept session; CHANGED = 1 per changed or dropped
  session; DECREMENTS = (item, -1) per removed item occurrence.
  """

  def __init__(self, min_session_length: int):
    self._min_session_length = min_session_length

  def process(self, session: dict, rare: Dict[str, int], header: S.RawSessions):
    if session[S.SPLIT] in prepare.protected_splits(header):
      yield session
      return
    result = filtering.drop_from_session(session[S.ITEMS], session[S.EVAL_START],
                                         rare, self._min_session_length)
    kept = set(result[0]) if result else set()
    if result is None or len(kept) < len(session[S.ITEMS]):
      yield beam.pvalue.TaggedOutput(CHANGED, 1)
      for item in session[S.ITEMS]:
        if item not in kept:
          yield beam.pvalue.TaggedOutput(DECREMENTS, (item, -1))
    if result is not None:
      yield _with(session, result)


def _check_stable(changed: List[Tuple[int, int]], max_passes: int) -> int:
  """The number of passes that changed something; fails if the last did."""
  counts = [count for _, count in sorted(changed)]
  progress("frequency filter: sessions changed per pass "
           + ", ".join(str(count) for count in counts))
  if counts and counts[-1]:
    raise S.DataToolsError(
        f"the frequency filter still changed {counts[-1]} session(s) in its last "
        f"pass (--max_filter_passes={max_passes}); raise --max_filter_passes")
  return sum(1 for count in counts if count)


def frequency_filter(sessions: beam.PCollection, header: beam.PCollection,
                     options: PrepareOptions, max_passes: int
                     ) -> Tuple[beam.PCollection, beam.PCollection]:
  """Rule 1, unrolled; returns (sessions, one frequency report dict)."""
  before = summarize(sessions, "Before")
  counts = (sessions | "Items" >> beam.FlatMap(lambda s: s[S.ITEMS])
            | "CountItems" >> beam.combiners.Count.PerElement())
  changed = []
  for number in range(1, max_passes + 1):
    rare = counts | f"Rare{number}" >> beam.Filter(
        lambda pair: pair[1] < options.min_item_count)
    result = sessions | f"Pass{number}" >> beam.ParDo(
        FrequencyPassFn(options.min_session_length), rare=beam.pvalue.AsDict(rare),
        header=singleton(header)).with_outputs(CHANGED, DECREMENTS, main="sessions")
    sessions = result["sessions"]
    changed.append(result[CHANGED] | f"Changed{number}" >> beam.combiners.Count.Globally()
                   | f"Number{number}" >> beam.Map(lambda n, k=number: (k, n)))
    counts = ((counts, result[DECREMENTS]) | f"Counts{number}" >> beam.Flatten()
              | f"Recount{number}" >> beam.CombinePerKey(sum))
  iterations = (tuple(changed) | "PassChanges" >> beam.Flatten()
                | "AllPasses" >> beam.combiners.ToList()
                | "Stable" >> beam.Map(_check_stable, max_passes))
  report = (before | "FrequencyReport" >> beam.Map(
      lambda before, after, iterations: filtering.frequency_report(before, after, iterations),
      after=singleton(summarize(sessions, "After")), iterations=singleton(iterations)))
  return sessions, report


def _split_pairs(keys: List[tuple], header: S.RawSessions, options: PrepareOptions):
  """(session id, split) by the purchase-log rule, for layouts read unsplit."""
  if header.split_rule:
    return
  frame = pd.DataFrame(keys, columns=[S.SESSION_ID, S.USER_ID, S.TIMESTAMP])
  frame = splits.chronological_user_split(frame, options.valid_fraction,
                                          options.test_fraction)
  progress(f"split {len(frame):,} sessions: "
           f"{frame[S.SPLIT].value_counts().to_dict()}")
  yield from zip(frame[S.SESSION_ID], frame[S.SPLIT])


def _joined(session_id, grouped) -> List[dict]:
  split = list(grouped["split"])
  return [dict(session, **{S.SPLIT: split[0]}) if split else session
          for session in grouped["session"]]


def assign_splits(sessions: beam.PCollection, header: beam.PCollection,
                  options: PrepareOptions) -> beam.PCollection:
  """Rule 2: the split of unsplit layouts (keys on one worker, joined back)."""
  pairs = (sessions
           | "SplitKeys" >> beam.Map(lambda s: (s[S.SESSION_ID], s[S.USER_ID], s[S.TIMESTAMP]))
           | "AllKeys" >> beam.combiners.ToList()
           | "Split" >> beam.FlatMap(_split_pairs, singleton(header), options))
  keyed = sessions | "KeyForSplit" >> beam.Map(lambda s: (s[S.SESSION_ID], s))
  return ({"session": keyed, "split": pairs} | "JoinSplit" >> beam.CoGroupByKey()
          | "WithSplit" >> beam.FlatMapTuple(_joined))


class _NotIn:
  """A container holding every item that `seen` does not hold."""

  def __init__(self, seen):
    self._seen = seen

  def __contains__(self, item) -> bool:
    return item not in self._seen


def _drop_unseen(session: dict, seen: Dict[str, None], header: S.RawSessions,
                 min_session_length: int) -> List[dict]:
  if header.keep_eval_rows or session[S.SPLIT] == "train":
    return [session]
  result = filtering.drop_from_session(session[S.ITEMS], session[S.EVAL_START],
                                       _NotIn(seen), min_session_length)
  return [] if result is None else [_with(session, result)]


def _unseen_report(unseen: int, header: S.RawSessions, before: SplitCounts,
                   after: SplitCounts) -> dict:
  if header.keep_eval_rows:
    return filtering.without_training_report(unseen)
  return filtering.unseen_report(unseen, before.sessions, after.sessions)


def drop_unseen(sessions: beam.PCollection, header: beam.PCollection,
                options: PrepareOptions) -> Tuple[beam.PCollection, beam.PCollection]:
  """Rule 4; returns (sessions, one unseen-items report dict)."""
  seen = (sessions | "TrainSessions" >> beam.Filter(lambda s: s[S.SPLIT] == "train")
          | "TrainItems" >> beam.FlatMap(lambda s: s[S.ITEMS])
          | "DistinctTrain" >> beam.Distinct()
          | "SeenKeys" >> beam.Map(lambda item: (item, None)))
  seen_view = beam.pvalue.AsDict(seen)
  unseen = (sessions | "EvalSessions" >> beam.Filter(lambda s: s[S.SPLIT] != "train")
            | "EvalItems" >> beam.FlatMap(lambda s: s[S.ITEMS])
            | "DistinctEval" >> beam.Distinct()
            | "Unseen" >> beam.Filter(lambda item, seen: item not in seen, seen_view)
            | "CountUnseen" >> beam.combiners.Count.Globally())
  kept = sessions | "DropUnseen" >> beam.FlatMap(
      _drop_unseen, seen_view, singleton(header), options.min_session_length)
  before = sessions | "CountBefore" >> beam.CombineGlobally(SplitCountsFn())
  after = kept | "CountAfter" >> beam.CombineGlobally(SplitCountsFn())
  report = unseen | "UnseenReport" >> beam.Map(
      _unseen_report, singleton(header), singleton(before), singleton(after))
  return kept, report


def select(sessions: beam.PCollection, header: beam.PCollection,
           options: PrepareOptions, max_passes: int) -> Selected:
  """Rules 1-4 in `prepare.select_sessions`' order."""
  sessions, frequency = frequency_filter(sessions, header, options, max_passes)
  sessions = assign_splits(sessions, header, options)
  sessions = sessions | "Truncate" >> beam.Map(lambda s: _with(s, filtering.truncate_session(
      s[S.ITEMS], s[S.EVAL_START], options.max_session_length)))
  sessions, unseen = drop_unseen(sessions, header, options)
  rule = header | "SplitRule" >> beam.Map(prepare.split_rule, options)
  return Selected(sessions, frequency, unseen, rule)

