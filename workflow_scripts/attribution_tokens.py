"""The token sequences attribution runs on: a prompt and its response tokenized once, with the character
offsets of both parts (the text the paper's `prepare4explain` attributes), a model's own greedy responses
(several prompts per `generate` call), and the check that every sample fits the model's context before any attribution.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .attribution_batches import MemoryShare, in_batches
from .attribution_model import context_length
from .devices import input_device
from .progress import Progress


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


def generate_responses(model, tokenizer, prompts: list[str], max_new_tokens: int, batch: int = 1,
                       label: str = "generate") -> list[Tokenized]:
    """The model's own greedy responses to the raw prompts (no chat template), attributed as the
    paper's code did: at least one new token each (its `min_length`), decoded without special tokens,
    then tokenized again with the prompt (`tokenize_pair`), so a response opened by a line break or a
    space is attributed from its first word.

    `batch` prompts share a `generate` call, shortest first and padded on the left (as the paper's
    `prepare4generate` pads): on an H200, 16 prompts took 1.3-1.6 times one's time; padding only reorders
    the arithmetic, so a batched response is a solo one up to a rounding-level flip of a near-tie
    (docs/benchmarks.md). An out-of-memory error halves the batch."""
    encoded = [tokenizer(prompt, return_offsets_mapping=True, return_tensors="pt") for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda i: encoded[i]["input_ids"].shape[1])
    pad = tokenizer.pad_token_id or tokenizer.eos_token_id
    device = input_device(model)

    def run(k: int, size: int) -> list[list[int]]:
        rows = [encoded[i]["input_ids"][0] for i in order[k : k + size]]
        ids, mask = left_padded(rows, pad)
        return greedy_continuation(model, ids.to(device), max_new_tokens, pad, min(1, max_new_tokens),
                                   mask.to(device)).tolist()

    generated = []  # in `order`
    with Progress(len(prompts), label, "response") as bar:
        for rows in in_batches(len(prompts), max(1, batch), run, "batch of {} responses", MemoryShare()):
            generated += rows
            bar.update(len(rows))
    new = dict(zip(order, generated))
    return [response_tokens(tokenizer, prompt, enc, new[i]) for i, (prompt, enc) in enumerate(zip(prompts, encoded))]


def left_padded(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of the rows padded on the left to the longest: each row's last token is the
    batch's last position, where generation goes on.

    Args:
        rows: (n_i,) token ids of each of b prompts

    Returns (b, max n_i) ids, `pad` before each row, and the (b, max n_i) mask, 1 at a row's tokens.
    """
    n = max(len(row) for row in rows)
    ids = torch.full((len(rows), n), pad, dtype=rows[0].dtype)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, n - len(row) :], mask[i, n - len(row) :] = row, 1
    return ids, mask


def response_tokens(tokenizer, prompt: str, enc, new: list[int]) -> Tokenized:
    """The prompt and its generated ids as attributed: the new ids up to the first special token (the end
    of sequence, or the padding after it in a batch), decoded and tokenized again with the prompt."""
    special = set(tokenizer.all_special_ids)
    keep = next((k for k, token in enumerate(new) if token in special), len(new))
    text = tokenizer.decode(new[:keep], skip_special_tokens=True).strip()
    if text:
        return tokenize_pair(tokenizer, prompt, text)
    ids = enc["input_ids"][0]
    prompt_offsets = enc["offset_mapping"][0].numpy().astype(np.int64)
    prompt_rows = np.flatnonzero(~np.isin(ids.numpy(), list(special)))
    nothing = np.zeros((0, 2), np.int64)  # no response token: the sample scores 0, as in the paper
    return Tokenized(ids, prompt_rows, len(ids), prompt_offsets[prompt_rows], "", nothing)


def greedy_continuation(model, prompt_ids: torch.Tensor, max_new_tokens: int, pad_token_id: int,
                        min_new_tokens: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The model's greedy continuation of each prompt, at least `min_new_tokens` new tokens (the job: one,
    the paper's `min_length`); bench/gpu_bench.py times this call at its full length, on one prompt and
    on several.

    Args:
        prompt_ids: (b, n) token ids of b prompts of n tokens, on the model's input device
        attention_mask: (b, n) 1 at a prompt's tokens, 0 at its padding (left); None: no padding

    Returns the (b, new) new token ids, at most `max_new_tokens` each, padded with `pad_token_id` after
    a prompt's end of sequence.
    """
    with torch.no_grad():
        out = model.generate(
            prompt_ids, attention_mask=torch.ones_like(prompt_ids) if attention_mask is None else attention_mask,
            max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=False, pad_token_id=pad_token_id,
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
