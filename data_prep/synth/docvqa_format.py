"""Write synthetic pages as a question-answering split in DocVQA's layout: ``{split}/documents/{id}.png`` with its
words in ``{id}.json`` (text, pixel box, line), and ``{split}/{split}.json`` holding
``{"data": [{"questionId", "question", "image", "answers"}]}``. Each linked key -> value pair of a form gives
one question ("What is the Date?" -> "12/03/1998"): the built-in question-answering set."""

from __future__ import annotations

import json
from pathlib import Path

from .files import words_json, write_atomically
from .generate import generate_page, page_id


def write_question_split(out_dir: str | Path, pages: int, seed: int = 0, per_page: int | None = 4) -> int:
    """Pages ``0..pages-1`` of corpus ``seed`` and up to `per_page` questions each (None: every field with an
    answer); returns the question count."""
    out = Path(out_dir)
    data = []
    for index in range(pages):
        page, name = generate_page(seed, index), page_id(seed, index)
        write_atomically(out / "documents" / f"{name}.json", words_json(page))
        write_atomically(out / "documents" / f"{name}.png", page.image)
        entities = {entity.id: entity for entity in page.entities}
        asked: set[str] = set()
        for entity in page.entities:
            if per_page is not None and len(asked) >= per_page:
                break
            values = [value for key, value in entity.linking if key == entity.id and value in entities]
            field = entity.text.strip().rstrip(":").strip()
            if not values or not field or field.lower() in asked:
                continue
            answer = entities[values[0]].text.strip()  # a wrapped value's first line: one contiguous run of words
            if answer:
                asked.add(field.lower())
                data.append({"questionId": f"{name}-{len(asked)}", "question": f"What is the {field}?",
                             "image": f"documents/{name}.png", "answers": [answer]})  # fmt: skip
    write_atomically(out / f"{out.name}.json", json.dumps({"data": data}, indent=1))
    return len(data)
