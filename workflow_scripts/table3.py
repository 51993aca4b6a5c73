"""Table 3: how instruction tuning changes self-attention knowledge about verbs (docs/design.md#table-3).

Input is a `bilinear_words.tsv` holding both models of a pair: one row per (model, layer, head,
dimension) with the dimension's word pairs in `TopK` (`w1=w2|||w3=w4...`). Following the paper
(Wu et al., NAACL 2024, `src/analysis_bilinear_interpret.py`):

1. a pair is normalised by sorting its two words and lower-casing, so `B=a` and `a=b` are one;
2. the head-level knowledge of a head is the pairs that occur in more than one of its dimension
   rows;
3. per head and model, each word counts the head-level pairs it is part of;
4. layers fall into four equal groups (layer * 4 // n_layers); for each group, each word of a
   list gets the share of the group's heads (those present for both models) where the tuned
   model's count exceeds the pre-trained one's, over the heads where the two counts differ; a
   word whose counts never differ has no score;
5. per list: mean, population std and number of the word scores; a two-sided Welch t-test
   compares the instruction-verb scores with the general-verb scores.

Where this module differs from the paper's script: it lower-cases a pair before sorting its words
(the script sorted first, so `B=a` became `b=a` and stayed apart from `a=b`; docs/design.md#fidelity makes
them one pair); a pair is counted once per dimension row even if the row repeats it; an empty
`TopK` holds no pairs (the script's split made an empty "pair" of it); and heads are matched
between the models by (layer, head), each model's knowledge taken over all its own dimension
rows (the script joined the models' rows on (layer, head, dimension) first, which is the same
when both models list the same dimensions, as the explainer writes them).
"""
from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .tables import write_table
from .tsv import BILINEAR_COLUMNS

log = logging.getLogger(__name__)

TABLE3_COLUMNS = ["layers", "instruct_mean", "instruct_std", "instruct_n",
                  "general_mean", "general_std", "general_n", "t", "p_value"]
N_GROUPS = 4
_INT_COLUMNS = ("Layer", "Head", "Dim", "Rank")


def normalise_pair(pair: str) -> str:
    """`B=a` -> `a=b`: the words lower-cased and sorted, so the two spellings are one pair."""
    return "=".join(sorted(pair.lower().split("=")))


def parse_pairs(topk: str) -> list[str]:
    """The normalised pairs of a `TopK` field; an empty field has none."""
    return [normalise_pair(p) for p in topk.split("|||") if p] if topk else []


def read_bilinear_words(path: str | Path) -> pd.DataFrame:
    """A `bilinear_words.tsv` as a frame with `pairs` (the normalised pairs of `TopK`) added.

    Layer, Head, Dim and Rank are integers and Score a float; a row with the wrong number of
    fields, a bad number or a repeated (model, layer, head, dimension) raises a ValueError naming
    the file and line. A line equal to the header is skipped, as the paper's reader does, so that
    concatenated shards read as one file.
    """
    path = Path(path)
    with open(path, encoding="utf8") as fh:
        lines = fh.read().splitlines()
    if not lines or tuple(lines[0].split("\t")) != BILINEAR_COLUMNS:
        found = lines[0].split("\t") if lines else "an empty file"
        raise ValueError(f"{path}: line 1: expected the header {' '.join(BILINEAR_COLUMNS)} (tab separated), "
                         f"found {found}")
    rows, seen = [], {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip() or line == lines[0]:
            continue
        fields = line.split("\t")
        if len(fields) != len(BILINEAR_COLUMNS):
            raise ValueError(f"{path}: line {number}: expected {len(BILINEAR_COLUMNS)} tab-separated fields "
                             f"({' '.join(BILINEAR_COLUMNS)}), found {len(fields)}: {line[:80]!r}")
        row = dict(zip(BILINEAR_COLUMNS, fields))
        try:
            for column in _INT_COLUMNS:
                row[column] = int(row[column])
            row["Score"] = float(row["Score"])
        except ValueError:
            raise ValueError(f"{path}: line {number}: {column} must be a number, found {row[column]!r}") from None
        key = (row["Model"], row["Layer"], row["Head"], row["Dim"])
        if key in seen:
            raise ValueError(f"{path}: line {number}: model {key[0]} layer {key[1]} head {key[2]} dimension {key[3]} "
                             f"repeats line {seen[key]} (one row per model, layer, head and dimension)")
        seen[key] = number
        row["pairs"] = parse_pairs(row["TopK"])
        rows.append(row)
    return pd.DataFrame(rows, columns=[*BILINEAR_COLUMNS, "pairs"])


def _check_models(frame: pd.DataFrame, *models: str) -> None:
    present = sorted(frame["Model"].unique()) if len(frame) else []
    for model in models:
        if model not in present:
            raise ValueError(f"model {model!r} is not in the bilinear words; models present: {present}")


def head_knowledge(frame: pd.DataFrame, model: str) -> dict[tuple[int, int], list[str]]:
    """(layer, head) -> the head's pairs that occur in more than one of its dimension rows,
    most frequent first (ties alphabetical). Every head with a row is a key, if with no pairs."""
    _check_models(frame, model)
    if "pairs" not in frame:
        frame = frame.assign(pairs=frame["TopK"].map(parse_pairs))
    counts: dict[tuple[int, int], Counter] = {}
    for layer, head, pairs in frame.loc[frame["Model"] == model, ["Layer", "Head", "pairs"]].itertuples(index=False):
        counts.setdefault((int(layer), int(head)), Counter()).update(set(pairs))
    return {key: [p for p, n in sorted(c.items(), key=lambda item: (-item[1], item[0])) if n > 1]
            for key, c in sorted(counts.items())}


def _word_counts(knowledge: dict[tuple[int, int], list[str]]) -> dict[tuple[int, int], Counter]:
    return {key: Counter(word for pair in pairs for word in pair.split("=")) for key, pairs in knowledge.items()}


def layer_groups(n_layers: int) -> list[tuple[int, int, int]]:
    """(group, first layer, last layer) of the four groups layer * 4 // n_layers; a group that no
    layer falls in (fewer than four layers) is left out."""
    if n_layers < 1:
        raise ValueError(f"the number of layers must be positive, got {n_layers}")
    groups: dict[int, list[int]] = {}
    for layer in range(n_layers):
        groups.setdefault(layer * N_GROUPS // n_layers, []).append(layer)
    return [(g, layers[0], layers[-1]) for g, layers in sorted(groups.items())]


def word_scores(words, heads, tuned_counts, pretrained_counts) -> list[float]:
    """Per word: the share of heads where the tuned count beats the pre-trained one, over the
    heads where they differ; words whose counts never differ get no score (left out)."""
    scores = []
    for word in words:
        wins = [tuned_counts[h][word] > pretrained_counts[h][word]
                for h in heads if tuned_counts[h][word] != pretrained_counts[h][word]]
        if wins:
            scores.append(float(np.mean(wins)))
    return scores


def _welch_two_sided(x, y) -> tuple[float, float]:
    if len(x) < 2 or len(y) < 2:
        return float("nan"), float("nan")
    result = stats.ttest_ind(x, y, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def _mean_std(x) -> tuple[float, float]:
    return (float(np.mean(x)), float(np.std(x))) if len(x) else (float("nan"), float("nan"))


def _unique_lower(words) -> list[str]:
    return list(dict.fromkeys(w.strip().lower() for w in words if w.strip()))


def table3(frame: pd.DataFrame, pretrained: str, tuned: str, n_layers: int,
           instruct_words, general_words) -> pd.DataFrame:
    """Table 3 of the paper: one row per group of layers (docs/design.md#table-files gives the columns)."""
    _check_models(frame, pretrained, tuned)
    too_deep = frame.loc[frame["Layer"] >= n_layers, "Layer"]
    if len(too_deep) or (frame["Layer"] < 0).any():
        bad = int(too_deep.iloc[0]) if len(too_deep) else int(frame["Layer"].min())
        raise ValueError(f"layer {bad} in the bilinear words is outside 0..{n_layers - 1} (n_layers is {n_layers})")
    instruct_words, general_words = _unique_lower(instruct_words), _unique_lower(general_words)
    tuned_counts = _word_counts(head_knowledge(frame, tuned))
    pretrained_counts = _word_counts(head_knowledge(frame, pretrained))
    heads = sorted(set(tuned_counts) & set(pretrained_counts))
    rows = []
    for group, first, last in layer_groups(n_layers):
        group_heads = [h for h in heads if h[0] * N_GROUPS // n_layers == group]
        instruct = word_scores(instruct_words, group_heads, tuned_counts, pretrained_counts)
        general = word_scores(general_words, group_heads, tuned_counts, pretrained_counts)
        t, p = _welch_two_sided(instruct, general)
        rows.append((f"{first}-{last}", *_mean_std(instruct), len(instruct), *_mean_std(general), len(general), t, p))
    return pd.DataFrame(rows, columns=TABLE3_COLUMNS)


def read_word_list(path: str | Path) -> list[str]:
    """One word per line (blank lines ignored), in file order."""
    with open(path, encoding="utf8") as fh:
        return [line.strip() for line in fh if line.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bilinear-words", required=True, help="bilinear_words.tsv holding both models")
    parser.add_argument("--pretrained", required=True, help="the pre-trained model's Model column value")
    parser.add_argument("--tuned", required=True, help="the tuned model's Model column value")
    parser.add_argument("--layers", type=int, required=True, help="number of layers of the models")
    parser.add_argument("--instruct", required=True, help="instruction verbs, one per line")
    parser.add_argument("--general", required=True, help="general verbs, one per line")
    parser.add_argument("--title", default=None)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    frame = read_bilinear_words(args.bilinear_words)
    table = table3(frame, args.pretrained, args.tuned, args.layers,
                   read_word_list(args.instruct), read_word_list(args.general))
    title = args.title or (f"Table 3: share of heads where {args.tuned} knows more pairs about a verb "
                           f"than {args.pretrained}")
    write_table(table, args.output, title)
    log.info("%s:\n%s", args.output, table.to_string(index=False))


if __name__ == "__main__":
    main()
