"""Installs the `layoutlmv3` package, the `data_prep` tools and the `launch` entry points as console scripts
(requirements.txt pins the tested versions)."""

from setuptools import find_packages, setup

setup(
    name="layoutlmv3-pretraining",
    version="0.1.0",
    description="A from-scratch LayoutLMv3 pretraining system: model, tokenizer, MLM/MIM/WPA, DeepSpeed, FUNSD",
    python_requires=">=3.10",
    packages=find_packages(include=["layoutlmv3", "layoutlmv3.*", "data_prep", "data_prep.*", "launch"]),
    entry_points={
        "console_scripts": [
            "layoutlmv3-pretrain = launch.pretrain:main",
            "layoutlmv3-convert = launch.convert:main",
            "layoutlmv3-finetune = launch.finetune:main",
            "layoutlmv3-predict = launch.predict:main",
            "layoutlmv3-train-image-tokenizer = launch.train_image_tokenizer:main",
            "layoutlmv3-classify = launch.classify:main",
            "layoutlmv3-answer = launch.answer:main",
            "layoutlmv3-probe-checkpoints = launch.probe_checkpoints:main",
            "layoutlmv3-smoke = launch.demo:main",
            "layoutlmv3-build-shards = data_prep.build_shards:main",
            "layoutlmv3-merge-manifests = data_prep.merge_manifests:main",
            "layoutlmv3-synth = data_prep.synth.__main__:main",
        ]
    },
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
