"""Tables 1 and 2: instruction scores of samples, by dataset group (docs/design.md#tables-1-and-2).

Table 1 compares the tuned model's responses that humans rated as not following the
instruction (rating 1) with those rated as following it (2-4); Table 2 compares the pre-trained
and the tuned model on all samples. Both use one-sided Welch t-tests and population std.
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import pandas as pd

from .attribution_samples import joined_samples
from .dataset import DatasetError, dataset_group, encode_field, read_rated
from .importance import sample_score
from .table_files import write_table
from .table_stats import mean_std, t_test

log = logging.getLogger(__name__)

TABLE1_COLUMNS = ["dataset", "n_unfollowed", "n_followed", "mean_unfollowed", "std_unfollowed",
                  "mean_followed", "std_followed", "t", "p_value"]
TABLE2_COLUMNS = ["dataset", "n", "mean_pretrained", "std_pretrained", "mean_tuned", "std_tuned", "t", "p_value"]


def instruction_scores(attributions: str | Path, dataset: str | Path, groups: dict, analysis: dict) -> pd.DataFrame:
    """One row per sample: id, group, instruction score and response length.

    Args:
        attributions: an attribution shard (.npz) of every dataset sample
        analysis: levels, threshold and p

    Returns a frame of columns id, group, score, response_tokens, instruction_tokens. Every dataset
    sample must have an attribution and vice versa (`joined_samples`, which names what does not match).
    """
    joined = joined_samples(attributions, dataset, analysis["levels"])
    rows = []
    for j in joined.samples:
        a = j.attribution
        score = sample_score(a.matrix, j.mask, analysis["levels"], analysis["threshold"], analysis["p"], joined.binned)
        rows.append((a.id, dataset_group(a.id, groups), score, len(a.response_tokens), int(j.mask.sum())))
    frame = pd.DataFrame(rows, columns=["id", "group", "score", "response_tokens", "instruction_tokens"])
    frame.attrs["meta"] = joined.meta  # how the attributions were made, for the note under the table
    frame.attrs["responses"] = {j.attribution.id: j.attribution.response for j in joined.samples}  # Table 1's check
    return frame


def _groups_in_order(groups: pd.Series) -> list[str]:
    """Dataset groups in order of first appearance in the data (not of config keys, whose order
    may change without changing the table)."""
    return list(dict.fromkeys(groups))


def table1(scores: pd.DataFrame, ratings: dict[str, int], min_response_tokens: int) -> pd.DataFrame:
    """Per dataset group, unfollowed (rating 1) vs followed (2-4) responses of the rated model.

    Args:
        scores: one row per sample (instruction_scores): id, group, score, response_tokens, instruction_tokens
        ratings: sample id -> human rating (<= 0: unrated)

    Returns one row per group, the columns TABLE1_COLUMNS.
    """
    rated = _table1_samples(scores, ratings, min_response_tokens)
    rows = []
    for group in _groups_in_order(rated["group"]):
        g = rated[rated["group"] == group]
        unfollowed, followed = g.loc[g["rating"] == 1, "score"].to_numpy(), g.loc[g["rating"] >= 2, "score"].to_numpy()
        t, p = t_test(unfollowed, followed, equal_var=False, alternative="less")
        rows.append((group, len(unfollowed), len(followed), *mean_std(unfollowed), *mean_std(followed), t, p))
    return pd.DataFrame(rows, columns=TABLE1_COLUMNS)


def _table1_samples(scores: pd.DataFrame, ratings: dict[str, int], min_response_tokens: int) -> pd.DataFrame:
    """The rows Table 1 counts, with their rating: rated (> 0), responses of min_response_tokens or more."""
    scores = scores.assign(rating=scores["id"].map(ratings).fillna(-1).astype(int))
    return scores[(scores["rating"] > 0) & (scores["response_tokens"] >= min_response_tokens)]


# transformers' `clean_up_tokenization` (the paper's `utils.tokens2text` had it on): it removes the space a
# tokenizer's pieces put before some punctuation, e.g. "x ." -> "x.", "a != b" -> "a!= b".
_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def comparable_text(text: str) -> str:
    """A response as Table 1 compares it with the rated text: formatting that one text can carry and
    the other not, removed (docs/design.md#tables-1-and-2). Surrounding white space; the bytes of a
    character cut off at the end, decoded as U+FFFD; one pair of enclosing double quotes (the ratings
    file's quoting, which `decode_field` removes, or the model's own); tabs and line breaks written
    as the ratings file writes them (`/t`, `/n`: it reads a literal "path/to" back as "path<TAB>o");
    and the tokenizer's clean-up of spaces before punctuation."""
    text = re.sub(r"[\s\ufffd]+\Z", "", text).strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    text = encode_field(text)
    while True:  # to a fixed point, so that a text already cleaned up compares equal to the raw one
        cleaned = text
        for old, new in _CLEAN_UP:
            cleaned = cleaned.replace(old, new)
        if cleaned == text:
            return text
        text = cleaned


def same_rated_text(attributed: str, rated: str) -> bool:
    """Whether an attributed response is the text that was rated, up to formatting (comparable_text)."""
    return comparable_text(attributed) == comparable_text(rated)


def unmatched_ratings_note(scores: pd.DataFrame, ratings: dict[str, int], path: str, rated_model: str) -> str:
    """Which ratings name no sample of the dataset: Table 1 cannot count them (a typo in a File, or the
    ratings of a larger dataset than this run's). Said in the note and the log; none matching is an error.

    Args:
        scores: one row per dataset sample (instruction_scores)
        ratings: sample id -> rating (read_rated), of the ratings file `path`'s model `rated_model`
    """
    unmatched = sorted(set(ratings) - set(scores["id"]))
    if len(unmatched) == len(ratings):
        raise DatasetError(f"{path}: none of the {len(ratings)} ratings of {rated_model} names a sample of the "
                           f"dataset (File, without .pkl, is a sample's ID), e.g. {unmatched[0]!r}")
    if not unmatched:
        return ""
    note = (f"{len(unmatched)} of the {len(ratings)} ratings of {rated_model} in {path} name no sample of the "
            f"dataset, and Table 1 leaves them out: {', '.join(map(repr, unmatched[:5]))}")
    log.warning(note)
    return note + ("" if len(unmatched) <= 5 else ", ...")


def rated_response_note(scores: pd.DataFrame, ratings: dict[str, int], rated: dict[str, str],
                        min_response_tokens: int, model: str) -> str:
    """How many of the responses Table 1 counts differ from the text that was rated: a regenerated
    response (`attribution.response: generate`) that is not the rated one keeps the sample's rating,
    which rates another text. Kept in the table, as in the paper's code; said in the note and the log.

    Args:
        scores: one row per sample (instruction_scores) of `model`, attrs["responses"] their texts
        rated: sample id -> the rated response text (read_rated)
    """
    counted = _table1_samples(scores, ratings, min_response_tokens)["id"].tolist()
    attributed = scores.attrs["responses"]
    differ = [i for i in counted if not same_rated_text(attributed[i], rated[i])]
    note = (f"{len(differ)} of the {len(counted)} rated responses of {model} in Table 1 differ from the text "
            "that was rated")
    if not differ:
        return note
    note += f" (their ratings rate another text): {', '.join(differ[:5])}"
    log.warning(note)
    return note + ("" if len(differ) <= 5 else ", ...")


def table2(pretrained: pd.DataFrame, tuned: pd.DataFrame) -> pd.DataFrame:
    """Per dataset group, the pre-trained vs the tuned model's scores of the samples both scored.

    Args:
        pretrained: one row per sample (instruction_scores) of the pre-trained model
        tuned: the same of the tuned model

    Returns one row per group, the columns TABLE2_COLUMNS.
    """
    merged = pretrained.merge(tuned, on=["id", "group"], suffixes=("_pre", "_tuned"))
    rows = []
    for group in _groups_in_order(merged["group"]):
        g = merged[merged["group"] == group]
        x, y = g["score_pre"].to_numpy(), g["score_tuned"].to_numpy()
        t, p = t_test(x, y, equal_var=False, alternative="less")
        rows.append((group, len(g), *mean_std(x), *mean_std(y), t, p))
    return pd.DataFrame(rows, columns=TABLE2_COLUMNS)


def empty_response_note(scores: pd.DataFrame, model: str) -> str:
    """Samples with an empty response score 0 and count in the means, as in the paper's evaluate();
    said in the log and under the table rather than silently.

    Args:
        scores: one row per sample (instruction_scores) of `model`
    """
    empty = scores.loc[scores["response_tokens"] == 0, "id"].tolist()
    if not empty:
        return ""
    note = (
        f"{len(empty)} sample(s) of {model} have an empty response and score 0 (as in the paper): "
        f"{', '.join(empty[:5])}"
    )
    log.warning(note)
    return note + ("" if len(empty) <= 5 else ", ...")


def settings_note(analysis: dict, min_response_tokens: int | None = None, ratings: str = "",
                  rated_model: str = "") -> str:
    """The settings the table was computed with, under it: `snakemake --report` shows the tables as they
    are, stale or not, so the report quotes these rather than the config of the moment."""
    note = (f"Computed with L = {analysis['levels']} (analysis.levels), b = {analysis['threshold']} "
            f"(analysis.threshold), p = {analysis['p']:g} (analysis.p)")
    if min_response_tokens is not None:
        note += (f"; responses of fewer than {min_response_tokens} tokens left out (analysis.min_response_tokens); "
                 f"ratings: {ratings}, model {rated_model} (ratings)")
    return note


def arithmetic_note(meta: dict, model: str) -> str:
    """Which arithmetic made a model's attributions, from the shard header (computed shards record
    what they actually ran in; released ones are the paper's own)."""
    source = meta.get("source", "unknown source")
    if "precision" not in meta:
        return f"{model}: attributions {source}"
    return (f"{model}: attributions {source}, precision {meta['precision']} (weights {meta['weights_dtype']}, "
            f"activations {meta['activations_dtype']}, matmuls {meta['matmul']}, {meta['accumulation']})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=("table1", "table2"))
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--attributions", nargs="+", required=True, help="table1: tuned; table2: pretrained tuned")
    parser.add_argument("--ratings")
    parser.add_argument("--rated-model", help="the ratings file's Model column value")
    parser.add_argument("--groups", required=True, help="prefix=group,prefix=group")
    parser.add_argument("--levels", type=int, default=10)
    parser.add_argument("--threshold", type=int, default=7)
    parser.add_argument("--p", type=float, default=4.0)
    parser.add_argument("--min-response-tokens", type=int, default=5)
    parser.add_argument("--title", default="")
    parser.add_argument("--notice", default="", help="a line under the title (config key notice)")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    groups = dict(item.split("=", 1) for item in args.groups.split(",") if item)
    analysis = {"levels": args.levels, "threshold": args.threshold, "p": args.p}
    scores = [instruction_scores(a, args.dataset, groups, analysis) for a in args.attributions]
    if args.table == "table1":
        if not (args.ratings and args.rated_model) or len(scores) != 1:
            parser.error("table1 needs one --attributions file, --ratings and --rated-model")
        ratings, rated = read_rated(args.ratings, args.rated_model)
        table = table1(scores[0], ratings, args.min_response_tokens)
        notes = [settings_note(analysis, args.min_response_tokens, args.ratings, args.rated_model),
                 unmatched_ratings_note(scores[0], ratings, args.ratings, args.rated_model),
                 rated_response_note(scores[0], ratings, rated, args.min_response_tokens,
                                     Path(args.attributions[0]).parent.name)]
    else:
        if len(scores) != 2:
            parser.error("table2 needs two --attributions files: pretrained, tuned")
        table = table2(scores[0], scores[1])
        notes = [settings_note(analysis)]  # Table 1 keeps responses of min_response_tokens or more:
        notes += [empty_response_note(frame, Path(path).parent.name) for frame, path in zip(scores, args.attributions)]
    notes += [arithmetic_note(frame.attrs["meta"], Path(path).parent.name)
              for frame, path in zip(scores, args.attributions)]
    write_table(table, args.output, args.title, notes, args.notice)
    log.info("%s:\n%s", args.output, table.to_string(index=False))


if __name__ == "__main__":
    main()
