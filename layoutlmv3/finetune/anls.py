"""ANLS, the DocVQA metric (Biten et al., "Scene Text Visual Question Answering", 2019): per question the best,
over its accepted answers, of 1 - normalised Levenshtein distance, counted as 0 below the threshold (a wrong
answer that shares a few characters earns nothing); the mean over questions. Case and surrounding spaces are
ignored, as the official evaluation does."""

from __future__ import annotations

from collections.abc import Sequence

THRESHOLD = 0.5


def levenshtein(a: str, b: str) -> int:
    """Edits (insert, delete, substitute) turning `a` into `b`."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def answer_similarity(prediction: str, answers: Sequence[str], threshold: float = THRESHOLD) -> float:
    """One question's score: the best 1 - NL over its answers, 0 where NL >= threshold."""
    guess = " ".join(prediction.lower().split())
    best = 0.0
    for answer in answers:
        gold = " ".join(answer.lower().split())
        length = max(len(gold), len(guess))
        distance = levenshtein(gold, guess) / length if length else 0.0
        best = max(best, 1 - distance if distance < threshold else 0.0)
    return best


def anls(predictions: Sequence[str], answers: Sequence[Sequence[str]], threshold: float = THRESHOLD) -> float:
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    if not predictions:
        return 0.0
    return sum(answer_similarity(p, a, threshold) for p, a in zip(predictions, answers, strict=True)) / len(answers)
