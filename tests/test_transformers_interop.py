"""Where transformers users meet our models: a converted directory is transformers' own, and our classes save,
load and answer as transformers' do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from launch.convert import main as convert_main
from layoutlmv3.model import (
    LayoutLMv3Config,
    LayoutLMv3ForQuestionAnswering,
    LayoutLMv3ForSequenceClassification,
    LayoutLMv3ForTokenClassification,
    LayoutLMv3Model,
)
from layoutlmv3.processing import LayoutLMv3Processor
from layoutlmv3.tokenizer import train_bpe

TOLERANCE = 1e-5
WORDS = ["alpha", "beta", "gamma", "total", "date"]
BOXES = [[10, 20, 110, 60], [130, 20, 250, 60], [10, 80, 200, 120], [600, 900, 700, 950], [300, 400, 420, 440]]
LENGTH = 24
# Run with nothing of this project importable (cwd is a temporary folder): transformers alone loads each directory
# with the Auto class a transformers user would pick, runs it on our inputs, and prepares the page itself.
TRANSFORMERS_ONLY = """
import json, sys
import torch, transformers
from PIL import Image
from safetensors.torch import load_file, save_file
root = sys.argv[1]
job = json.load(open(f"{root}/job.json"))
inputs = load_file(f"{root}/inputs.safetensors")
outputs = {}
for name, auto_class in job["models"].items():
    directory = f"{root}/{name}"
    assert transformers.AutoConfig.from_pretrained(directory).model_type == "layoutlmv3"
    model = getattr(transformers, auto_class).from_pretrained(directory).eval()
    with torch.no_grad():
        answer = model(**inputs)
    for field in ("last_hidden_state", "logits", "start_logits", "end_logits"):
        if getattr(answer, field, None) is not None:
            outputs[f"{name}.{field}"] = answer[field].contiguous()
directory = f"{root}/{next(iter(job['models']))}"
processor = transformers.AutoProcessor.from_pretrained(directory)
assert type(processor).__name__ == "LayoutLMv3Processor" and not processor.image_processor.apply_ocr
assert type(transformers.AutoTokenizer.from_pretrained(directory)).__name__.startswith("LayoutLMv3Tokenizer")
page = processor(Image.open(f"{root}/page.png"), job["words"], boxes=job["boxes"], padding="max_length",
                 max_length=job["length"], return_tensors="pt")
outputs.update({f"processor.{key}": value.contiguous() for key, value in page.items()})
save_file(outputs, f"{root}/outputs.safetensors")
assert "layoutlmv3" not in sys.modules, "the project's package was imported"
"""


def _page(path: Path) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, size=(300, 240, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return Image.open(path)


def test_a_converted_model_is_transformers_own(tmp_path: Path) -> None:
    """--model DIR --to hf: transformers' AutoConfig, AutoModel*, AutoTokenizer and AutoProcessor load each
    directory in a process that never imports layoutlmv3; its outputs and its page preparation are ours."""
    tokenizer = train_bpe(WORDS * 5, vocab_size=300)
    config = LayoutLMv3Config.from_flavor("tiny", vocab_size=tokenizer.vocab_size, hidden_dropout_prob=0.0,
                                          attention_probs_dropout_prob=0.0)  # fmt: skip
    models = {
        "backbone": (LayoutLMv3Model, {}, "AutoModel"),
        "entities": (LayoutLMv3ForTokenClassification, {"num_labels": 3}, "AutoModelForTokenClassification"),
        "pages": (LayoutLMv3ForSequenceClassification, {"num_labels": 4}, "AutoModelForSequenceClassification"),
        "answers": (LayoutLMv3ForQuestionAnswering, {}, "AutoModelForQuestionAnswering"),
    }
    page = _page(tmp_path / "page.png")
    encoded = LayoutLMv3Processor(tokenizer, max_length=LENGTH, stride=0)(page, WORDS, BOXES, boxes_normalized=True)
    inputs = {name: tensor.contiguous() for name, tensor in encoded.model_inputs().items()}
    expected = {}
    for name, (model_class, head, _) in models.items():
        torch.manual_seed(len(name))
        model = model_class(LayoutLMv3Config.from_dict({**config.to_dict(), **head})).eval()
        model.save_pretrained(tmp_path / "ours" / name)  # as the fine-tuning job keeps best/
        tokenizer.save_pretrained(tmp_path / "ours" / name)
        code = convert_main(["--model", str(tmp_path / "ours" / name), "--to", "hf", "--out", str(tmp_path / name)])
        assert code == 0
        with torch.no_grad():
            answer = model(**inputs)
        expected.update({f"{name}.{field}": value for field, value in answer.items()})
    save_file(inputs, tmp_path / "inputs.safetensors")
    job = {"models": {name: auto for name, (*_, auto) in models.items()}, "words": WORDS, "boxes": BOXES}
    (tmp_path / "job.json").write_text(json.dumps({**job, "length": LENGTH}))
    run = subprocess.run([sys.executable, "-c", TRANSFORMERS_ONLY, str(tmp_path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    theirs = load_file(tmp_path / "outputs.safetensors")

    assert sorted(name for name in theirs if not name.startswith("processor.")) == sorted(expected)
    for name, value in expected.items():
        torch.testing.assert_close(theirs[name], value, atol=TOLERANCE, rtol=0, msg=name)
    for name in ("input_ids", "bbox", "attention_mask"):
        assert torch.equal(theirs[f"processor.{name}"], inputs[name]), name
    torch.testing.assert_close(theirs["processor.pixel_values"], inputs["pixel_values"], atol=TOLERANCE, rtol=0)
