"""A vocabulary's words in a model's embedding space: the mean embedding of each word's sub-tokens.

The head explainer (input embeddings) and the FFN explainer (output embeddings) describe model
directions by these vectors. Not to be confused with word_vectors.py: the static vectors (GloVe)
that decide which words are related.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .instructions import BOUNDARY_MARKERS
from .model_paths import SENTENCEPIECE_FILE

if TYPE_CHECKING:  # annotations only: the explainers' merge jobs and --help start without torch
    import torch

log = logging.getLogger(__name__)


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


def mean_embeddings(embedding_matrix: torch.Tensor, token_ids: list[list[int]]) -> torch.Tensor:
    """Row i = mean of the embedding rows of token_ids[i].

    Args:
        embedding_matrix: (vocabulary, hidden) the model's input or output embeddings
        token_ids: W lists of sub-token ids (word_token_ids)

    Returns (W, hidden), on embedding_matrix's device and dtype.

    An embedding bag over the flat ids: memory stays at (words x hidden) however many pieces
    the longest word has (a padded gather would need words x pieces x hidden).
    """
    import torch

    lengths = torch.tensor([len(ids) for ids in token_ids])
    flat = torch.tensor([i for ids in token_ids for i in ids], dtype=torch.long)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    device = embedding_matrix.device
    means = torch.nn.functional.embedding_bag(flat.to(device), embedding_matrix, offsets.to(device), mode="mean")
    return means  # an empty bag (a word with no pieces) gives a zero row
