"""Installs the `layoutlmv3` package and the `data_prep` tools (requirements.txt pins the tested versions)."""

from setuptools import find_packages, setup

setup(
    name="layoutlmv3-pretraining",
    version="0.1.0",
    description="A from-scratch LayoutLMv3 pretraining system: model, tokenizer, MLM/MIM/WPA, DeepSpeed, FUNSD",
    python_requires=">=3.10",
    packages=find_packages(include=["layoutlmv3", "layoutlmv3.*", "data_prep", "data_prep.*"]),
    install_requires=[
        "torch>=2.5",
        "transformers>=4.45",
        "tokenizers>=0.20",
        "safetensors",
        "numpy",
        "pyyaml",
        "pillow",
        "tqdm",
        "webdataset>=0.2.86",
        "seqeval",
        "tensorboard",
        "faker",
        "pypdfium2",
    ],
    extras_require={"train": ["deepspeed>=0.15"], "dev": ["pytest", "ruff"]},
)
