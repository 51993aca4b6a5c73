"""The token sequences attribution runs on: a prompt and its response tokenized once, with the character
offsets of both parts (the text the paper's `prepare4explain` attributes), a model's own greedy response,
and the check that every sample fits the model's context before any attribution.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .attribution_model import context_length
from .devices import input_device


@dataclass
class Tokenized:
    """A prompt + response token sequence with the character offsets of both parts."""

    input_ids: torch.Tensor  # (T,)
    prompt_rows: np.ndarray  # positions of the real (non-special) prompt tokens
    n_prompt: int  # the response starts at this position
    prompt_offsets: np.ndarray
    response_text: str
    response_offsets: np.ndarray


def tokenize_pair(tokenizer, prompt: str, response: str) -> Tokenized:
    """Tokenize prompt + " " + response once, and split the tokens at the prompt's end: the text the
    paper's `prepare4explain` attributes (its response stripped; the paper's prompts have no white
    space at their ends to strip, and the instruction spans are offsets into the prompt as given)."""
    response = response.strip()
    text = prompt + " " + response
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids, offsets = np.asarray(enc["input_ids"]), np.asarray(enc["offset_mapping"], dtype=np.int64)
    special = np.asarray(tokenizer.get_special_tokens_mask(ids.tolist(), already_has_special_tokens=True), bool)
    in_response = (offsets[:, 0] >= len(prompt)) & ~special
    if not in_response.any():
        raise ValueError(f"the response {response[:40]!r} gave no tokens")
    n_prompt = int(np.argmax(in_response))
    if not in_response[n_prompt:].all():
        raise ValueError(f"prompt and response tokens interleave for {prompt[:40]!r}")
    prompt_rows = np.flatnonzero(~special[:n_prompt])
    response_offsets = np.clip(offsets[n_prompt:] - (len(prompt) + 1), 0, None)
    return Tokenized(
        torch.as_tensor(ids), prompt_rows, n_prompt, offsets[prompt_rows], response, response_offsets
    )


def generate_response(model, tokenizer, prompt: str, max_new_tokens: int) -> Tokenized:
    """The model's own greedy response to the raw prompt (no chat template), attributed as the paper's
    code did: at least one new token (its `min_length`), decoded without special tokens, then
    tokenized again with the prompt (`tokenize_pair`), so a response opened by a line break or a
    space is attributed from its first word."""
    enc = tokenizer(prompt, return_offsets_mapping=True, return_tensors="pt")
    prompt_ids = enc["input_ids"].to(input_device(model))
    new = greedy_continuation(model, prompt_ids, max_new_tokens, tokenizer.pad_token_id or tokenizer.eos_token_id,
                              min(1, max_new_tokens))[0].tolist()
    special = set(tokenizer.all_special_ids)
    keep = next((k for k, token in enumerate(new) if token in special), len(new))
    text = tokenizer.decode(new[:keep], skip_special_tokens=True).strip()
    if text:
        return tokenize_pair(tokenizer, prompt, text)
    prompt_offsets = enc["offset_mapping"][0].numpy().astype(np.int64)
    prompt_rows = np.flatnonzero(~np.isin(enc["input_ids"][0].numpy(), list(special)))
    nothing = np.zeros((0, 2), np.int64)  # no response token: the sample scores 0, as in the paper
    return Tokenized(enc["input_ids"][0], prompt_rows, prompt_ids.shape[1], prompt_offsets[prompt_rows], "", nothing)


def greedy_continuation(model, prompt_ids: torch.Tensor, max_new_tokens: int, pad_token_id: int,
                        min_new_tokens: int) -> torch.Tensor:
    """The model's greedy continuation of each prompt: the job asks for at least one new token (the
    paper's `min_length`) of one prompt; bench/gpu_bench.py times this call at its full length, on one
    prompt and on several.

    Args:
        prompt_ids: (b, n) token ids of b prompts of n tokens (the job: b = 1), on the model's input device

    Returns the (b, new) new token ids, at most `max_new_tokens` each.
    """
    with torch.no_grad():
        out = model.generate(
            prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens, do_sample=False, pad_token_id=pad_token_id,
        )
    return out[:, prompt_ids.shape[1] :]


def check_fits(model, tokenizer, samples, response: str, max_new_tokens: int, dataset: str) -> None:
    """Refuse, before any attribution, a sample whose tokens would not fit the model's context
    (attributing past it only earns a transformers warning and meaningless positions), and an empty
    reference response (it would be attributed as a lone word-boundary token)."""
    limit = context_length(model)
    for sample in samples:
        if response == "reference" and not sample.response.strip():
            raise ValueError(f"{dataset}:{sample.line}: sample {sample.id} has an empty Response to attribute")
        if limit is None:
            continue
        prompt_tokens = len(tokenizer(sample.prompt, add_special_tokens=True)["input_ids"])
        if response == "reference":
            total = len(tokenizer(sample.prompt + " " + sample.response, add_special_tokens=True)["input_ids"])
            what = "prompt and reference response"
        else:
            total, what = prompt_tokens + max_new_tokens, f"prompt and up to {max_new_tokens} new tokens"
        if total > limit:
            raise ValueError(
                f"{dataset}:{sample.line}: sample {sample.id} needs {total} tokens ({what}), "
                f"more than the model's context of {limit}"
            )
