"""The one page processor equals transformers' LayoutLMv3Processor(apply_ocr=False): the same pixel values, the
same 0..1000 boxes (our normalize_box against its normalize_box) and the same tokens, on FUNSD pages and on
synthetic ones; every path that makes page images uses its one resampling filter; and every fine-tuning dataset
and every predictor makes its inputs through the processor's one call."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers.models.layoutlmv3 import image_processing_pil_layoutlmv3 as hf_images

from data_prep.samples import encode_png
from data_prep.synth import generate_page
from layoutlmv3.finetune.answerer import Answerer
from layoutlmv3.finetune.classes import ClassifiedPage
from layoutlmv3.finetune.classifier import Classifier
from layoutlmv3.finetune.classify_job import PageDataset
from layoutlmv3.finetune.dataset import WindowDataset
from layoutlmv3.finetune.funsd import Page as FunsdPage
from layoutlmv3.finetune.predict import Predictor
from layoutlmv3.finetune.qa import Question, QuestionWindows
from layoutlmv3.model import (
    LayoutLMv3Config,
    LayoutLMv3ForQuestionAnswering,
    LayoutLMv3ForSequenceClassification,
    LayoutLMv3ForTokenClassification,
)
from layoutlmv3.page_layout import Word, normalize_box
from layoutlmv3.processing import PROCESSING_FILE, LayoutLMv3Processor, page_pixels, processing_settings, resize_page
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer, train_bpe


def _hf_processor(vocab_dir: Path) -> transformers.LayoutLMv3Processor:
    images = hf_images.LayoutLMv3ImageProcessorPil(apply_ocr=False)
    return transformers.LayoutLMv3Processor(images, transformers.LayoutLMv3Tokenizer.from_pretrained(vocab_dir))


def _compare(ours: LayoutLMv3Processor, hf, image: Image.Image, words: list[str], boxes: list) -> None:
    width, height = image.size
    assert [normalize_box(box, width, height) for box in boxes] == [
        hf_images.normalize_box(b, width, height) for b in boxes
    ]
    mine = ours(image, words, boxes)
    theirs = hf(
        image.convert("RGB"),
        words,
        boxes=[hf_images.normalize_box(box, width, height) for box in boxes],
        truncation=True,
        max_length=512,
        padding="max_length",
        return_tensors="pt",
    )
    assert torch.allclose(mine.pixel_values, theirs["pixel_values"][0], atol=1e-6)
    assert torch.equal(mine.input_ids[0], theirs["input_ids"][0])
    assert torch.equal(mine.bbox[0], theirs["bbox"][0])
    assert torch.equal(mine.attention_mask[0], theirs["attention_mask"][0])


def test_equal_to_transformers_on_funsd_pages(funsd_dir: Path, roberta_vocab_dir: Path) -> None:
    ours = LayoutLMv3Processor(LayoutLMv3Tokenizer.from_pretrained(roberta_vocab_dir))
    hf = _hf_processor(roberta_vocab_dir)
    annotations = sorted((funsd_dir / "training_data" / "annotations").glob("*.json"))[:6]
    for path in annotations:
        form = json.loads(path.read_text(encoding="utf-8"))["form"]
        words = [(w["text"], w["box"]) for entity in form for w in entity["words"] if w["text"].strip()]
        with Image.open(funsd_dir / "training_data" / "images" / f"{path.stem}.png") as image:
            _compare(ours, hf, image, [text for text, _ in words], [box for _, box in words])


def test_equal_to_transformers_on_synthetic_pages(roberta_vocab_dir: Path) -> None:
    ours = LayoutLMv3Processor(LayoutLMv3Tokenizer.from_pretrained(roberta_vocab_dir))
    hf = _hf_processor(roberta_vocab_dir)
    for index in range(2):
        page = generate_page(5, index)
        words = [word for entity in page.entities for word in entity.words]
        _compare(ours, hf, page.image, [word.text for word in words], [list(word.box) for word in words])


def test_every_stored_page_image_is_the_processors_resize() -> None:
    """Shard images (pretraining) and fine-tuning / prediction pixels come from the same squashed page."""
    image = generate_page(5, 0).image.convert("RGB")
    with Image.open(io.BytesIO(encode_png(image, 224))) as stored:
        stored_pixels = np.array(stored.convert("RGB"), dtype=np.uint8)
    assert np.array_equal(stored_pixels, np.asarray(resize_page(image, 224)))
    fed = page_pixels(image)
    assert torch.allclose(fed, torch.from_numpy(stored_pixels).permute(2, 0, 1).float() / 127.5 - 1, atol=1e-6)


# ---------------------------------------------------------------- every task and predictor goes through the call


@pytest.fixture(scope="module")
def synthetic_pages(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, list[str], list[list[int]]]]:
    """Two synthetic pages saved as PNG: (image path, words, 0..1000 boxes)."""
    root = tmp_path_factory.mktemp("through_the_call")
    pages = []
    for index in range(2):
        page = generate_page(7, index)
        path = root / f"page{index}.png"
        page.image.save(path)
        words = [word for entity in page.entities for word in entity.words if word.text.strip()]
        boxes = [normalize_box(word.box, *page.image.size) for word in words]
        pages.append((path, [word.text for word in words], boxes))
    return pages


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory, synthetic_pages) -> dict[str, Path]:
    """Tiny fine-tuned-looking model directories (a head, label names, a tokenizer) for the three predictors."""
    root = tmp_path_factory.mktemp("predictor_models")
    tokenizer = train_bpe([word for _, words, _ in synthetic_pages for word in words], vocab_size=400)
    heads = {
        "entities": (LayoutLMv3ForTokenClassification, ("O", "B-QUESTION", "I-QUESTION")),
        "classes": (LayoutLMv3ForSequenceClassification, ("form", "letter")),
        "questions": (LayoutLMv3ForQuestionAnswering, ("start", "end")),
    }
    dirs = {}
    for task, (model_class, labels) in heads.items():
        config = LayoutLMv3Config.from_flavor(
            "tiny", vocab_size=tokenizer.vocab_size, num_labels=len(labels), id2label=dict(enumerate(labels))
        )
        model_class(config).save_pretrained(root / task)
        tokenizer.save_pretrained(root / task)
        dirs[task] = root / task
    return dirs


class CallSpy:
    """Wraps LayoutLMv3Processor.__call__: each PageInputs it returns gets input ids no tokenizer would make
    (drawn at random), so inputs equal to them can only have come through the call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, vocab_size: int) -> None:
        self.returned: list = []
        original, generator = LayoutLMv3Processor.__call__, torch.Generator().manual_seed(0)

        def spied(processor, *args, **kwargs):
            inputs = original(processor, *args, **kwargs)
            inputs.input_ids = torch.randint(3, vocab_size, inputs.input_ids.shape, generator=generator)
            self.returned.append(inputs)
            return inputs

        monkeypatch.setattr(LayoutLMv3Processor, "__call__", spied)

    def rows(self, name: str) -> list[torch.Tensor]:
        return [row for inputs in self.returned for row in getattr(inputs, name)]


def _same_rows(made: list[torch.Tensor], returned: list[torch.Tensor]) -> bool:
    return len(made) == len(returned) > 0 and all(torch.equal(a, b) for a, b in zip(made, returned, strict=True))


def _forward_inputs(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    """The keyword inputs of every forward pass of `model` from now on."""
    seen, forward = [], model.forward
    monkeypatch.setattr(model, "forward", lambda **inputs: seen.append(inputs) or forward(**inputs))
    return seen


def _read(seen: list[dict[str, torch.Tensor]], name: str) -> torch.Tensor:
    """Input `name` over all forwards, in order (a predictor runs a page's windows a few at a time)."""
    return torch.cat([inputs[name] for inputs in seen])


def test_every_training_dataset_makes_its_inputs_through_the_processors_call(
    synthetic_pages, model_dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entities, classes and questions: each dataset's windows are rows of what the call returned (input ids,
    word ids, labels, answer positions), one call per page."""
    tokenizer = LayoutLMv3Tokenizer.from_pretrained(model_dirs["entities"])
    entity_pages = [
        FunsdPage(str(n), path, words, boxes, [n % 3 for n in range(len(words))])
        for n, (path, words, boxes) in enumerate(synthetic_pages)
    ]
    spy = CallSpy(monkeypatch, tokenizer.vocab_size)
    windows = WindowDataset(entity_pages, tokenizer, 64, 16, continuation=[0, 2, 2])
    assert len(spy.returned) == len(entity_pages)
    for name in ("input_ids", "bbox", "word_ids", "labels"):
        assert _same_rows([getattr(window, name) for window in windows.windows], spy.rows(name))
    assert torch.equal(windows[0]["pixel_values"], spy.returned[0].pixel_values)

    spy = CallSpy(monkeypatch, tokenizer.vocab_size)
    classified = [
        ClassifiedPage(str(n), path, words, boxes, n) for n, (path, words, boxes) in enumerate(synthetic_pages)
    ]
    pages = PageDataset(classified, tokenizer, 64, 224)
    assert len(spy.returned) == len(classified)
    for name in ("input_ids", "bbox", "attention_mask", "labels"):
        assert _same_rows([item[name] for item in pages.items], [getattr(inputs, name)[0] for inputs in spy.returned])
    assert [int(item["labels"]) for item in pages.items] == [0, 1]

    spy = CallSpy(monkeypatch, tokenizer.vocab_size)
    questions = [
        Question(f"{n}{k}", f"What is {words[k]}?", path, words, boxes, [words[k + 1]], (k + 1, k + 1))
        for n, (path, words, boxes) in enumerate(synthetic_pages)
        for k in (0, 5)
    ]
    asked = QuestionWindows(questions, tokenizer, 64, 16, 224)
    assert len(spy.returned) == len(synthetic_pages)  # one call per page, for all its questions
    for name in ("input_ids", "bbox", "word_ids", "start_positions", "end_positions"):
        assert _same_rows([item[name] for item in asked.items], spy.rows(name))
    assert any(int(item["start_positions"]) > 0 for item in asked.items)


def test_every_predictor_makes_its_inputs_through_the_processors_call(
    synthetic_pages, model_dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entities, classes and answers on a new page: what the model reads is what the call returned."""
    path, texts, _ = synthetic_pages[0]
    page = Image.open(path)
    words = [Word(text, (10 + 8 * (n % 60), 10 + 12 * (n // 60), 16 + 8 * (n % 60), 20 + 12 * (n // 60)), n // 60)
             for n, text in enumerate(texts)]  # fmt: skip
    vocab_size = LayoutLMv3Tokenizer.from_pretrained(model_dirs["entities"]).vocab_size

    predictor = Predictor(model_dirs["entities"], max_length=32, stride=8)
    seen = _forward_inputs(predictor.model, monkeypatch)
    spy = CallSpy(monkeypatch, vocab_size)
    predictor.predict(page, words)
    (inputs,) = spy.returned
    assert len(inputs.input_ids) > 1 and torch.equal(_read(seen, "input_ids"), inputs.input_ids)
    assert torch.equal(seen[0]["pixel_values"][0], inputs.pixel_values)

    classifier = Classifier(model_dirs["classes"], max_length=32)
    seen = _forward_inputs(classifier.model, monkeypatch)
    spy = CallSpy(monkeypatch, vocab_size)
    classifier.classify(page, words)
    (inputs,) = spy.returned
    assert torch.equal(seen[0]["input_ids"], inputs.input_ids[:1]) and torch.equal(seen[0]["bbox"], inputs.bbox[:1])

    answerer = Answerer(model_dirs["questions"], max_length=48, stride=8)
    seen = _forward_inputs(answerer.model, monkeypatch)
    spy = CallSpy(monkeypatch, vocab_size)
    assert len(answerer.answer(page, words, ["What is the date?", "Who signed?"])) == 2
    (inputs,) = spy.returned
    assert int(inputs.question.max()) == 1 and torch.equal(_read(seen, "input_ids"), inputs.input_ids)


@pytest.mark.parametrize(
    ("saved", "message"),
    [("[128]", "expected a JSON object"), ('{"max_length": "128"}', "max_length must be int"),
     ('{"stride": true}', "stride must be int"), ('{"boxes": 3}', "boxes must be str"),
     ('{"max_length": NaN}', "NaN")],
)  # fmt: skip
def test_a_model_directorys_processing_settings_of_the_wrong_kind_are_named(tmp_path, saved, message) -> None:
    """processing.json comes with a model from elsewhere: a wrong kind is an error naming the file and the setting,
    never a TypeError deep in the processor."""
    (tmp_path / PROCESSING_FILE).write_text(saved)
    with pytest.raises(ValueError, match=message) as raised:
        processing_settings(tmp_path)
    assert str(tmp_path / PROCESSING_FILE) in str(raised.value)
    (tmp_path / PROCESSING_FILE).write_text('{"max_length": 128}')
    assert processing_settings(tmp_path, stride=8) == {"max_length": 128, "stride": 8, "boxes": "segment"}
