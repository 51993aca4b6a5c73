"""A model's tokenizer, refused when it was built without its vocabulary.

transformers 5 builds a LLaMA tokenizer from tokenizer_config.json alone when the vocabulary file
(tokenizer.json, or SentencePiece's tokenizer.model) is missing: its special tokens only, splitting
every text into nothing. Nothing fails after that: prompts attribute to empty matrices, every
vocabulary word gets a zero vector (no head keeps a pair, each FFN component gets arbitrary words).
"""
from __future__ import annotations

import json
from pathlib import Path

PROBE = " the"


def saved_by(model_dir: str | Path) -> str | None:
    """The transformers version config.json says saved `model_dir`, where it says one."""
    try:
        written = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf8")).get("transformers_version")
    except (OSError, ValueError, AttributeError):
        return None
    return written if isinstance(written, str) else None


def saved_by_a_newer_major(model_dir: str | Path) -> str | None:
    """That version, when its major is above the running transformers' (5 names a tokenizer class,
    `TokenizersBackend`, that 4 does not have)."""
    import transformers
    from packaging.version import InvalidVersion, Version

    written = saved_by(model_dir)
    try:
        newer = written is not None and Version(written).major > Version(transformers.__version__).major
    except InvalidVersion:
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
        written = saved_by_a_newer_major(source) if Path(source).is_dir() else None
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
