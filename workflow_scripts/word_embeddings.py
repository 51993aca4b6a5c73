"""A vocabulary's words in a model's embedding space: the mean embedding of each word's sub-tokens.

The head explainer (input embeddings) and the FFN explainer (output embeddings) describe model
directions by these vectors; how the words were cut into sub-tokens is word_pieces.py. Not to be
confused with word_vectors.py: the static vectors (GloVe) that decide which words are related.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the explainers' merge jobs and --help start without torch
    import torch


def mean_embeddings(embedding_matrix: torch.Tensor, token_ids: list[list[int]]) -> torch.Tensor:
    """Row i = mean of the embedding rows of token_ids[i].

    Args:
        embedding_matrix: (vocabulary, hidden) the model's input or output embeddings
        token_ids: W lists of sub-token ids (word_pieces.read_word_pieces)

    Returns (W, hidden), on embedding_matrix's device and dtype.

    An embedding bag over the flat ids: memory stays at (words x hidden) however many pieces
    the longest word has (a padded gather would need words x pieces x hidden). An id beyond the matrix
    (words cut by another model's tokenizer) is an error saying so, not torch's index error.
    """
    import torch

    lengths = torch.tensor([len(ids) for ids in token_ids])
    flat = torch.tensor([i for ids in token_ids for i in ids], dtype=torch.long)
    if len(flat) and int(flat.max()) >= embedding_matrix.shape[0]:
        raise ValueError(f"the words' pieces name token id {int(flat.max())}, but the model has "
                         f"{embedding_matrix.shape[0]} embedding rows: they were cut by another model's tokenizer")
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    device = embedding_matrix.device
    means = torch.nn.functional.embedding_bag(flat.to(device), embedding_matrix, offsets.to(device), mode="mean")
    return means  # an empty bag (a word with no pieces) gives a zero row
