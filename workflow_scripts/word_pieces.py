"""A vocabulary's words cut into one model's sub-tokens: once per model, in its own job, for every head and
FFN layer job of that model (docs/design.md#word-pieces).

Cutting needs the model's tokenizer: importing transformers and loading it cost a layer job about 2 s on a
workstation and 9 s of its 13 s on a sandboxed H200 (docs/benchmarks.md, "Job start-up"), 128 times in a paper
run, for the same 26,000 words each time. The layer jobs read this file instead and never load a tokenizer.

The file (`results/word_pieces/<model>.tsv`) keeps the vocabulary's order (most frequent first: the head
job's thresholds take the first words as their baseline) and is read through `read_tsv`, so a damaged
line is an error naming its file and line. Each word and its tokens are JSON strings, so any character
reads back as written.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from .cli import setup_logging
from .instructions import BOUNDARY_MARKERS
from .model_paths import SENTENCEPIECE_FILE
from .tsv import read_tsv, write_tsv
from .vocabulary import read_vocabulary

log = logging.getLogger(__name__)

COLUMNS = ("Word", "Tokens", "Ids")

# How a word is cut into the model's sub-tokens (config `fidelity`, docs/design.md#head-word-pairs): `paper`
# as the paper's code did (its slow tokenizer: SentencePiece's own encoding, where the model has one),
# `tokenizer` by the model's tokenizer as loaded.
PIECE_RULES = ("paper", "tokenizer")


def word_token_ids(tokenizer, words: list[str], sentencepiece_model: str | Path | None = None) -> list[list[int]]:
    """Sub-token ids of " " + word, without special tokens or a lone leading space piece.

    With `sentencepiece_model` (the rule `paper`, for a model that has one), the pieces are SentencePiece's
    own encoding of " " + word, as the paper's slow tokenizer gave them (transformers 4.31,
    `use_fast=False`, LLaMA and Vicuna): its dummy prefix doubles the space, so a word without a `▁word`
    piece (every number, as LLaMA splits digits; `ounce`) starts with the double-space piece `▁▁`, which the
    paper kept in the word's mean (it dropped a first piece only when it was exactly `▁`). transformers 5's
    tokenizer for the same model gives such a word its pieces after a single space, without it.

    A word split into nothing would get a zero vector, never chosen by a head and chosen at random
    for an FFN component: an error, naming the words."""
    if sentencepiece_model is not None:
        pieces = sentencepiece_pieces(sentencepiece_model, tokenizer, [" " + word for word in words])
    else:
        pieces = [tokenizer.tokenize(" " + word) for word in words]
    ids = []
    for tokens in pieces:
        if len(tokens) > 1 and tokens[0] in BOUNDARY_MARKERS:
            tokens = tokens[1:]
        ids.append(tokenizer.convert_tokens_to_ids(tokens))
    empty = [word for word, word_ids in zip(words, ids) if not word_ids]
    if empty:
        raise ValueError(f"{len(empty)} of {len(words)} vocabulary words split into no tokens "
                         f"({', '.join(map(repr, empty[:5]))}{', ...' if len(empty) > 5 else ''})")
    return ids


def sentencepiece_pieces(model_file: str | Path, tokenizer, texts: list[str]) -> list[list[str]]:
    """SentencePiece's pieces of each text, each one the tokenizer knows (else the two vocabularies differ,
    and ids taken through the tokenizer would be its unknown token)."""
    import sentencepiece

    pieces = sentencepiece.SentencePieceProcessor(model_file=str(model_file)).encode(texts, out_type=str)
    vocabulary = tokenizer.get_vocab()
    unknown = sorted({piece for row in pieces for piece in row if piece not in vocabulary})
    if unknown:
        raise ValueError(f"{model_file}: {len(unknown)} of its pieces are not in the model's tokenizer "
                         f"({', '.join(map(repr, unknown[:5]))}): not this model's SentencePiece model")
    return pieces


def sentencepiece_file(model_dir: str | Path) -> Path | None:
    """The folder's SentencePiece model, the file the paper's slow tokenizer read; None without one, or for a
    file of that name SentencePiece cannot read (transformers 4 saves a tokenizer it read from a GGUF file with
    that file copied under the name): no slow tokenizer could have been built from it either."""
    path = Path(model_dir) / SENTENCEPIECE_FILE
    if not path.is_file():
        return None
    import sentencepiece

    try:
        sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError):
        return None
    return path


def paper_sentencepiece(model_dir: str | Path, rule: str) -> Path | None:
    """The model's SentencePiece file when the rule is the paper's and the model has one (the paper's slow
    tokenizer read it); else None, and words are cut by the tokenizer as loaded."""
    if rule not in PIECE_RULES:
        raise ValueError(f"fidelity: unknown word-piece rule {rule!r}; expected one of {', '.join(PIECE_RULES)}")
    if rule != "paper":
        log.info("words cut by the tokenizer as loaded (fidelity canonical)")
        return None
    path = sentencepiece_file(model_dir)
    if path is not None:
        log.info("words cut by %s, as the paper's slow tokenizer cut them", path)
        return path
    log.info("words cut by the tokenizer as loaded: no SentencePiece %s in %s (a file of that name SentencePiece "
             "cannot read, as transformers 4 saves for a GGUF tokenizer, counts as none), the paper's route for such "
             "a model", SENTENCEPIECE_FILE, model_dir)
    return None


def cut_words(model_dir: str, words: list[str], piece_rule: str) -> tuple[list[list[int]], list[list[str]]]:
    """Each word's sub-token ids in the model at `model_dir` (a folder or a hub id), by the piece rule, and the
    tokens they name."""
    from .model_tokenizer import load_tokenizer
    from .weights import ModelWeights

    weights = ModelWeights(model_dir)  # the folder the layer jobs read: the same snapshot, the same checks
    tokenizer = load_tokenizer(weights.source)
    ids = word_token_ids(tokenizer, words, paper_sentencepiece(weights.directory, piece_rule))
    return ids, [tokenizer.convert_ids_to_tokens(word_ids) for word_ids in ids]


def write_word_pieces(words: list[str], ids: list[list[int]], tokens: list[list[str]], output: str | Path) -> None:
    """The file the layer jobs read, written whole or not at all."""
    write_tsv(((_json(w), _json(t), _json(i)) for w, t, i in zip(words, tokens, ids, strict=True)), COLUMNS, output)


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def read_word_pieces(path: str | Path) -> tuple[list[str], list[list[int]]]:
    """The words, in the vocabulary's order, and each one's sub-token ids (at least one)."""
    words, ids = [], []
    for number, (word, _, word_ids) in read_tsv(path, COLUMNS):
        where = f"{path}: line {number}"
        try:
            word, word_ids = json.loads(word), json.loads(word_ids)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not JSON ({error.msg}); rebuild the file (delete it and rerun)") from None
        if not isinstance(word, str) or not isinstance(word_ids, list) or not word_ids or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in word_ids):
            raise ValueError(f"{where}: expected a word (a JSON string) and a non-empty JSON list of token ids")
        words.append(word)
        ids.append(word_ids)
    if not words:
        raise ValueError(f"{path}: no words")
    return words, ids


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a model folder or hub id: its tokenizer cuts the words")
    parser.add_argument("--vocabulary", required=True, help="word<TAB>frequency lines, most frequent first")
    parser.add_argument("--rule", choices=PIECE_RULES, default="paper",
                        help="as the paper's slow tokenizer cut words (SentencePiece's own encoding, where the model "
                             "has a tokenizer.model), or by the tokenizer as loaded")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    setup_logging()
    started = time.perf_counter()
    words = read_vocabulary(args.vocabulary)
    ids, tokens = cut_words(args.model_dir, words, args.rule)
    write_word_pieces(words, ids, tokens, args.output)
    split = sum(len(word_ids) > 1 for word_ids in ids)
    log.info("%d words (%d cut into more than one token) in %.1f s -> %s", len(words), split,
             time.perf_counter() - started, args.output)


if __name__ == "__main__":
    main()
