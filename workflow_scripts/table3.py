"""Table 3: how instruction tuning changes self-attention knowledge about verbs (docs/design.md#table-3).

Input holds both models of a pair, one row per (model, layer, head, dimension) with the
dimension's (key, query) word pairs: the workflow's lossless `bilinear_words.lossless.tsv`
(tsv.PAIRS_COLUMNS), or a `bilinear_words.tsv` in the paper's layout (`TopK` = `k=q|||k=q...`,
e.g. the paper's released file), whose `TopK` is split as the paper's script split it: at every
`|||`, each piece then cut at its first `=`. Following the paper (Wu et al., NAACL 2024,
`src/analysis_bilinear_interpret.py`):

1. each pair of a dimension row is normalised by a counting rule (config `fidelity`, below);
2. the head-level knowledge of a head is the normalised pairs that occur more than once over
   its dimension rows;
3. per head and model, each word counts the head-level pairs it is part of;
4. layers fall into four equal groups (layer * 4 // n_layers); for each group, each word of a
   list gets the share of the group's heads where the tuned
   model's count exceeds the pre-trained one's, over the heads where the two counts differ; a
   word whose counts never differ has no score;
5. per list: mean, population std and number of the word scores; a two-sided Welch t-test
   compares the instruction-verb scores with the general-verb scores.

Counting rules:
- `paper` (the default): the script's own: the string `key=query` is split at every `=`, the
  pieces sorted, joined and only then lower-cased (`B=a` -> `b=a`, apart from `a=b`), and a
  pair repeated within one dimension row counts every time (`a=b` and `b=a` in one row: twice).
- `canonical` (a correction): the two words lower-cased, then sorted (`B=a` and `a=b` are one
  pair, as docs/design.md#table-3 defines it), each pair once per dimension row.
Both rules: an empty `TopK` holds no pairs (the script made one empty "pair" of it, which names
no verb), and heads are matched between the models by (layer, head). Both models must have rows
for the same (layer, head, dimension)s over every layer (check_same_rows), so this equals the
script's join of the models' rows on (layer, head, dimension).
"""
from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from .table_files import layer_range, write_table
from .table_stats import mean_std, t_test
from .text_files import utf8_lines
from .tsv import BILINEAR_COLUMNS, PAIRS_COLUMNS, decode_pairs, paper_pairs, read_tsv_layout

log = logging.getLogger(__name__)

TABLE3_COLUMNS = ["layers", "instruct_mean", "instruct_std", "instruct_n",
                  "general_mean", "general_std", "general_n", "t", "p_value"]
N_GROUPS = 4
_INT_COLUMNS = ("Layer", "Head", "Dim", "Rank")
COUNTING_RULES = {
    "paper": "pairs counted as the paper's script counts them (words sorted, then lower-cased; repeats in a "
             "dimension counted)",
    "canonical": "pairs counted canonically (words lower-cased, then sorted; once per dimension)",
}
FRAME_COLUMNS = [*BILINEAR_COLUMNS[:-1], "pairs"]


def _check_rule(counting: str) -> None:
    if counting not in COUNTING_RULES:
        raise ValueError(f"fidelity: unknown counting rule {counting!r}; expected one of {', '.join(COUNTING_RULES)}")


def pair_key(pair: tuple[str, ...], counting: str = "paper") -> tuple[str, ...]:
    """The normalised pair (as the tuple of its words) under a counting rule; see the module doc."""
    if counting == "paper":
        return tuple("=".join(sorted("=".join(pair).split("="))).lower().split("="))
    _check_rule(counting)
    return tuple(sorted(word.lower() for word in pair))


def row_pair_keys(pairs, counting: str = "paper") -> list[tuple[str, ...]]:
    """The normalised pairs one dimension row contributes: all of them (paper) or each once (canonical)."""
    keys = [pair_key(tuple(p), counting) for p in pairs]
    return keys if counting == "paper" else list(dict.fromkeys(keys))


def read_bilinear_words(path: str | Path) -> pd.DataFrame:
    """A lossless bilinear file or a paper-layout `bilinear_words.tsv` (told apart by the header) as
    a frame with `pairs`: each row's list of (key, query) tuples (a paper-layout piece without `=`
    is a 1-tuple).

    Layer, Head, Dim and Rank are integers and Score a float; a row with the wrong number of
    fields, a bad number, bad JSON or a repeated (model, layer, head, dimension) raises a
    ValueError naming the file and line. A line equal to the header is skipped, as the paper's
    reader does, so that concatenated shards read as one file.
    """
    columns, lines = read_tsv_layout(path, {"the paper's layout": BILINEAR_COLUMNS, "lossless": PAIRS_COLUMNS},
                                     repeated_header=True)
    rows, seen = [], {}
    for number, fields in lines:
        row = dict(zip(columns, fields))
        for column, number_type in (*((column, int) for column in _INT_COLUMNS), ("Score", float)):
            try:
                row[column] = number_type(row[column])
            except ValueError:
                raise ValueError(f"{path}: line {number}: {column} must be a number, found {row[column]!r}") from None
        key = (row["Model"], row["Layer"], row["Head"], row["Dim"])
        if key in seen:
            raise ValueError(f"{path}: line {number}: model {key[0]} layer {key[1]} head {key[2]} dimension {key[3]} "
                             f"repeats line {seen[key]} (one row per model, layer, head and dimension)")
        seen[key] = number
        if columns == PAIRS_COLUMNS:
            row["pairs"] = decode_pairs(row.pop("Pairs"), f"{path}: line {number}")
        else:
            row["pairs"] = [tuple(piece.split("=", 1)) for piece in paper_pairs(row.pop("TopK"))]
        rows.append(row)
    frame = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    frame.attrs["source"] = str(path)
    return frame


def _check_models(frame: pd.DataFrame, *models: str) -> None:
    present = sorted(frame["Model"].unique()) if len(frame) else []
    for model in models:
        if model not in present:
            raise ValueError(f"model {model!r} is not in the bilinear words; models present: {present}")


def head_knowledge(frame: pd.DataFrame, model: str, counting: str = "paper") -> dict[tuple[int, int], list[tuple]]:
    """(layer, head) -> the head's normalised pairs that occur more than once over its dimension
    rows (counted by the rule), most frequent first (ties in sorted order). Every head with a row is
    a key, if with no pairs.

    Args:
        frame: one row per (model, layer, head, dimension) (read_bilinear_words): Model, Layer, Head, pairs
    """
    _check_models(frame, model)
    _check_rule(counting)
    counts: dict[tuple[int, int], Counter] = {}
    for layer, head, pairs in frame.loc[frame["Model"] == model, ["Layer", "Head", "pairs"]].itertuples(index=False):
        counts.setdefault((int(layer), int(head)), Counter()).update(row_pair_keys(pairs, counting))
    return {key: [p for p, n in sorted(c.items(), key=lambda item: (-item[1], item[0])) if n > 1]
            for key, c in sorted(counts.items())}


def check_same_rows(frame: pd.DataFrame, pretrained: str, tuned: str, n_layers: int) -> None:
    """Both models must have a row for the same (layer, head, dimension)s, over every layer. The
    explainer writes all of them; a row missing (a piece of the paper's 23-piece release left out
    when joining it) would take heads out of a group or a head's knowledge over fewer dimensions
    without a word, and the paper's script, which joins the models on the dimension, would differ.

    Args:
        frame: one row per (model, layer, head, dimension) (read_bilinear_words): Model, Layer, Head, Dim;
            attrs["source"] names the file in the error
    """
    source = frame.attrs.get("source", "the bilinear words")
    keys = {model: set(frame.loc[frame["Model"] == model, ["Layer", "Head", "Dim"]].itertuples(index=False, name=None))
            for model in (pretrained, tuned)}
    present = {layer for rows in keys.values() for layer, _, _ in rows}
    missing = sorted(set(range(n_layers)) - present)
    if missing:
        raise ValueError(f"{source}: no row of layer {missing[0]} (expected layers 0..{n_layers - 1}, the models' "
                         f"layer count; the file holds layers {min(present, default=0)}..{max(present, default=-1)})")
    for model, other in ((pretrained, tuned), (tuned, pretrained)):
        lacking = sorted(keys[other] - keys[model])
        if lacking:
            layer, head, dim = lacking[0]
            raise ValueError(
                f"{source}: model {model} has no row of layer {layer} head {head} dimension {dim}, which model {other} "
                "has (the bilinear words of the two models must cover the same layers, heads and dimensions; "
                f"{len(lacking)} such row(s) missing: was a piece of the file left out?)")


def word_counts(knowledge: dict[tuple[int, int], list[tuple]]) -> dict[tuple[int, int], Counter]:
    """Per head, how many of its head-level pairs each word is part of."""
    return {key: Counter(word for pair in pairs for word in pair) for key, pairs in knowledge.items()}


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


def _unique_lower(words) -> list[str]:
    return list(dict.fromkeys(w.strip().lower() for w in words if w.strip()))


def table3(frame: pd.DataFrame, pretrained: str, tuned: str, n_layers: int,
           instruct_words, general_words, counting: str = "paper") -> pd.DataFrame:
    """Table 3 of the paper: one row per group of layers (docs/design.md#table-files gives the columns).

    Args:
        frame: both models' rows of read_bilinear_words, one per (model, layer, head, dimension)
        instruct_words, general_words: the two verb lists (lower-cased and deduplicated here)
    """
    _check_models(frame, pretrained, tuned)
    too_deep = frame.loc[frame["Layer"] >= n_layers, "Layer"]
    if len(too_deep) or (frame["Layer"] < 0).any():
        bad = int(too_deep.iloc[0]) if len(too_deep) else int(frame["Layer"].min())
        raise ValueError(f"layer {bad} in the bilinear words is outside 0..{n_layers - 1} (n_layers is {n_layers})")
    check_same_rows(frame, pretrained, tuned, n_layers)
    instruct_words, general_words = _unique_lower(instruct_words), _unique_lower(general_words)
    tuned_counts = word_counts(head_knowledge(frame, tuned, counting))
    pretrained_counts = word_counts(head_knowledge(frame, pretrained, counting))
    heads = sorted(set(tuned_counts) & set(pretrained_counts))
    rows = []
    for group, first, last in layer_groups(n_layers):
        group_heads = [h for h in heads if h[0] * N_GROUPS // n_layers == group]
        instruct = word_scores(instruct_words, group_heads, tuned_counts, pretrained_counts)
        general = word_scores(general_words, group_heads, tuned_counts, pretrained_counts)
        t, p = t_test(instruct, general, equal_var=False)
        rows.append((layer_range(first, last), *mean_std(instruct), len(instruct), *mean_std(general), len(general),
                     t, p))
    return pd.DataFrame(rows, columns=TABLE3_COLUMNS)


def read_word_list(path: str | Path) -> list[str]:
    """One word per line (blank lines ignored), in file order; a byte-order mark is dropped (it was glued to the
    first verb, which then matched no pair), a byte that is not UTF-8 is an error naming the line."""
    return [line.strip() for _, line in utf8_lines(path) if line.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bilinear-words", required=True,
                        help="both models' word pairs: the lossless file, or bilinear_words.tsv in the paper's layout")
    parser.add_argument("--counting", choices=sorted(COUNTING_RULES), default="paper",
                        help="paper: as the paper's script; canonical: lower-cased, sorted, once per dimension")
    parser.add_argument("--pretrained", required=True, help="the pre-trained model's Model column value")
    parser.add_argument("--tuned", required=True, help="the tuned model's Model column value")
    parser.add_argument("--layers", type=int, required=True, help="number of layers of the models")
    parser.add_argument("--instruct", required=True, help="instruction verbs, one per line")
    parser.add_argument("--general", required=True, help="general verbs, one per line")
    parser.add_argument("--title", default=None)
    parser.add_argument("--notice", default="", help="a line under the title (config key notice)")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    frame = read_bilinear_words(args.bilinear_words)
    table = table3(frame, args.pretrained, args.tuned, args.layers,
                   read_word_list(args.instruct), read_word_list(args.general), args.counting)
    title = args.title or (f"Table 3: share of heads where {args.tuned} knows more pairs about a verb "
                           f"than {args.pretrained}")
    title = f"{title}; {COUNTING_RULES[args.counting]} (fidelity: {args.counting})"
    write_table(table, args.output, title, notice=args.notice)
    log.info("%s:\n%s", args.output, table.to_string(index=False))


if __name__ == "__main__":
    main()
