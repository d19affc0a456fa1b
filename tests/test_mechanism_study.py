"""benchmarks/mechanism_study.py's regime numbers: where hard phases start and how
each network fares in its first hard epoch, read from run histories."""

import pytest

from tests import scripts


@pytest.fixture(scope="module")
def study():
  """benchmarks/mechanism_study.py as a module (importing it defines no flags)."""
  return scripts.load_script("benchmarks/mechanism_study.py")


def history(id_curve, text_curve, hard):
  """Alternating phases two epochs each (ID first); `hard` marks hard epochs."""
  return [{"train/phase": float((epoch // 2) % 2), "train/hard_negatives": float(h),
           "valid/id/hits@20": i, "valid/text/hits@20": t}
          for epoch, (i, t, h) in enumerate(zip(id_curve, text_curve, hard))]


def test_first_hard_epochs_finds_each_networks_first_hard_phase(study):
  runs = history([0.1] * 8, [0.1] * 8, [0, 0, 0, 0, 1, 1, 1, 1])
  assert study.first_hard_epochs(runs) == {"id": 4, "text": 6}
  assert study.first_hard_epochs(history([0.1] * 4, [0.1] * 4, [0] * 4)) == {}


def test_partner_strength_reads_the_epoch_before_and_each_first_hard_epoch(study):
  hard = [0, 0, 0, 0, 1, 1, 1, 1]
  hard_runs = [
      {"seed": "seed0", "history": history([.30, .40, .40, .40, .20, .25, .25, .25],
                                           [.10, .10, .30, .36, .36, .36, .33, .34], hard)},
      {"seed": "seed1", "history": history([.30, .42, .42, .42, .22, .25, .25, .25],
                                           [.10, .10, .30, .38, .38, .38, .35, .34], hard)},
      {"seed": "seed9", "history": history([.3] * 8, [.3] * 8, hard)}]  # no uniform twin
  uniform_runs = [
      {"seed": "seed0", "history": history([.30, .40, .40, .40, .45, .46, .46, .46],
                                           [.10, .10, .30, .36, .36, .36, .39, .40], hard)},
      {"seed": "seed1", "history": history([.30, .42, .42, .42, .47, .46, .46, .46],
                                           [.10, .10, .30, .38, .38, .38, .41, .40], hard)}]
  strength = study.partner_strength(hard_runs, uniform_runs)
  assert strength == {"seeds": 2, "id_before": 41.0, "text_before": 37.0,
                      "id_after_hard": 21.0, "id_after_uniform": 46.0,
                      "text_after_hard": 34.0, "text_after_uniform": 40.0}
