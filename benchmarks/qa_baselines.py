"""Question-answering baselines on a DocVQA-layout root: what ANLS a model must beat to be said to answer.

  most frequent answer   the training split's most common answer, for every question (no page, no question)
  question-blind value   an answer asked about on the same page, drawn at random (ANLS averaged over the page's
                         answers): a model that has learnt where values sit but not which one is asked
  key rule               the words right after the question's key on the page (reads the question, knows the
                         answer's length): roughly what reading the question is worth on the synthetic forms

    python benchmarks/qa_baselines.py --data outputs/finetune/tiny_qa/synthetic

Prints a markdown table (BENCHMARKS.md) for the test split.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

from layoutlmv3.finetune.anls import anls, answer_similarity
from layoutlmv3.finetune.qa import Question, read_questions


def most_frequent_answer(train: list[Question], test: list[Question]) -> float:
    counts = collections.Counter(answer for question in train for answer in question.answers[:1])
    answer = counts.most_common(1)[0][0] if counts else ""
    return anls([answer] * len(test), [question.answers for question in test])


def question_blind_value(test: list[Question]) -> float:
    """Expected ANLS of answering with a uniformly drawn answer of the page's questions."""
    by_page: dict[Path, list[str]] = collections.defaultdict(list)
    for question in test:
        by_page[question.image_path] += question.answers[:1]
    scores = [
        sum(answer_similarity(guess, question.answers) for guess in by_page[question.image_path])
        / len(by_page[question.image_path])
        for question in test
    ]
    return sum(scores) / len(scores)


def key_rule(test: list[Question]) -> float:
    """The words after the first run of page words that reads as the question's key ("What is the KEY?")."""
    guesses = []
    for question in test:
        match = re.fullmatch(r"What is the (.+)\?", question.question.strip())
        key = match.group(1).lower().split() if match else []
        words = [word.lower().rstrip(":") for word in question.words]
        length = len(question.answers[0].split()) if question.answers else 1
        guess = ""
        for start in range(len(words) - len(key) + 1):
            if key and words[start : start + len(key)] == key:
                after = start + len(key)
                guess = " ".join(question.words[after : after + length])
                break
        guesses.append(guess)
    return anls(guesses, [question.answers for question in test])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a DocVQA-layout root with train/ and test/")
    args = parser.parse_args()
    train, test = read_questions(args.data / "train"), read_questions(args.data / "test")
    print(f"{len(test)} test questions on {len({q.image_path for q in test})} pages\n")
    print("| baseline | test ANLS |\n|---|---|")
    print(f"| most frequent training answer | {most_frequent_answer(train, test):.3f} |")
    print(f"| question-blind: a value asked about on the page, at random | {question_blind_value(test):.3f} |")
    print(f"| key rule: the words after the question's key | {key_rule(test):.3f} |")


if __name__ == "__main__":
    main()
