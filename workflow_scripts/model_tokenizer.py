"""A model's tokenizer, refused when it was built without its vocabulary.

transformers 5 builds a LLaMA tokenizer from tokenizer_config.json alone when the vocabulary file
(tokenizer.json, or SentencePiece's tokenizer.model) is missing: its special tokens only, splitting
every text into nothing. Nothing fails after that: prompts attribute to empty matrices, every
vocabulary word gets a zero vector (no head keeps a pair, each FFN component gets arbitrary words).
"""
from __future__ import annotations

import json
from pathlib import Path

from .model_paths import cached_config

PROBE = " the"


def saved_by_a_newer_major(source: str | Path) -> str | None:
    """The transformers version the model's config.json says saved it, when its major is above the running
    one's (5 names a tokenizer class, `TokenizersBackend`, that 4 does not have)."""
    import transformers
    from packaging.version import Version

    config = cached_config(str(source))
    try:
        written = json.loads(config.read_text(encoding="utf8")).get("transformers_version") if config else None
        newer = isinstance(written, str) and Version(written).major > Version(transformers.__version__).major
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object, not a version
        return None
    return written if newer else None


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
    except ValueError as error:  # transformers 4: "Tokenizer class TokenizersBackend does not exist ..."
        written = saved_by_a_newer_major(source)
        if written is None:
            raise
        import transformers

        raise ValueError(f"{source} was saved by transformers {written}, whose tokenizer this one cannot build "
                         f"({error}); this is transformers {transformers.__version__}: install transformers "
                         f">={written.split('.')[0]}, or save the model again with this one") from error
    if not tokenizer(PROBE, add_special_tokens=False)["input_ids"]:
        raise ValueError(
            f"the tokenizer of {source} splits {PROBE!r} into no tokens: it was built without its vocabulary "
            f"({len(tokenizer)} tokens). {missing}")
    return tokenizer
