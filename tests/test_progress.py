"""What a run prints: the epoch line, the table with the floors beside it, and
no TensorFlow start-up lines unless asked."""

from alterrec_tf.training import progress


def _record(**values):
  record = {"epoch": 3, "train_seconds": 61.2, "eval_seconds": 8.7,
            "valid/fused/hits@20": 0.451, "valid/fused/ndcg@20": 0.2731,
            "valid/id/hits@20": 0.4402, "valid/id/ndcg@20": 0.261,
            "valid/text/hits@20": 0.352, "valid/text/ndcg@20": 0.2001,
            "valid/fused/hits@10": 0.4}
  record.update(values)
  return record


def test_epoch_line_names_the_tower_its_negatives_and_each_head():
  line = progress.epoch_line(_record(**{"train/phase": 1.0, "train/hard_negatives": 1.0}),
                             epochs=4, best_epoch=3,
                             partner_of=lambda tower: "id" if tower == "text" else "text")
  assert line == ("epoch 3/4 | text network, the id network's negatives | valid H@20 / N@20 "
                  "(%): fused 45.10 / 27.31, id 44.02 / 26.10, text 35.20 / 20.01 | best | "
                  "61 s + 9 s eval")


def test_epoch_line_says_uniform_for_random_epochs_the_random_ablation_and_a_closed_gate():
  hard = {"train/phase": 0.0, "train/hard_negatives": 1.0}
  random_model = progress.epoch_line(_record(**hard), 4, 2, partner_of=lambda tower: None)
  assert "| id network, uniform negatives |" in random_model and "best" not in random_model
  gated = progress.epoch_line(_record(**hard, **{"train/gated": 1.0}), 4, 1,
                              partner_of=lambda tower: "text")
  assert "| id network, uniform negatives |" in gated
  first = progress.epoch_line(_record(**{"train/phase": 0.0, "train/hard_negatives": 0.0}),
                              4, 1, partner_of=lambda tower: "text")
  assert "| id network, uniform negatives |" in first


def test_epoch_line_of_a_model_without_phases_has_only_its_heads():
  record = {"epoch": 1, "train_seconds": 3.0, "eval_seconds": 1.0,
            "valid/fused/hits@20": 0.2, "valid/fused/ndcg@20": 0.1}
  assert (progress.epoch_line(record, 10, 1)
          == "epoch 1/10 | valid H@20 / N@20 (%): fused 20.00 / 10.00 | best | 3 s + 1 s eval")


def test_results_table_puts_each_floor_beside_the_model_s_heads():
  results = {"model": "alterrec", "test": {
      "text": {"hits@20": 0.3, "ndcg@20": 0.1},
      "fused": {"hits@20": 0.5, "ndcg@20": 0.25, "tfrs_hits@20": 0.5}}}
  floors = {"sequential_rules": {"test": {"fused": {"hits@20": 0.45, "ndcg@20": 0.2}}}}
  lines = progress.results_table(results, floors).splitlines()
  assert lines[0] == "| model | head | hits@20 | ndcg@20 | tfrs_hits@20 |"
  assert lines[2] == "| AlterRec | fused | 50.00 | 25.00 | 50.00 |"  # fused first
  assert lines[3] == "| AlterRec | text | 30.00 | 10.00 | - |"
  assert lines[4] == "| SR (Ludewig & Jannach 2018) (floor) | - | 45.00 | 20.00 | - |"
  assert progress.results_table({"test": {}}) == "(no test split)"


def test_tensorflow_log_lines_are_hidden_unless_asked_or_set_by_the_user(monkeypatch):
  from alterrec_tf import cli
  monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
  cli.quiet_tensorflow(show_log=True)  # --tensorflow_log: TensorFlow's own default
  assert "TF_CPP_MIN_LOG_LEVEL" not in cli.os.environ
  cli.quiet_tensorflow(show_log=False)
  assert cli.os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
  cli.quiet_tensorflow(show_log=False)  # the user's setting wins
  assert cli.os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
