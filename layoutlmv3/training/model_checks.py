"""Start-up checks of a model against its tokenizer that every job makes: the special-token ids and the longest
text that fits the model's positions, refused before the first step rather than failing inside an embedding lookup."""

from __future__ import annotations

from layoutlmv3.model import LayoutLMv3Config


def check_special_ids(model_config: LayoutLMv3Config, special_ids: dict[str, int]) -> None:
    """Refuse at start-up a model whose special-token ids differ from the tokenizer's (`special_ids`: the
    tokenizer's pad/cls/sep ids, its one source)."""
    named = {"pad_token_id": "pad", "bos_token_id": "cls", "eos_token_id": "sep"}
    wrong = [
        f"{field}={getattr(model_config, field)} (tokenizer: {special_ids[kind]})"
        for field, kind in named.items()
        if getattr(model_config, field) != special_ids[kind]
    ]
    if wrong:
        raise ValueError(f"the model config's special ids differ from the tokenizer's: {', '.join(wrong)}")


def check_max_length(model_config: LayoutLMv3Config, max_length: int) -> None:
    """Refuse a `data.max_length` beyond the model's text positions: found at start-up, not as a crash at the first
    step (RoBERTa's positions start after the pad id, so `max_position_embeddings - pad - 1` tokens fit)."""
    longest = model_config.max_position_embeddings - model_config.pad_token_id - 1
    if max_length > longest:
        raise ValueError(
            f"data.max_length {max_length} is beyond the model's {longest} text positions "
            f"(max_position_embeddings {model_config.max_position_embeddings}): lower data.max_length"
        )
