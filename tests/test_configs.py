"""Each dataset flagfile parses for both commands that share it."""

import glob
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.flags")))

TRAIN_PARSE = """
import dataclasses, json, sys
from absl import flags
from alterrec_tf import config
from alterrec_tf import flagfiles
parsed = {}
for path in sys.argv[1:]:
  flags.FLAGS.unparse_flags()
  flagfiles.make_parser(flagfiles.PREPARE_FLAG_NAMES)(["train", "--flagfile=" + path])
  parsed[path] = dataclasses.asdict(config.TrainConfig.from_flags())
print(json.dumps(parsed))
"""
PREPARE_PARSE = """
import json, sys
from absl import flags
from alterrec_tf import flagfiles
from data_tools import prepare  # defines the prepare flags
parsed = {}
for path in sys.argv[1:]:
  flags.FLAGS.unparse_flags()
  flagfiles.make_parser(flagfiles.training_flag_names())(["prepare", "--flagfile=" + path])
  parsed[path] = {name: flags.FLAGS[name].value for name in flagfiles.PREPARE_FLAG_NAMES}
print(json.dumps(parsed))
"""


def parse(script, *paths):
  out = subprocess.run([sys.executable, "-c", script, *paths], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parsed_configs():
  return parse(TRAIN_PARSE, *CONFIGS), parse(PREPARE_PARSE, *CONFIGS)


def test_every_dataset_has_a_config():
  names = {os.path.basename(p) for p in CONFIGS}
  assert {"online_retail.flags", "homedepot.flags", "amazon_fr.flags", "amazon_es.flags",
          "amazon_it.flags"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_parses_for_training_and_preparation(path, parsed_configs):
  train, prepare = parsed_configs[0][path], parsed_configs[1][path]
  assert prepare["dataset_name"]
  name = os.path.basename(path)
  if name == "homedepot.flags":  # the paper's Homedepot settings
    assert (train["id_encoder"], train["text_encoder"], train["k1"], train["k2"]) == \
        ("mean", "transformer", 6, 2000)
    assert prepare["text_fields"] == ["title", "description", "taxonomy"]
  if name in ("amazon_fr.flags", "amazon_es.flags", "amazon_it.flags"):  # Amazon-M2
    assert (train["id_encoder"], train["text_encoder"], train["k1"], train["k2"]) == \
        ("transformer", "transformer", 20, 20000)
  for value in ("m_random", "m_gap", "alpha", "beta", "p"):
    assert train[value] == {"m_random": 2, "m_gap": 2, "alpha": 0.5, "beta": 0.5, "p": 5}[value]


def test_a_misspelt_flag_in_a_flagfile_is_still_an_error(tmp_path):
  bad = tmp_path / "bad.flags"
  bad.write_text("--raw_format=online_retail\n--embeding_dim=3\n")
  out = subprocess.run([sys.executable, "-c", TRAIN_PARSE, str(bad)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode != 0 and "embeding_dim" in (out.stderr + out.stdout)
