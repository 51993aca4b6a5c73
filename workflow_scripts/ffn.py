"""Feed-forward concept explanation: principal components of a layer's down-projection, each
described by the words its direction points to (docs/design.md#ffn-concepts).

The rows of the down-projection (one per intermediate neuron, hidden wide) are centred and
their principal components found from the hidden x hidden covariance (an eigendecomposition of
4096 x 4096 for LLaMA-7B, instead of an SVD of the 11008 x 4096 matrix); each of the top `rank`
components is projected on the L2-normalised output-embedding word vectors, and the top-K words
by absolute projection describe it. Shards are lossless (tsv.WORDS_COLUMNS: the words as JSON).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from .cli import layer_job_parser, positive_int, setup_logging
from .devices import pick_device, set_matmul_precision
from .progress import Progress
from .tsv import WORDS_COLUMNS, encode_words, merge_and_export, write_tsv

if TYPE_CHECKING:  # annotations only: the functions that compute import torch and scipy, so
    import torch  # that `ffn merge` and `--help` start without them (~2 s a process)

log = logging.getLogger(__name__)


def principal_components(rows: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rank, hidden) unit principal directions and their explained-variance ratios, largest first.

    Args:
        rows: (intermediate, hidden) the down-projection, one row per neuron (any float dtype, any device)
        rank: how many components (at most hidden)

    Returns (rank, hidden) float32 directions and (rank,) float32 ratios, on rows' device.

    The covariance (one float32 product, on rows' device) is decomposed in float64 on the CPU, whatever
    the device: only the top `rank` eigenpairs (LAPACK's MRRR driver), one tested path and the same
    numbers on every machine (a GPU's full float64 eigh is slower than this on cards with little float64
    throughput). The total variance is the covariance's trace. A direction is defined up to its sign.
    """
    import scipy.linalg
    import torch
    centred = rows.float() - rows.float().mean(0, keepdim=True)
    covariance = (centred.T @ centred / (rows.shape[0] - 1)).double().cpu()
    hidden = covariance.shape[0]
    rank = min(rank, hidden)
    values, vectors = scipy.linalg.eigh(covariance.numpy(), subset_by_index=[hidden - rank, hidden - 1], driver="evr")
    values, vectors = torch.from_numpy(values), torch.from_numpy(vectors)
    order = torch.argsort(values, descending=True)
    ratios = values[order].clamp_min(0) / torch.trace(covariance)
    return vectors[:, order].T.float().to(rows.device), ratios.float().to(rows.device)


def component_words(
    components: torch.Tensor, word_vectors: torch.Tensor, words: np.ndarray, top_k: int
) -> list[list[str]]:
    """Top-K words of each component by |projection| on the normalised word vectors.

    Args:
        components: (C, hidden) unit directions (principal_components)
        word_vectors: (V, hidden) model-space word vectors (word_embeddings.mean_embeddings)
        words: (V,) object array of the words, row for row
        top_k: words per component (at most V)

    Returns C lists of top_k words, by decreasing |projection|.
    """
    import torch
    normalised = torch.nn.functional.normalize(word_vectors.float(), dim=-1)
    scores = (components @ normalised.T).abs()
    best = torch.topk(scores, min(top_k, len(words)), dim=1).indices.cpu().numpy()
    return [list(words[row]) for row in best]


def explain_layer(model_dir: str, model_id: str, layer: int, word_pieces: str, output: str,
                  rank: int = 300, top_k: int = 50, size: str = "NA") -> None:
    """`word_pieces`: the vocabulary cut into this model's sub-tokens (word_pieces.py)."""
    from .weights import ModelWeights
    from .word_embeddings import mean_embeddings
    from .word_pieces import read_word_pieces

    device = pick_device()
    set_matmul_precision("float32")
    started = time.perf_counter()
    # three stages, not a loop: a line after each (the eigendecomposition is the long one at 7B)
    with Progress(3, f"explain {model_id} FFN layer {layer}", "step") as steps:
        weights = ModelWeights(model_dir)
        components, ratios = principal_components(weights.down_projection(layer).to(device), rank)
        steps.update()
        words, pieces = read_word_pieces(word_pieces)
        word_vectors = mean_embeddings(weights.output_embeddings().to(device), pieces)
        log.info("read %s", ", ".join(weights.read))
        steps.update()
        described = component_words(components, word_vectors, np.asarray(words, dtype=object), top_k)
        steps.update()
    rows = [(model_id, size, layer, "FFN", 0, r, f"{ratio:.4f}", encode_words(top))
            for r, (ratio, top) in enumerate(zip(ratios.tolist(), described), start=1)]
    write_tsv(rows, WORDS_COLUMNS, output)
    log.info("layer %d of %s: %d components in %.1f s -> %s", layer, model_id, len(rows),
             time.perf_counter() - started, output)


def main(argv=None):
    parser, layer = layer_job_parser(
        __doc__.splitlines()[0], "explain the down-projection of one layer",
        "concatenate shards into the lossless file and export linear_words.tsv"
    )
    layer.add_argument("--rank", type=positive_int, default=300)
    layer.add_argument("--top-k", type=positive_int, default=50)
    args = parser.parse_args(argv)
    setup_logging()
    if args.command == "merge":
        merge_and_export(args.inputs, args.output, args.export, "words")
    else:
        explain_layer(args.model_dir, args.model_id, args.layer, args.word_pieces, args.output,
                      args.rank, args.top_k, args.size)


if __name__ == "__main__":
    main()
