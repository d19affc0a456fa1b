"""The package's layering (issues 11 and 31): every module in a layer, imports
only downwards (imports inside functions count), no import cycle of any kind,
no command imported by another module, and models built from `ModelSettings`
only."""

import ast
import dataclasses
import os
import textwrap

import pytest

from alterrec_tf.config import TrainConfig

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "alterrec_tf")
# The commands (`python -m alterrec_tf.<name>`): flags, checks before TensorFlow, printing.
COMMANDS = tuple(f"alterrec_tf.{name}" for name in (
    "train", "export", "recommend", "experiments", "alpha_sweep", "report", "tune", "peers",
    "floor_grid"))
# Lowest first; a module may import its own layer and those below it.
LAYERS = (
    ("lower", ("alterrec_tf.models", "alterrec_tf.data", "alterrec_tf.formats",
               "alterrec_tf.text")),
    ("settings", ("alterrec_tf.flagfiles", "alterrec_tf.cli", "alterrec_tf.config",
                  "alterrec_tf.runs", "alterrec_tf.run_archive")),
    ("upper", ("alterrec_tf.training", "alterrec_tf.serving", "alterrec_tf.analysis",
               "alterrec_tf.recbole")),
    ("commands", COMMANDS),
)
# The modules that read or define absl flags: no model or data module imports them.
FLAG_MODULES = ("alterrec_tf.config", "alterrec_tf.cli", "alterrec_tf.flagfiles")


def _module_name(path):
  relative = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-len(".py")]
  parts = relative.split(os.sep)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _within(module, prefixes):
  return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def _layer(module):
  """Index of `module`'s layer in LAYERS (the package's __init__: the lowest)."""
  if module == "alterrec_tf":
    return 0
  for index, (_, prefixes) in enumerate(LAYERS):
    if _within(module, prefixes):
      return index
  return None


def _imports(source, path, module, known):
  """{imported alterrec_tf / data_tools module: module-level?} of one file.

  Every import statement counts, also those inside functions and under
  `if TYPE_CHECKING:`. `from package import name` counts as an import of
  package.name when that is a module, else of package.
  """
  tree = ast.parse(source, path)
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


def find_cycle(edges):
  """One import cycle of `edges` ({module: imported modules}) as a list of
  modules, first = last; None where there is none."""
  state = {}

  def visit(module, stack):
    state[module] = "open"
    for target in sorted(edges.get(module, ())):
      if state.get(target) == "open":
        return stack[stack.index(target):] + [module, target] if target in stack else (
            stack + [module, target])
      if target not in state:
        cycle = visit(target, stack + [module])
        if cycle:
          return cycle
    state[module] = "done"
    return None

  for module in sorted(edges):
    if module not in state:
      cycle = visit(module, [])
      if cycle:
        return cycle
  return None


def _edges(graph, known):
  """Every import between two modules of the package (function-level ones too)."""
  return {module: {name for name in imported if name in known and name != module}
          for module, imported in graph.items()}


@pytest.fixture(scope="module")
def import_graph():
  modules = {}
  for root, _, files in os.walk(PACKAGE_DIR):
    for file in files:
      if file.endswith(".py"):
        path = os.path.join(root, file)
        modules[_module_name(path)] = path
  known = set(modules)
  graph = {}
  for module, path in modules.items():
    with open(path, encoding="utf-8") as f:
      graph[module] = _imports(f.read(), path, module, known)
  return graph, known


def test_every_module_is_in_a_layer(import_graph):
  graph, _ = import_graph
  assert not [module for module in graph if _layer(module) is None]
  assert set(COMMANDS) <= set(graph)  # (a renamed command is renamed here too)


def test_imports_go_downwards_only(import_graph):
  graph, known = import_graph
  upward = [(module, name) for module, targets in _edges(graph, known).items()
            for name in targets if _layer(name) > _layer(module)]
  assert not upward
  assert not [(module, name) for module, imported in graph.items()
              for name in imported if name.startswith("data_tools")]


def test_models_and_data_import_no_flag_module(import_graph):
  graph, _ = import_graph
  assert not [(module, name) for module, imported in graph.items()
              if _layer(module) == 0 for name in imported if _within(name, FLAG_MODULES)]


def test_no_module_imports_a_command(import_graph):
  graph, known = import_graph
  # (the grid and the tuner call the trainer's library function, training.trainer)
  assert not [(module, name) for module, targets in _edges(graph, known).items()
              for name in targets if name in COMMANDS]


def _reachable(edges, module):
  seen, todo = set(), [module]
  while todo:
    for target in edges.get(todo.pop(), ()):
      if target not in seen:
        seen.add(target)
        todo.append(target)
  return seen


def test_shared_helpers_live_with_their_owners(import_graph):
  graph, known = import_graph
  edges = _edges(graph, known)
  # the count floors and the serving graph need no Keras AlterRec
  for module in ("alterrec_tf.models.baselines.floors", "alterrec_tf.serving.module",
                 "alterrec_tf.training.schedule", "alterrec_tf.training.evaluation"):
    assert "alterrec_tf.models.alterrec" not in _reachable(edges, module), module


def test_no_import_cycle(import_graph):
  graph, known = import_graph
  cycle = find_cycle(_edges(graph, known))
  assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_an_injected_cycle_fails(import_graph):
  graph, known = import_graph
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"a"}}) == ["a", "a"]
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
  # an import inside a function, into the real graph: analysis.tables <- report was one
  source = textwrap.dedent("""
      def rows():
        from alterrec_tf.analysis import report  # inside a function
        return report
  """)
  path = os.path.join(PACKAGE_DIR, "analysis", "tables.py")
  injected = dict(graph)
  injected["alterrec_tf.analysis.tables"] = {
      **graph["alterrec_tf.analysis.tables"],
      **_imports(source, path, "alterrec_tf.analysis.tables", known)}
  assert injected["alterrec_tf.analysis.tables"]["alterrec_tf.analysis.report"] is False
  cycle = find_cycle(_edges(injected, known))
  assert cycle and {"alterrec_tf.analysis.tables", "alterrec_tf.analysis.report"} <= set(cycle)


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
  from alterrec_tf.models import names as model_names
  from alterrec_tf.models.alterrec import AlterRec
  from alterrec_tf.models.baselines import sasrec
  with pytest.raises(TypeError, match="ModelSettings.of"):
    AlterRec(TrainConfig(embedding_dim=8, max_len=4), 10,
             variant=model_names.ALTERREC_VARIANTS["id_only"])
  with pytest.raises(TypeError, match="ModelSettings.of"):
    sasrec.SASRec(TrainConfig(embedding_dim=8, max_len=4), 10)


def test_seen_items_are_resolved_once_and_the_registry_refuses_auto():
  from alterrec_tf import config as alter_config
  from alterrec_tf.models import registry
  config = TrainConfig(model="id_only", embedding_dim=8, max_len=4, seen_items="auto")
  deduplicated = {"num_items": 10, "sessions_deduplicated": True}
  with pytest.raises(ValueError, match="--seen_items=auto must be resolved"):
    registry.build_model(config, deduplicated, None)
  resolved = alter_config.resolve_seen_items(config, deduplicated)
  assert resolved.seen_items == "exclude"
  assert alter_config.resolve_seen_items(resolved, {"num_items": 10}) is resolved
  assert alter_config.resolve_seen_items(config, {"num_items": 10}).seen_items == "keep"
  model = registry.build_model(resolved, deduplicated, None)
  assert model.settings.seen_items == "exclude"
  assert not hasattr(model, "config")
