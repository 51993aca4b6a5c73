"""What every annotation provider takes and returns, and the key a response is cached under.

Providers (an OpenAI-compatible endpoint, a local Hugging Face chat model, replay from annotation
files) all map a list of `ChatRequest` to a list of `ChatResponse` in the same order; the cache
and the annotation steps never need to know which one answered.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


class ChatError(RuntimeError):
    """A request that failed for good (after its retries): the job must fail, never skip a row."""


@dataclass(frozen=True)
class ChatRequest:
    # [{"role": "system"|"user"|"assistant", "content": str, optional "name": str}, ...]
    messages: tuple
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    # (model, layer, rank) of the component the request is about: never sent, never in the cache key;
    # replay uses it where its files answered one question differently on different rows
    origin: tuple = field(default=(), compare=False)

    def to_json(self) -> dict:
        return {
            "messages": [dict(m) for m in self.messages],
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }


@dataclass
class ChatResponse:
    text: str
    finish_reason: str  # "stop", "length" (truncated), "content_filter", "refusal", ...
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    fingerprint: str  # the server's system_fingerprint or the local model's digest; "" if unknown
    refusal: str | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ChatResponse:
        return cls(**data)


def request_key(provider: str, model: str, request: ChatRequest) -> str:
    """sha256 over everything that can change an answer: provider kind, model, messages,
    sampling parameters and seed (canonical JSON, so dict order never matters)."""
    payload = {"provider": provider, "model": model, **request.to_json()}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def messages(*items: dict) -> tuple:
    """Hashable message tuple (ChatRequest is frozen); each message stays a plain dict for JSON."""
    return tuple(dict(m) for m in items)
