"""Item text embeddings with the offline all-MiniLM-L6-v2 on real Online Retail titles."""

import os

import numpy as np
import pandas as pd
import pytest

from data_tools import embed
from data_tools.sessions import DataToolsError, Location

CAKE_STAND = "RED RETROSPOT CAKE STAND"
OTHER_CAKE_STAND = "SWEETHEART 3 TIER CAKE STAND"
RED_CLOCK = "ALARM CLOCK BAKELIKE RED"
GREEN_CLOCK = "ALARM CLOCK BAKELIKE GREEN"
FRAME = "WOODEN PICTURE FRAME WHITE FINISH"
LUNCH_BAG = "LUNCH BAG CARS BLUE"


@pytest.fixture(scope="module")
def titles(online_retail_path):
  """The six titles above, checked to be real Online Retail descriptions."""
  names = [CAKE_STAND, OTHER_CAKE_STAND, RED_CLOCK, GREEN_CLOCK, FRAME, LUNCH_BAG]
  described = set(pd.read_parquet(online_retail_path, columns=["Description"])
                  ["Description"].str.strip())
  assert set(names) <= described
  return names


def _cos(a, b):
  return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_default_model_resolves_to_the_packaged_copy():
  path = embed.resolve_model("all-MiniLM-L6-v2")
  assert os.path.isfile(os.path.join(path, "model.safetensors"))
  assert embed.resolve_model("/some/other/model") == "/some/other/model"


def test_real_titles_similar_closer_than_unrelated(titles, text_encoder):
  texts = pd.DataFrame({"title": titles}, index=[f"i{i}" for i in range(6)])
  table = embed.item_text_table(text_encoder, texts, ["title"], 4, True)
  assert table.shape == (7, 384) and table.dtype == np.float32
  assert not table[0].any()
  cake, other_cake, red, green, frame, bag = table[1:]
  assert _cos(cake, other_cake) > _cos(cake, frame) + 0.1
  assert _cos(red, green) > _cos(red, bag) + 0.1
  assert _cos(red, green) > _cos(red, cake)


def test_fields_are_averaged_and_empty_fields_left_out(titles, text_encoder):
  texts = pd.DataFrame({"title": [CAKE_STAND, RED_CLOCK, ""],
                        "description": [FRAME, "", LUNCH_BAG]},
                       index=["a", "b", "c"])
  table = embed.item_text_table(text_encoder, texts, ["title", "description"],
                                2, True)
  single = {t: text_encoder.encode([t], convert_to_numpy=True)[0]
            for t in (CAKE_STAND, FRAME, RED_CLOCK, LUNCH_BAG)}
  np.testing.assert_allclose(table[1], (single[CAKE_STAND] + single[FRAME]) / 2,
                             atol=1e-5)
  np.testing.assert_allclose(table[2], single[RED_CLOCK], atol=1e-5)
  np.testing.assert_allclose(table[3], single[LUNCH_BAG], atol=1e-5)
  assert len(titles) == 6


def test_item_without_text(fake_encoder):
  texts = pd.DataFrame({"title": ["mug", ""]}, index=["a", "b"])
  origin = {"b": Location("sessions.csv", 4, "item_id")}
  with pytest.raises(DataToolsError, match=r"sessions.csv, row 4, column "
                     r"'item_id': item 'b' has no text in title"):
    embed.item_text_table(fake_encoder, texts, ["title"], 8, True, origin)
  table = embed.item_text_table(fake_encoder, texts, ["title"], 8, False)
  assert table.shape == (3, 8) and not table[2].any() and table[1].any()


def test_unavailable_model_is_a_clear_error():
  with pytest.raises(DataToolsError, match="cannot load .* offline"):
    embed.load_encoder("no-such-org/no-such-model-xyz")
