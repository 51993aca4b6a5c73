"""Which prompt tokens belong to the instruction (docs/design.md#instruction-tokens).

The dataset lists instruction fragments; each is widened to the whole prompt sentence(s) that
contain it, the way the paper's `annotate` does: the prompt is split on newlines, then after
`.`, `!`, `?` or `:` followed by white space, and a sentence's leading `Input:` is dropped. The
paper then matched sentences to tokens by token-sequence search (first occurrence); here a token
is an instruction token when its character span overlaps an instruction sentence's span, which
gives the same tokens without re-tokenizing and works for any tokenizer.

The paper re-tokenized each sentence and dropped `▁`, `<0x0A>` and `▁"` pieces from both ends
before the search. The same edge rule, stated on what a token stands for rather than on one
vocabulary's piece names: from each sentence's run of overlapping tokens, tokens at either end
are dropped while they are whitespace-only (SentencePiece `▁`, `▁▁`; byte-level BPE `Ġ`, `ĠĠ`),
a line break (SentencePiece `<0x0A>`; byte-level `Ċ`, `ĊĊ`) or a space plus a double quote
(SentencePiece `▁"`; byte-level `Ġ"`). A token "stands for" its text in the prompt, plus the
space that its word-boundary marker (`▁` or `Ġ`) encodes when its offsets leave that space out
(SentencePiece's dummy prefix at the start of the prompt; byte-level tokenizers that trim
offsets). All byte pieces of one multi-byte character carry that character's span (HF fast
tokenizers report them so; `released.align_pieces` does the same), so none of them is lost.
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


# The piece that marks a word boundary (a space before the token): SentencePiece `▁`, byte-level BPE `Ġ`
BOUNDARY_MARKERS = ("\u2581", "\u0120")


def is_edge_token(token: str, text: str) -> bool:
    """Whether a token is dropped at the edge of an instruction sentence: whitespace-only, a line
    break, or a space plus a double quote. `text` is the token's text in the prompt. A piece that is
    only a space marker is white space whatever span it reports (a fast LLaMA tokenizer gives the `▁`
    before a prompt's first digit the digit's span)."""
    if not token.strip("".join(BOUNDARY_MARKERS)):
        return True
    if token.startswith(BOUNDARY_MARKERS) and not text.startswith((" ", "\n")):
        text = " " + text
    return not text.strip() or text == ' "'


def instruction_mask(
    prompt: str, tokens: list[str], offsets: np.ndarray, spans: list[tuple[int, int]]
) -> np.ndarray:
    """Boolean mask over the prompt's tokens: those inside an instruction sentence.

    Args:
        tokens: (P,) the prompt's token strings
        offsets: (P, 2) int, character [start, end) of each token in `prompt`
        spans: character [start, end) of each instruction sentence

    Returns (P,) bool. A token belongs to a sentence when its
    span overlaps the sentence's; then edge tokens (`is_edge_token`) are dropped from both ends of
    each sentence's run. Zero-width tokens (BOS and other special tokens) are never marked.
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    if len(tokens) != len(offsets):
        raise ValueError(f"{len(tokens)} tokens but {len(offsets)} offsets")
    mask = np.zeros(len(offsets), dtype=bool)
    visible = offsets[:, 1] > offsets[:, 0]
    for start, end in spans:
        run = np.flatnonzero((offsets[:, 0] < end) & (offsets[:, 1] > start) & visible)
        edge = [is_edge_token(tokens[i], prompt[offsets[i, 0] : offsets[i, 1]]) for i in run]
        first, last = 0, len(run)
        while first < last and edge[first]:
            first += 1
        while last > first and edge[last - 1]:
            last -= 1
        mask[run[first:last]] = True
    return mask
