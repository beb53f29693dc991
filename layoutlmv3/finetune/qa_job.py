"""Extractive question answering (DocVQA's task) as a job of the one trainer: `LayoutLMv3ForQuestionAnswering`
over windows of question + page, ANLS (the DocVQA metric) selects the kept model and scores the test split.
Questions, answer spans and windows: `finetune.qa`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from layoutlmv3.model import LayoutLMv3ForQuestionAnswering
from layoutlmv3.training.engine import Training

from .anls import anls
from .config import FinetuneConfig
from .dataset import image_size, model_config, model_inputs
from .qa import QuestionWindows, best_answers, read_questions
from .splits import split_dev
from .task_base import FinetuneJobBase, SelectionTask, sharded_map

logger = logging.getLogger(__name__)

SPAN_LABELS = ("start", "end")  # the head's two outputs


class QuestionAnsweringJob(FinetuneJobBase):
    """train/, test/ (and val/ as the dev split, else a seeded fraction of train's pages' questions)."""

    model_class = LayoutLMv3ForQuestionAnswering

    def __init__(self, config: FinetuneConfig) -> None:
        data = config.data
        if not data.dir:
            raise ValueError("data.dir is not set: a DocVQA-layout root with train/ and test/")
        root = Path(data.dir)
        train = read_questions(root / "train", data.boxes)
        dev = read_questions(root / "val", data.boxes) if (root / "val").is_dir() else None
        if dev is None:  # held out by page: no dev question about a page the model trained on
            train, dev = split_dev(train, data.dev_fraction, config.train.seed, key=lambda q: str(q.image_path))
        self.questions = {"train": train, "dev": dev, "test": read_questions(root / "test", data.boxes)}
        for name, questions in self.questions.items():
            if not any(question.answers for question in questions):
                logger.warning(
                    "the %s split has no answers (DocVQA withholds its test answers): its ANLS reads 0; the "
                    "predictions are in results.json's examples and launch/answer.py gives them all",
                    name,
                )
        located = sum(question.span is not None for question in train)
        if not located:  # nothing to learn from: every window would teach "no answer here"
            raise ValueError(
                f"none of the {len(train)} training answers is found on its page as a run of the page's words "
                f"(answers missing, or not what the words files say: compare {root / 'train'}'s answers with them)"
            )
        logger.info("questions: %s; %d of %d training answers found as page words",
                    ", ".join(f"{len(q)} {n}" for n, q in self.questions.items()), located, len(train))  # fmt: skip
        super().__init__(config, SPAN_LABELS)
        size = image_size(self.model.config)
        self.datasets = {
            name: QuestionWindows(questions, self.tokenizer, data.max_length, data.stride, size)
            for name, questions in self.questions.items()
        }
        windows = self.datasets["train"]
        before = len(windows)
        windows.keep_answerless(data.answerless_windows, config.train.seed)
        if not windows.items:
            raise ValueError("no training window left: data.answerless_windows is 0 and no answer lies in a window")
        answerless = sum(int(item["start_positions"]) == 0 for item in windows.items)
        logger.info("training on %d of %d windows (%d without the answer; data.answerless_windows %g)",
                    len(windows), before, answerless, data.answerless_windows)  # fmt: skip

    def make_task(self, training: Training) -> QuestionAnsweringTask:
        return QuestionAnsweringTask(self, training)


class QuestionAnsweringTask(SelectionTask):
    """Cross-entropy of the answer's start and end token; ANLS selects."""

    metric = "anls"

    def forward(self, batch: dict) -> list[torch.Tensor]:
        config, targets = self.job.model.config, ("start_positions", "end_positions")
        inputs = model_inputs(batch, config, self.training.device, self.training.dtype, targets)
        return [self.training.engine(**inputs).loss]

    def score(self, model: torch.nn.Module, split: str, lockstep: bool) -> dict:
        windows, questions = self.job.datasets[split], self.job.questions[split]
        logits = sharded_map(
            lambda batch: _span_logits(model, batch), windows, self.training.micro_batch_size, lockstep
        )
        predicted = best_answers(questions, windows, logits)
        normal = lambda text: " ".join(text.lower().split())  # noqa: E731  (as ANLS compares)
        exact = sum(normal(p) in {normal(a) for a in q.answers} for p, q in zip(predicted, questions, strict=True))
        return {
            "anls": anls(predicted, [question.answers for question in questions]),
            "exact": exact / len(questions),
            "examples": [
                {"question": q.question, "predicted": p, "answers": q.answers}
                for q, p in list(zip(questions, predicted))[:5]
            ],  # fmt: skip
        }


@torch.no_grad()
def _span_logits(model: torch.nn.Module, batch: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    parameter = next(model.parameters())
    output = model(**model_inputs(batch, model_config(model), parameter.device, parameter.dtype))
    text = batch["input_ids"].shape[1]  # the head scores visual positions too; answers are text
    return list(
        zip(output.start_logits[:, :text].float().cpu(), output.end_logits[:, :text].float().cpu(), strict=True)
    )
