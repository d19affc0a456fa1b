"""AlterRec in Keras 3 / TensorFlow.

TensorFlow Recommenders (the evaluator's retrieval metrics,
`training.retrieval`) is built on Keras 2 and imports only when TensorFlow is
first imported with `TF_USE_LEGACY_KERAS=1`: `tf.keras` is then Keras 2 while
`import keras` stays Keras 3, which is all this package uses. It is set here,
before any of our modules imports TensorFlow, unless the user set it or
TensorFlow was imported already (then the evaluator skips the TFRS figures
and says so).
"""

import os as _os
import sys as _sys

if "tensorflow" not in _sys.modules:
  _os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
