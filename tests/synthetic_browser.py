"""Small explanation files written as the workflow writes them (lossless shards, annotation files), with
awkward words on purpose, for the browser's unit and page tests."""
from __future__ import annotations

import random
from pathlib import Path

from workflow_scripts.annotate import DESCRIBED_COLUMNS
from workflow_scripts.tsv import LINEAR_COLUMNS, PAIRS_COLUMNS, WORDS_COLUMNS, encode_pairs, encode_words, join_words
from workflow_scripts.tsv import write_tsv as write_rows

XSS = "<img src=x onerror=alert(1)>"
AWKWARD = [XSS, "Translate", "translate", 'say "hi"', "it's", "back\\slash", "__proto__", "constructor", "naïve",
           "日本", "</script>", "a\u2028b"]
PLAIN = [f"w{i:02d}" for i in range(40)]
LONG = "supercalifragilistic" * 12  # wider than a pane: it must wrap inside it
RTL_PAIR = ("שלום", "עולם")  # two right-to-left words: still drawn key, then query
FIXED_PAIRS = [RTL_PAIR, (LONG, "w00")]  # in every model's first head row, beside its random pairs
MODELS = ("base", "tuned")


def write_inputs(folder: Path, layers: int = 3, heads: int = 4, dims: int = 10, ranks: int = 40,
                 seeds: tuple[int, ...] = (0, 1), annotated: int = 5) -> dict:
    """Per model and layer one attention and one FFN shard; per seed the three annotation files (the
    components of rank <= `annotated` described, every third one `Cannot Tell`). Returns the paths, and
    `heads`/`ffn`: per model the rows' word lists in browser row order (layer, head, rank)."""
    rng = random.Random(0)
    words = AWKWARD + PLAIN
    paths = {"attention": [], "ffn": [], "describe": [], "task": [], "level": []}
    expected = {"heads": {m: [] for m in MODELS}, "ffn": {m: [] for m in MODELS}}
    components = []
    for model in MODELS:
        for layer in range(layers):
            rows = []
            for head in range(heads):
                for rank, dim in enumerate(rng.sample(range(dims), dims), start=1):
                    pairs = [tuple(rng.sample(words, 2)) for _ in range(rng.randrange(0, 4))]
                    if layer == head == 0 and rank == 1:
                        pairs += FIXED_PAIRS
                    rows.append((model, "NA", layer, "QK", head, dim, rank, f"{100 / rank:.4f}", encode_pairs(pairs)))
                    expected["heads"][model].append([w for p in pairs for w in p])
            path = folder / f"attention-{model}-{layer}.tsv"
            write_rows(rows[::-1], PAIRS_COLUMNS, path)  # out of order on purpose: the browser sorts
            paths["attention"].append(path)
            rows = []
            for rank in range(1, ranks + 1):
                top = rng.sample(words, 20)
                rows.append((model, "NA", layer, "FFN", 0, rank, f"{1 / (rank + 1):.4f}", encode_words(top)))
                expected["ffn"][model].append(top)
                components.append((model, layer, rank, top))
            path = folder / f"ffn-{model}-{layer}.tsv"
            write_rows(rows, WORDS_COLUMNS, path)
            paths["ffn"].append(path)
    for seed in seeds:
        described, labelled = [], []
        for model, layer, rank, top in components:
            if rank > annotated:
                continue
            ok = (rank + seed) % 3 != 0
            summary = f"{XSS} concept {model} {layer} {rank} seed {seed}" if ok else "Cannot Tell"
            linear = [model, "NA", layer, "FFN", 0, rank, f"{1 / (rank + 1):.4f}", join_words(top)]
            row = [int(ok), "Words: " + ", ".join(top[:3]), summary, *linear]
            described.append(row)
            if ok:
                labelled.append(row)
        for step, name, label in (("describe", "linear_seed{}.tsv", None), ("task", "linear_task_seed{}.tsv", "Task"),
                                  ("level", "linear_concept_seed{}.tsv", "Concept")):
            path = folder / name.format(seed)
            if label is None:
                write_rows(described, DESCRIBED_COLUMNS, path)
            else:
                values = {"Task": "translation; coding", "Concept": "semantic"}[label]
                write_rows([[values, *row] for row in labelled], (label, *DESCRIBED_COLUMNS), path)
            paths[step].append(path)
    assert DESCRIBED_COLUMNS[3:] == LINEAR_COLUMNS
    return {**paths, "expected": expected, "seeds": list(seeds)}
