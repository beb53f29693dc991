"""Extractive question answering on pages (DocVQA's task): questions, their pages and accepted answers, the
answer located as a span of the page's OCR words, windows of question + page, and the best span read back.

Layout of a split (DocVQA's): one JSON file ``{split}/{split}.json`` (or ``*_v1.0.json``) holding
``{"data": [{"questionId", "question", "image": "documents/NAME.png", "answers": [...]}, ...]}``, images relative
to the split, each page's words in NAME.json beside it (`page_layout.read_words`' format). In training an answer
is the first run of words whose text equals an accepted answer (case and spaces aside); a question whose answer
is not on the page as words trains the model to point at <s> (no answer), and is still scored (ANLS). An entry's
"image" must stay inside the split (`layoutlmv3.data_roots`): one reaching out is refused naming the file and entry.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from layoutlmv3.data_roots import inside_root
from layoutlmv3.json_files import read_json_file
from layoutlmv3.page_layout import words_file
from layoutlmv3.processing import LayoutLMv3Processor
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer

from .classes import page_words

MAX_ANSWER_WORDS = 12  # a predicted span longer than this many words is not considered
CANDIDATES = 20  # best start and end positions per window whose pairs are considered


@dataclass
class Question:
    id: str
    question: str
    image_path: Path
    words: list[str]
    boxes: list[list[int]]  # 0..1000
    answers: list[str]
    span: tuple[int, int] | None  # first and last word of the located answer


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def locate_answer(words: Sequence[str], answers: Sequence[str]) -> tuple[int, int] | None:
    """The first run of words that reads as one of the answers (case and spacing aside), or None."""
    targets = {_normal(answer) for answer in answers if answer.strip()}
    longest = max((len(target.split()) for target in targets), default=0)
    normal = [_normal(word) for word in words]
    for start in range(len(words)):
        for end in range(start, min(start + longest, len(words))):
            if " ".join(normal[start : end + 1]) in targets:
                return start, end
    return None


def question_file(split_dir: Path) -> Path:
    """The split's question JSON: {split}.json, or DocVQA's {split}_v1.0.json."""
    for name in (f"{split_dir.name}.json", f"{split_dir.name}_v1.0.json"):
        if (split_dir / name).is_file():
            return split_dir / name
    raise FileNotFoundError(f"{split_dir} has no {split_dir.name}.json (DocVQA's layout: {{'data': [questions]}})")


def question_entries(split_dir: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The split's question file and its entries, checked: each has an "image" (a path inside the split) and a
    non-empty "question", and "answers" (optional: DocVQA withholds the test split's) is a list of strings; a bad
    entry is named. Each entry's page is at `entry_image`."""
    source = question_file(split_dir)
    data = read_json_file(source)  # broken JSON: JsonFileError (a ValueError) naming the file
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f'{source}: expected DocVQA\'s {{"data": [{{"question", "image", "answers"}}, ...]}}')
    for index, entry in enumerate(entries):
        problem = (
            "is not an object" if not isinstance(entry, dict)
            else 'has no "image" (the page, relative to the split)' if not isinstance(entry.get("image"), str)
            else 'has no "question" text' if not str(entry.get("question", "")).strip()
            else '"answers" must be a list of strings' if not _string_list(entry.get("answers", []))
            else None
        )  # fmt: skip
        if problem:
            raise ValueError(f"{source}: question {index} ({str(entry)[:80]}) {problem}")
        entry_image(split_dir, source, index, entry)  # refused now if it leads outside the split
    return source, entries


def entry_image(split_dir: Path, source: Path, index: int, entry: dict[str, Any]) -> Path:
    """The page of question `index` of `source`: its "image" under the split, refused if it leads outside it."""
    return inside_root(split_dir, entry["image"], f"{source}: question {index}", beside=words_file)


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str | int | float) for item in value)


def question_images(split_dir: Path) -> list[Path]:
    """The page images a split's questions are about."""
    source, entries = question_entries(split_dir)
    return sorted({entry_image(split_dir, source, index, entry) for index, entry in enumerate(entries)})


def read_questions(split_dir: str | Path, boxes: str = "segment") -> list[Question]:
    split_dir = Path(split_dir)
    source, entries = question_entries(split_dir)
    pages: dict[Path, tuple[list[str], list[list[int]]]] = {}
    questions = []
    for index, entry in enumerate(entries):
        image = entry_image(split_dir, source, index, entry)
        if image not in pages:
            pages[image] = page_words(image, boxes)
        words, page_boxes = pages[image]
        answers = [str(answer) for answer in entry.get("answers", [])]
        questions.append(
            Question(
                str(entry.get("questionId", len(questions))),
                str(entry["question"]),
                image,
                words,
                page_boxes,
                answers,
                locate_answer(words, answers),
            )  # fmt: skip
        )
    if not questions:
        raise ValueError(f"{source} holds no questions")
    return questions


class QuestionWindows(Dataset):
    """Every window of every question, with the answer's first and last token in it (0, <s>, when the answer is
    not in this window or not on the page) and which question it belongs to: the page processor's one call per
    page, with all the page's questions (its words tokenised once for all of them); `size` None (a text-only
    model) reads no page image."""

    def __init__(
        self,
        questions: Sequence[Question],
        tokenizer: LayoutLMv3Tokenizer,
        max_length: int,
        stride: int,
        size: int | None,
    ) -> None:
        processor = LayoutLMv3Processor(tokenizer, size or 224, max_length, stride)
        self.questions = list(questions)
        by_page: dict[Path, list[int]] = {}
        for number, question in enumerate(self.questions):
            by_page.setdefault(question.image_path, []).append(number)
        windows: dict[int, list[dict[str, torch.Tensor]]] = {}
        for path, numbers in by_page.items():
            asked = [self.questions[number] for number in numbers]  # the questions of a page share its words
            with Image.open(path) if size is not None else nullcontext() as image:
                inputs = processor(
                    image,
                    asked[0].words,
                    asked[0].boxes,
                    boxes_normalized=True,
                    questions=[question.question for question in asked],
                    answer_spans=[question.span for question in asked],
                )
            for row in range(len(inputs.input_ids)):
                item = inputs.window(row)
                number = numbers[int(item["question"])]
                windows.setdefault(number, []).append({**item, "question": torch.tensor(number)})
        self.items = [item for number in range(len(self.questions)) for item in windows[number]]

    def keep_answerless(self, fraction: float, seed: int) -> None:
        """Keep a seeded `fraction` of the windows that point at <s> (the answer not in them), all the others.

        A long page cut into short windows makes most windows answerless; trained on all of them, a small model
        first learns to say "no answer" and learns to find answers far later (BENCHMARKS.md)."""
        if fraction >= 1:
            return
        rng = random.Random(seed)
        self.items = [item for item in self.items if int(item["start_positions"]) > 0 or rng.random() < fraction]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self.items)


def best_answers(
    questions: Sequence[Question],
    windows: Sequence[Mapping[str, torch.Tensor]],
    logits: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> list[str]:
    """Per question, the words of the span with the highest start + end logit over all its windows (dataset items:
    a QuestionWindows, or the windows of the page processor's call), among the CANDIDATES best starts and ends on
    page words (at most MAX_ANSWER_WORDS long; "" for a page without words)."""
    best: list[tuple[float, str]] = [(-float("inf"), "") for _ in questions]
    for item, (start_logits, end_logits) in zip(windows, logits, strict=True):
        number, word_ids = int(item["question"]), item["word_ids"]
        on_words = word_ids >= 0
        if not on_words.any():
            continue
        words = questions[number].words
        k = min(CANDIDATES, int(on_words.sum()))
        starts = start_logits.masked_fill(~on_words, -float("inf")).topk(k).indices.tolist()
        ends = end_logits.masked_fill(~on_words, -float("inf")).topk(k).indices.tolist()
        for i in starts:
            for j in ends:
                first, last = int(word_ids[i]), int(word_ids[j])
                if j < i or last - first >= MAX_ANSWER_WORDS:
                    continue
                score = float(start_logits[i] + end_logits[j])
                if score > best[number][0]:
                    best[number] = (score, " ".join(words[first : last + 1]))
    return [text for _, text in best]
