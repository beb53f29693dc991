"""What makes the tiny model read the question: a plain-torch training loop over the library's question windows
(no trainer, no DeepSpeed), to try initialisations, dropouts and learning rates in minutes.

  # can the model tell apart the four questions of ONE page (all four in every batch)?
  python benchmarks/qa_training_probe.py --data OUT/synthetic --model outputs/models/tiny --pages 1 \\
      --answered-only --batch 4 --steps 300 --overrides '{"hidden_dropout_prob": 0, "attention_probs_dropout_prob": 0}'
  # the whole training split, dev ANLS every 200 steps (dev: a seeded fifth of the pages, split as the job splits)
  python benchmarks/qa_training_probe.py --data OUT/synthetic --model outputs/models/tiny --init random \\
      --overrides '{"initializer_range": 0.1}'

  # the recipe of configs/finetune/tiny_qa.yaml (every field asked: write_question_split(..., per_page=None))
  python benchmarks/qa_training_probe.py --data OUT/qa --model outputs/models/tiny --max-length 128 --stride 32 \\
      --answered-only --text-only --batch 32 --lr 2e-3 --steps 2000 --every 500 --dev-questions 300 \\
      --overrides '{"hidden_dropout_prob": 0, "attention_probs_dropout_prob": 0}'

OUT/synthetic: the DocVQA-layout root launch/finetune.py writes for configs/finetune/tiny_qa.yaml. With --pages N
the model trains and is scored on the questions of the first N training pages (memorisation). Prints the mean
training loss of the last 50 steps and the dev ANLS; results are in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from layoutlmv3.finetune.anls import anls
from layoutlmv3.finetune.qa import QuestionWindows, best_answers, read_questions
from layoutlmv3.finetune.splits import split_dev
from layoutlmv3.model import LayoutLMv3ForQuestionAnswering
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer

INPUTS = ("input_ids", "bbox", "attention_mask", "pixel_values")
TARGETS = ("start_positions", "end_positions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a DocVQA-layout root with train/")
    parser.add_argument("--model", required=True, help="a model directory with tokenizer files")
    parser.add_argument("--init", choices=("pretrained", "random"), default="pretrained")
    parser.add_argument("--overrides", default="{}", help="LayoutLMv3Config fields as JSON")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--every", type=int, default=200, help="score every this many steps")
    parser.add_argument("--pages", type=int, default=0, help="train and score on the first N training pages")
    parser.add_argument("--answered-only", action="store_true", help="train on windows that hold the answer")
    parser.add_argument("--answerless-windows", type=float, default=1.0,
                        help="fraction of answerless training windows kept (data.answerless_windows)")  # fmt: skip
    parser.add_argument("--dev-questions", type=int, default=200)
    parser.add_argument("--text-only", action="store_true", help="no visual tokens (pixels still read)")
    parser.add_argument("--seed", type=int, default=42, help="the dev split's seed (the job's train.seed)")
    args = parser.parse_args()

    torch.manual_seed(0)
    random.seed(0)
    tokenizer = LayoutLMv3Tokenizer.from_pretrained(args.model)
    cls = LayoutLMv3ForQuestionAnswering
    load = cls.from_pretrained if args.init == "pretrained" else cls.from_config_of
    model = load(args.model, num_labels=2, **json.loads(args.overrides)).train()
    train = read_questions(f"{args.data}/train")
    train, dev = split_dev(train, 0.2, args.seed, key=lambda question: str(question.image_path))
    if args.pages:
        kept = sorted({question.image_path for question in train})[: args.pages]
        train = dev = [question for question in train if question.image_path in kept]
        print("pages:", " ".join(path.name for path in kept), flush=True)
    size = None if args.text_only else model.config.input_size
    train_windows = QuestionWindows(train, tokenizer, args.max_length, args.stride, size)
    dev_windows = QuestionWindows(dev[: args.dev_questions], tokenizer, args.max_length, args.stride, size)
    train_windows.keep_answerless(0.0 if args.answered_only else args.answerless_windows, args.seed)
    items = train_windows.items
    print(f"{len(train)} training questions, {len(items)} windows; {len(dev_windows.questions)} scored", flush=True)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (args.steps - step) / (args.steps - warmup)))
    )
    inputs = tuple(name for name in INPUTS if name != "pixel_values" or not args.text_only)
    order: list[int] = []
    losses: list[float] = []
    started = time.time()
    for step in range(1, args.steps + 1):
        if len(order) < args.batch:
            order += random.sample(range(len(items)), len(items))
        chosen, order = order[: args.batch], order[args.batch :]
        batch = {name: torch.stack([items[i][name] for i in chosen]) for name in inputs + TARGETS}
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % args.every == 0 or step == args.steps:
            score, answers = dev_anls(model, dev_windows, inputs)
            recent = losses[-50:]
            print(f"step {step}: loss {sum(recent) / len(recent):.3f} | ANLS {score:.3f} | "
                  f"{time.time() - started:.0f} s | first answers {answers[:4]}", flush=True)  # fmt: skip


@torch.no_grad()
def dev_anls(model: torch.nn.Module, windows: QuestionWindows, inputs: tuple[str, ...]) -> tuple[float, list[str]]:
    model.eval()
    logits = []
    for start in range(0, len(windows.items), 16):
        chunk = windows.items[start : start + 16]
        output = model(**{name: torch.stack([item[name] for item in chunk]) for name in inputs})
        text = chunk[0]["input_ids"].shape[0]
        logits += list(zip(output.start_logits[:, :text], output.end_logits[:, :text], strict=True))
    model.train()
    answers = best_answers(windows.questions, windows, logits)
    return anls(answers, [question.answers for question in windows.questions]), answers


if __name__ == "__main__":
    main()
