"""The package's layering (issue 11): no import cycle, models/ and data/ below
training, serving and analysis, and models built from `ModelSettings` only."""

import ast
import dataclasses
import os

import pytest

from alterrec_tf.config import TrainConfig

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "alterrec_tf")
LOWER_LAYERS = ("alterrec_tf.models", "alterrec_tf.data", "alterrec_tf.formats")
UPPER_LAYERS = ("alterrec_tf.training", "alterrec_tf.serving", "alterrec_tf.analysis",
                "data_tools")


def _module_name(path):
  relative = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-len(".py")]
  parts = relative.split(os.sep)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path, module, known):
  """{imported alterrec_tf / data_tools module: module-level?} of one file.

  `from package import name` counts as an import of package.name when that is
  a module, else of package.
  """
  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  top_level = {id(node) for node in tree.body}
  found = {}
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
               for alias in node.names]
    for name in names:
      if name.split(".")[0] in ("alterrec_tf", "data_tools"):
        found[name] = found.get(name, False) or id(node) in top_level
  return found


@pytest.fixture(scope="module")
def import_graph():
  modules = {}
  for root, _, files in os.walk(PACKAGE_DIR):
    for file in files:
      if file.endswith(".py"):
        path = os.path.join(root, file)
        modules[_module_name(path)] = path
  known = set(modules)
  return {module: _imports(path, module, known) for module, path in modules.items()}, known


def test_models_and_data_import_no_upper_layer(import_graph):
  graph, _ = import_graph
  offending = [(module, name) for module, imported in graph.items()
               if module.startswith(LOWER_LAYERS)
               for name in imported if name.startswith(UPPER_LAYERS)]
  assert not offending


def test_no_module_level_import_cycle(import_graph):
  graph, known = import_graph
  # (a module importing its own package is no cycle: Python runs the package first)
  edges = {module: {name for name, top in imported.items() if top and name in known
                    and not module.startswith(name + ".") and name != module}
           for module, imported in graph.items()}
  state = {}

  def visit(module, stack):
    state[module] = "open"
    for target in sorted(edges.get(module, ())):
      if state.get(target) == "open":
        raise AssertionError("import cycle: " + " -> ".join(stack + [module, target]))
      if target not in state:
        visit(target, stack + [module])
    state[module] = "done"

  for module in sorted(edges):
    if module not in state:
      visit(module, [])


def test_model_settings_are_a_subset_of_the_train_config():
  from alterrec_tf.models.settings import ModelSettings
  config = TrainConfig(embedding_dim=24, alpha=0.3, seen_items="exclude", k1=3, k2=40)
  settings = ModelSettings.of(config)
  train_fields = {field.name for field in dataclasses.fields(TrainConfig)}
  assert {field.name for field in dataclasses.fields(ModelSettings)} < train_fields
  assert (settings.embedding_dim, settings.alpha, settings.num_negatives) == (24, 0.3, 37)
  assert ModelSettings.of(settings) is settings
  # the trainer's concerns stay with the trainer
  for name in ("data_dir", "run_dir", "batch_size", "m_max", "early_stopping_patience"):
    assert not hasattr(settings, name)


def test_models_refuse_the_whole_train_config():
  from alterrec_tf.models.alterrec import AlterRec
  from alterrec_tf.models.baselines import sasrec
  with pytest.raises(TypeError, match="ModelSettings.of"):
    AlterRec(TrainConfig(embedding_dim=8, max_len=4), 10, towers=("id",))
  with pytest.raises(TypeError, match="ModelSettings.of"):
    sasrec.SASRec(TrainConfig(embedding_dim=8, max_len=4), 10)


def test_registry_hands_models_settings_with_seen_items_resolved():
  from alterrec_tf.models import registry
  config = TrainConfig(model="id_only", embedding_dim=8, max_len=4, seen_items="auto")
  model = registry.build_model(config, {"num_items": 10, "sessions_deduplicated": True}, None)
  assert model.settings.seen_items == "exclude"
  assert not hasattr(model, "config")
