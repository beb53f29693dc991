"""Where transformers users meet our models: a converted directory is transformers' own, and our classes save,
load and answer as transformers' do."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from launch.convert import main as convert_main
from layoutlmv3.model import (
    LayoutLMv3Config,
    LayoutLMv3ForMaskedLM,
    LayoutLMv3ForQuestionAnswering,
    LayoutLMv3ForSequenceClassification,
    LayoutLMv3ForTokenClassification,
    LayoutLMv3Model,
)
from layoutlmv3.processing import LayoutLMv3Processor
from layoutlmv3.tokenizer import train_bpe
from tests.hf_trainer_runs import WORDS, run_trainer, tiny_config
from tests.model_inputs import random_inputs

TOLERANCE = 1e-5
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


def test_a_model_directory_converts_only_to_transformers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    LayoutLMv3Model(LayoutLMv3Config.from_flavor("tiny", vocab_size=300)).save_pretrained(tmp_path / "ours")
    assert convert_main(["--model", str(tmp_path / "ours"), "--out", str(tmp_path / "out")]) == 2
    assert "--to hf" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_trainer_saves_reload_with_both_libraries(tmp_path: Path) -> None:
    """Our Trainer (transformers' with our save) writes save_model() and every checkpoint as a directory
    `from_pretrained` reloads alone, that a resumed run reads back exactly and that converts for transformers; a
    converted model trained with transformers' own class under Trainer comes back into ours."""
    import transformers

    inputs = random_inputs(batch=2, length=48, vocab_size=300, seed=9)
    torch.manual_seed(0)
    model = LayoutLMv3ForTokenClassification(tiny_config(num_labels=3))
    tokenizer = train_bpe(WORDS * 20, vocab_size=300)
    trainer = run_trainer(
        model, tmp_path / "run", processing_class=tokenizer, activation_checkpointing=True, save_strategy="steps",
        save_steps=1,
    )  # fmt: skip
    trainer.save_model(tmp_path / "saved")
    assert (tmp_path / "saved" / "vocab.json").is_file()  # the processing class is saved beside the model
    assert model.config.gradient_checkpointing  # the Trainer switched it on through our method
    for directory in (tmp_path / "saved", tmp_path / "run" / "checkpoint-2"):
        reloaded = LayoutLMv3ForTokenClassification.from_pretrained(directory, trained_head=True)
        with torch.no_grad():
            torch.testing.assert_close(reloaded.eval()(**inputs).logits, model.eval()(**inputs).logits, atol=0, rtol=0)

    torch.manual_seed(1)  # another fresh model: the resumed run must take every weight from checkpoint-1
    fresh = LayoutLMv3ForTokenClassification(tiny_config(num_labels=3))
    resumed = run_trainer(fresh, tmp_path / "run", activation_checkpointing=True, save_strategy="no")
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(**inputs).logits, model(**inputs).logits, atol=1e-6, rtol=0)

    assert convert_main(["--model", str(tmp_path / "saved"), "--to", "hf", "--out", str(tmp_path / "saved-hf")]) == 0
    converted = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "saved-hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(converted(**inputs).logits, model(**inputs).logits, atol=TOLERANCE, rtol=0)

    model.save_pretrained(tmp_path / "hf", format="hf")
    theirs = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "hf")
    run_trainer(theirs, tmp_path / "run-hf").save_model(tmp_path / "saved-by-hf")
    back = LayoutLMv3ForTokenClassification.from_pretrained(tmp_path / "saved-by-hf", trained_head=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(**inputs).logits, theirs.eval()(**inputs).logits, atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_plain_trainer_saves_weights_only_and_the_error_says_what_to_do(tmp_path: Path) -> None:
    """transformers' own Trainer writes only the weights of a module that is not its PreTrainedModel: loading
    names the two ways out (config=, or our Trainer), and with the config given the weights are the model's."""
    import transformers

    torch.manual_seed(0)
    model = LayoutLMv3ForTokenClassification(tiny_config(num_labels=3))
    run_trainer(model, tmp_path / "run", trainer_class=transformers.Trainer).save_model(tmp_path / "saved")
    with pytest.raises(FileNotFoundError, match=r"config=model\.config.*LayoutLMv3Trainer"):
        LayoutLMv3ForTokenClassification.from_pretrained(tmp_path / "saved")
    reloaded = LayoutLMv3ForTokenClassification.from_pretrained(tmp_path / "saved", config=model.config)
    inputs = random_inputs(batch=2, length=48, vocab_size=300, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(**inputs).logits, model.eval()(**inputs).logits, atol=0, rtol=0)


def test_a_head_of_another_size_is_an_error_unless_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """As transformers: num_labels=3 on a 7-label model raises, naming ignore_mismatched_sizes; with it the head is
    initialised afresh with a warning, the backbone loaded."""
    LayoutLMv3ForTokenClassification(tiny_config(num_labels=7)).save_pretrained(tmp_path / "seven")
    with pytest.raises(ValueError, match="ignore_mismatched_sizes"):
        LayoutLMv3ForTokenClassification.from_pretrained(tmp_path / "seven", num_labels=3)
    with caplog.at_level(logging.WARNING, logger="layoutlmv3.model.modeling"):
        three = LayoutLMv3ForTokenClassification.from_pretrained(
            tmp_path / "seven", num_labels=3, ignore_mismatched_sizes=True
        )
    assert three.classifier.linear.out_features == 3
    assert any("newly initialised" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    saved = load_file(tmp_path / "seven" / "model.safetensors")
    assert torch.equal(three.state_dict()["layoutlmv3.encoder.layers.0.ffn_up.weight"],
                       saved["layoutlmv3.encoder.layers.0.ffn_up.weight"])  # fmt: skip


def test_a_fresh_head_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    LayoutLMv3Model(tiny_config()).save_pretrained(tmp_path / "bare")
    with caplog.at_level(logging.WARNING, logger="layoutlmv3.model.modeling"):
        LayoutLMv3ForSequenceClassification.from_pretrained(tmp_path / "bare", num_labels=4)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "newly initialised" in r.message]
    assert warned and "classifier.out_proj.weight" in warned[0].getMessage()


def test_from_pretrained_takes_transformers_arguments_or_names_them(tmp_path: Path) -> None:
    LayoutLMv3ForTokenClassification(tiny_config(num_labels=2)).save_pretrained(tmp_path / "tagger")
    load = LayoutLMv3ForTokenClassification.from_pretrained
    assert next(load(tmp_path / "tagger", torch_dtype=torch.bfloat16).parameters()).dtype == torch.bfloat16
    assert next(load(tmp_path / "tagger", dtype="float16").parameters()).dtype == torch.float16
    assert next(load(tmp_path / "tagger", dtype="auto", device_map="cpu").parameters()).dtype == torch.float32
    labelled = load(tmp_path / "tagger", return_dict=True, id2label={0: "O", 1: "B"}, label2id={"O": 0, "B": 1})
    assert labelled.config.id2label == {0: "O", 1: "B"}
    with pytest.raises(ValueError, match="return_dict=False"):
        load(tmp_path / "tagger", return_dict=False)
    with pytest.raises(ValueError, match="does not support cache_dir"):
        load(tmp_path / "tagger", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="device_map"):
        load(tmp_path / "tagger", device_map={"": 0})


def test_outputs_are_transformers_model_outputs() -> None:
    import transformers

    inputs = random_inputs(batch=1, length=12, vocab_size=300)
    for model in (
        LayoutLMv3Model(tiny_config()),
        LayoutLMv3ForTokenClassification(tiny_config()),
        LayoutLMv3ForSequenceClassification(tiny_config()),
        LayoutLMv3ForQuestionAnswering(tiny_config()),
        LayoutLMv3ForMaskedLM(tiny_config()),
    ):
        with torch.no_grad():
            assert isinstance(model.eval()(**inputs), transformers.utils.ModelOutput), type(model).__name__


def test_the_model_methods_transformers_users_call() -> None:
    """gradient_checkpointing_enable (same gradients, the flag set), get_input_embeddings, resize_token_embeddings
    (old rows kept, tied decoder and config follow)."""
    torch.manual_seed(0)
    model = LayoutLMv3ForMaskedLM(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).train()
    inputs = random_inputs(batch=1, length=12, vocab_size=300)
    labels = inputs["input_ids"].clone()

    def gradients() -> torch.Tensor:
        model.zero_grad()
        model(
            inputs["input_ids"], inputs["bbox"], inputs["attention_mask"], inputs["pixel_values"], labels
        ).loss.backward()
        return model.layoutlmv3.encoder.layers[0].ffn_up.weight.grad.clone()

    plain = gradients()
    assert model.supports_gradient_checkpointing and not model.is_gradient_checkpointing
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_gradient_checkpointing and model.config.gradient_checkpointing
    torch.testing.assert_close(gradients(), plain)
    model.gradient_checkpointing_disable()
    assert not model.config.gradient_checkpointing
    with pytest.raises(ValueError, match="every_n_layers"):
        model.activation_checkpointing_enable(every_n_layers=2)

    words = model.get_input_embeddings()
    assert words is model.layoutlmv3.text_embeddings.word and words.num_embeddings == 300
    before = words.weight.detach().clone()
    resized = model.resize_token_embeddings(310, pad_to_multiple_of=8)
    assert resized is model.get_input_embeddings() and resized.num_embeddings == 312
    assert model.config.vocab_size == 312 and torch.equal(resized.weight[:300], before)
    assert model.mlm_head.decoder.weight is resized.weight and model.mlm_head.decoder.bias.shape == (312,)
    inputs["input_ids"][0, 3] = 311  # a new token
    with torch.no_grad():
        assert model.eval()(inputs["input_ids"], inputs["bbox"], inputs["attention_mask"]).logits.shape[-1] == 312
