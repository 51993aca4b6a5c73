"""Which prompt tokens belong to the instruction (DESIGN.md 3.1).

The dataset lists instruction fragments; each is widened to the whole prompt sentence(s) that
contain it, the way the paper's `annotate` does: the prompt is split on newlines, then after
`.`, `!`, `?` or `:` followed by white space, and a sentence's leading `Input:` is dropped. The
paper then matched sentences to tokens by token-sequence search (first occurrence); here a token
is an instruction token when its character span overlaps an instruction sentence's span, which
gives the same tokens without re-tokenizing and works for any tokenizer.
"""
from __future__ import annotations

import re

import numpy as np

_SENTENCE_BREAK = re.compile(r"(?<=[.!?:])\s+")
_INPUT_PREFIX = re.compile(r"Input:\s*")


class InstructionError(ValueError):
    """An instruction annotation that does not match its prompt; names the sample and fragment."""


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the prompt's sentences, in order (empty lines give empty spans)."""
    spans, line_start = [], 0
    for line in text.split("\n"):
        start = line_start
        for brk in _SENTENCE_BREAK.finditer(line):
            spans.append((start, line_start + brk.start()))
            start = line_start + brk.end()
        spans.append((start, line_start + len(line)))
        line_start += len(line) + 1
    return spans


def instruction_fragments(annotation: str) -> list[str]:
    """Sentence-sized pieces of the annotation's instruction part (before `&&&`), non-empty."""
    instruct = annotation.split("&&&", 1)[0].replace("\n", "|||")
    pieces = []
    for fragment in instruct.split("|||"):
        pieces.extend(p.strip() for p in _SENTENCE_BREAK.split(fragment))
    return [p for p in pieces if p]


def instruction_spans(prompt: str, annotation: str, sample_id: str = "?") -> list[tuple[int, int]]:
    """Character spans of the instruction sentences of `prompt`, sorted and de-duplicated.

    Each fragment marks the first prompt sentence that contains it (as the paper does, so a
    sentence repeated later in the prompt is marked once, at its first occurrence).
    """
    sentences = [(s, e) for s, e in split_sentences(prompt) if e > s]
    spans = set()
    for piece in instruction_fragments(annotation):
        for start, end in sentences:
            if piece in prompt[start:end]:
                prefix = _INPUT_PREFIX.match(prompt, start, end)
                if prefix:
                    start = prefix.end()
                if end > start:
                    spans.add((start, end))
                break
        else:
            raise InstructionError(
                f"sample {sample_id}: instruction fragment {piece!r} is not found in any sentence of its prompt"
            )
    return sorted(spans)


def instruction_mask(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """Boolean mask over tokens whose [start, end) character span overlaps an instruction span.

    Zero-width tokens (BOS and other special tokens) are never instruction tokens.
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    mask = np.zeros(len(offsets), dtype=bool)
    for start, end in spans:
        mask |= (offsets[:, 0] < end) & (offsets[:, 1] > start) & (offsets[:, 1] > offsets[:, 0])
    return mask
