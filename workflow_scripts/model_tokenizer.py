"""A model's tokenizer, refused when it was built without its vocabulary.

transformers 5 builds a LLaMA tokenizer from tokenizer_config.json alone when the vocabulary file
(tokenizer.json, or SentencePiece's tokenizer.model) is missing: its special tokens only, splitting
every text into nothing. Nothing fails after that: prompts attribute to empty matrices, every
vocabulary word gets a zero vector (no head keeps a pair, each FFN component gets arbitrary words).
"""
from __future__ import annotations

from pathlib import Path

PROBE = " the"


def load_tokenizer(source: str | Path):
    """`AutoTokenizer.from_pretrained(source)`, checked: a local directory, or a hub id (which fetches
    the tokenizer's own files, whichever they are)."""
    from transformers import AutoTokenizer

    missing = ("A tokenizer.json, or for a SentencePiece model tokenizer.model (read with the sentencepiece and "
               "protobuf packages), must lie beside tokenizer_config.json")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except TypeError as error:  # transformers 4: the SentencePiece loader handed no file ("not a string")
        raise ValueError(f"the tokenizer of {source} cannot be built without its vocabulary ({error}). {missing}") \
            from error
    if not tokenizer(PROBE, add_special_tokens=False)["input_ids"]:
        raise ValueError(
            f"the tokenizer of {source} splits {PROBE!r} into no tokens: it was built without its vocabulary "
            f"({len(tokenizer)} tokens). {missing}")
    return tokenizer
