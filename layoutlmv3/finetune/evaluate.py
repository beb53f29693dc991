"""Window predictions -> one label per word -> entity-level precision / recall / F1 (seqeval, CoNLL rules).

A word's prediction is its first sub-token's class distribution, averaged over the windows that hold that
sub-token (overlapping windows see it twice). The token at the start of a later window may be the middle of a
word cut by the window boundary, so it is used only when no window holds the word's start.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

from layoutlmv3.constants import NO_WORD

from .dataset import model_config, model_inputs


@dataclass
class WordPredictions:
    """Per word of one page: the label index and its probability (the merged distribution's maximum)."""

    labels: list[int]
    confidences: list[float]


@dataclass
class _Votes:
    clean: list[torch.Tensor] = field(default_factory=list)
    cut: list[torch.Tensor] = field(default_factory=list)


def merge_windows(
    num_words: int, windows: Iterable[tuple[int, torch.Tensor, torch.Tensor]], default: int = 0
) -> WordPredictions:
    """`windows`: (window index within the page, word_ids [T], probabilities [T, labels]) in page order.
    Words no window covers (none, unless the page was truncated) get `default` with confidence 0."""
    votes = [_Votes() for _ in range(num_words)]
    for window_index, word_ids, probabilities in windows:
        previous = NO_WORD
        for position, word in enumerate(word_ids.tolist()):
            if word != NO_WORD and word != previous:
                cut = window_index > 0 and position == 1  # may continue a word the previous window began
                (votes[word].cut if cut else votes[word].clean).append(probabilities[position])
            previous = word
    labels, confidences = [], []
    for vote in votes:
        chosen = vote.clean or vote.cut
        if not chosen:
            labels.append(default)
            confidences.append(0.0)
            continue
        mean = torch.stack(chosen).mean(0)
        labels.append(int(mean.argmax()))
        confidences.append(float(mean.max()))
    return WordPredictions(labels, confidences)


WindowRow = tuple[int, torch.Tensor, torch.Tensor]  # (page index, word_ids [T], probabilities [T, labels])


@torch.no_grad()
def window_rows(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[WindowRow]:
    """One batch of windows through `model`: a row per window with its class probabilities (on the CPU)."""
    parameter = next(model.parameters())  # where the model runs, and its floating dtype (bf16 under DeepSpeed's)
    logits = model(**model_inputs(batch, model_config(model), parameter.device, parameter.dtype)).logits
    probabilities = logits.float().softmax(-1).cpu()
    return [(page, batch["word_ids"][row], probabilities[row]) for row, page in enumerate(batch["page"].tolist())]


def merge_pages(words_per_page: Sequence[int], rows: Iterable[WindowRow]) -> list[WordPredictions]:
    """Window rows in dataset order (the windows of a page consecutive, in page order) -> words of every page."""
    per_page: list[list[tuple[int, torch.Tensor, torch.Tensor]]] = [[] for _ in words_per_page]
    for page, word_ids, probabilities in rows:
        per_page[page].append((len(per_page[page]), word_ids, probabilities))
    return [merge_windows(count, windows) for count, windows in zip(words_per_page, per_page, strict=True)]


@torch.no_grad()
def predict_pages(
    model: torch.nn.Module, loader: Iterable[dict[str, torch.Tensor]], words_per_page: Sequence[int]
) -> list[WordPredictions]:
    """Run `model` over a loader of windows (dataset order: windows of one page are consecutive) and merge."""
    model.eval()
    return merge_pages(words_per_page, (row for batch in loader for row in window_rows(model, batch)))


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """Entity-level micro precision / recall / F1 and seqeval's per-class report (as a dict)."""
    return {
        "precision": float(precision_score(gold, predicted)),
        "recall": float(recall_score(gold, predicted)),
        "f1": float(f1_score(gold, predicted)),
        "per_class": {
            name: {key: float(value) for key, value in row.items()}
            for name, row in classification_report(gold, predicted, output_dict=True, zero_division=0).items()
        },
    }


def evaluate(
    model: torch.nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    pages: Sequence,
    label_names: Sequence[str],
) -> dict:
    """Scores of `model` on `pages` (objects with `.words` and `.labels`), windows from `loader`."""
    return score_pages(predict_pages(model, loader, [len(page.words) for page in pages]), pages, label_names)


def score_pages(predictions: Sequence[WordPredictions], pages: Sequence, label_names: Sequence[str]) -> dict:
    """Entity scores of per-word predictions against the pages' gold labels."""
    gold = [[label_names[label] for label in page.labels] for page in pages]
    predicted = [[label_names[label] for label in words.labels] for words in predictions]
    return entity_scores(gold, predicted)
