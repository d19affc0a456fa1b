"""--tower_selection=each: every network tested at the epoch of its own best
validation Hits@20 (a lever of issue 32)."""

import json

import numpy as np
import pytest

from alterrec_tf import config as alter_config
from alterrec_tf.formats import schema
from alterrec_tf.models import registry
from alterrec_tf.training import tower_selection
from alterrec_tf.training.trainer import train
from tests.test_training import dataset, tiny_config  # noqa: F401  (the module fixture)

HISTORY = [  # ID trains in epochs 1-2 and 5, text in 3-4 (frozen figures repeat)
    {"epoch": epoch, "valid/id/hits@20": id_score, "valid/text/hits@20": text_score,
     "valid/fused/hits@20": fused}
    for epoch, id_score, text_score, fused in ((1, 0.30, 0.10, 0.3), (2, 0.40, 0.10, 0.4),
                                               (3, 0.40, 0.20, 0.4), (4, 0.40, 0.25, 0.4),
                                               (5, 0.35, 0.25, 0.4))
]


def test_a_tower_improves_only_above_every_earlier_epoch():
  assert tower_selection.improved_towers(HISTORY[:2], ("id", "text"), "hits@20") == ["id"]
  assert tower_selection.improved_towers(HISTORY[:3], ("id", "text"), "hits@20") == ["text"]
  assert tower_selection.improved_towers(HISTORY, ("id", "text"), "hits@20") == []
  assert tower_selection.best_epochs(HISTORY, ("id", "text", "fused"), "hits@20") == {
      "id": 2, "text": 4, "fused": 2}
  # patience counts from the last gain of any head (text, epoch 4)
  assert tower_selection.epochs_without_gain(HISTORY, "hits@20") == 1


def test_each_needs_alpha_chosen_on_validation():
  with pytest.raises(alter_config.ConfigError, match="--tune_alpha"):
    alter_config.check_flags(alter_config.TrainConfig(tower_selection="each"))


def test_each_network_is_tested_with_its_own_best_weights(dataset, tmp_path):  # noqa: F811
  run_dir = tmp_path / "run"
  config = tiny_config(dataset, str(run_dir), m_max=6, tower_selection="each",
                       tune_alpha=True, test_every_epoch=False)
  results = train(config)
  history = json.loads((run_dir / "history.json").read_text())
  expected = tower_selection.best_epochs(history, ("id", "text"), "hits@20")
  assert results["tower_epochs"] == expected
  assert "alpha" in results and results["test"]["fused"]
  # the tested (and exported) weights hold each tower's best-epoch weights
  manifest = schema.load_manifest(dataset)
  config = config.replace(seen_items=results["seen_items"])
  model = registry.build_model(config, manifest, schema.load_text_embeddings(dataset, manifest))
  model.load_weights(str(run_dir / "best.weights.h5"))
  for name in ("id", "text"):
    with np.load(run_dir / f"best_{name}.weights.npz") as saved:
      for i, weight in enumerate(model.tower(name).get_weights()):
        np.testing.assert_array_equal(weight, saved[f"arr_{i}"])
