"""Table 5 and Figure 3: what the FFN concepts are for, pre-trained vs tuned (DESIGN.md 3.3, 4).

Input: per seed, the annotated concept files (`linear_task_seed{s}.tsv` with a `Task` column,
`linear_concept_seed{s}.tsv` with a `Concept` column, each followed by `Explainable Words
Summary` and the `linear_words.tsv` columns). For every seed and model, the share of described
concepts (Explainable = 1) whose label contains a category; Table 5 gives the mean and the
population std of those shares over seeds, and a two-sided t-test between the models' per-seed
shares (Student's, as the paper). Figure 3 plots, per group of layers, the share of each
linguistic level averaged over seeds: pre-trained dashed, tuned solid.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .tables import write_table

TASKS = ("writing", "math", "coding", "translation", "none")
LEVELS = ("phonology", "morphology", "syntax", "semantic")
COLUMNS = ("Explainable", "Words", "Summary", "Model", "Size", "Layer", "Type", "Head", "Rank", "Score", "TopK")
TABLE5_COLUMNS = ["category", "mean_pretrained", "std_pretrained", "mean_tuned", "std_tuned", "t", "p_value"]


def read_seed_file(path: str | Path, label: str) -> pd.DataFrame:
    """One seed's annotations; `label` is the first column (Task or Concept)."""
    path = Path(path)
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    expected = (label, *COLUMNS)
    if tuple(frame.columns) != expected:
        raise ValueError(f"{path}: expected the columns {' '.join(expected)}, found {' '.join(frame.columns)}")
    for column in ("Explainable", "Layer", "Rank"):
        bad = pd.to_numeric(frame[column], errors="coerce").isna()
        if bad.any():
            line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            raise ValueError(f"{path}:{line}: {column} {frame[column][bad].iloc[0]!r} is not a number")
        frame[column] = pd.to_numeric(frame[column])
    return frame.rename(columns={label: "Label"})


def _shares(frame: pd.DataFrame, model: str, categories, path) -> list[float]:
    described = frame[(frame["Model"] == model) & (frame["Explainable"] == 1)]
    if described.empty:
        raise ValueError(f"{path}: no described concepts of the model {model!r}")
    labels = described["Label"].str.lower()
    return [float(labels.str.contains(re.escape(c)).mean()) for c in categories]


def table5(seed_files: list[str | Path], label: str, pretrained: str, tuned: str, categories) -> pd.DataFrame:
    pre, post = [], []
    for path in seed_files:
        frame = read_seed_file(path, label)
        pre.append(_shares(frame, pretrained, categories, path))
        post.append(_shares(frame, tuned, categories, path))
    pre, post = np.array(pre), np.array(post)  # (seeds, categories)
    rows = []
    for k, category in enumerate(categories):
        x, y = pre[:, k], post[:, k]
        if len(x) < 2 or (np.ptp(x) == 0 and np.ptp(y) == 0):
            t = p = float("nan")  # fewer than two seeds, or no spread at all: no test
        else:
            result = stats.ttest_ind(x, y)
            t, p = float(result.statistic), float(result.pvalue)
        rows.append((category, x.mean(), x.std(), y.mean(), y.std(), t, p))
    return pd.DataFrame(rows, columns=TABLE5_COLUMNS)


def level_shares_by_group(seed_files, pretrained: str, tuned: str, layers: int, groups: int = 8) -> dict:
    """{model: (groups, levels) array}: share of each level among described concepts, seed mean."""
    out = {}
    for model in (pretrained, tuned):
        per_seed = []
        for path in seed_files:
            frame = read_seed_file(path, "Concept")
            frame = frame[(frame["Model"] == model) & (frame["Explainable"] == 1)]
            group = frame["Layer"] * groups // layers
            labels = frame["Label"].str.lower()
            per_seed.append([[float(labels[group == g].str.contains(level).mean()) if (group == g).any() else np.nan
                              for level in LEVELS] for g in range(groups)])
        out[model] = np.nanmean(np.array(per_seed), axis=0)
    return out


def figure3(shares: dict, pretrained: str, tuned: str, layers: int, output_stem: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = shares[pretrained].shape[0]
    members = [[layer for layer in range(layers) if layer * groups // layers == g] for g in range(groups)]
    x = np.arange(1, groups + 1)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for k, (level, color) in enumerate(zip(LEVELS, ("tab:blue", "tab:green", "tab:red", "tab:purple"))):
        ax.plot(x, shares[pretrained][:, k], color=color, marker="s", linestyle="--", label=f"{pretrained}: {level}")
        ax.plot(x, shares[tuned][:, k], color=color, marker="*", linestyle="-", label=f"{tuned}: {level}")
    ticks = [f"{m[0] + 1}" if len(m) == 1 else f"{m[0] + 1}-{m[-1] + 1}" for m in members]
    ax.set_xticks(x, ticks, rotation=45)
    ax.set_xlabel("Layers")
    ax.set_ylabel("Share of described concepts")
    ax.set_title(f"Linguistic levels of the FFN concepts: {pretrained} (dashed) vs {tuned} (solid)", fontsize=9)
    ax.grid(True)
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below: never over data
    fig.tight_layout()
    Path(output_stem).parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".pdf", ".png"):
        fig.savefig(Path(output_stem).with_suffix(suffix), dpi=150, bbox_inches="tight")  # legend kept whole
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tables = sub.add_parser("tables", help="table5_tasks.tsv and table5_levels.tsv (+ .md)")
    tables.add_argument("--tasks", nargs="+", required=True, help="linear_task_seed{s}.tsv, one per seed")
    tables.add_argument("--output-dir", required=True, help="results/tables/PAIR")
    figure = sub.add_parser("figure", help="Figure 3 as PDF and PNG")
    figure.add_argument("--layers", type=int, required=True)
    figure.add_argument("--output", required=True, help="the .pdf path; the .png is written beside it")
    for command in (tables, figure):
        command.add_argument("--concepts", nargs="+", required=True, help="linear_concept_seed{s}.tsv, one per seed")
        command.add_argument("--pretrained", required=True)
        command.add_argument("--tuned", required=True)
        command.add_argument("--pair", default="")
    args = parser.parse_args(argv)
    if args.command == "tables":
        out = Path(args.output_dir)
        write_table(table5(args.tasks, "Task", args.pretrained, args.tuned, TASKS), out / "table5_tasks.tsv",
                    f"Table 5 ({args.pair}): tasks of the described FFN concepts")
        write_table(table5(args.concepts, "Concept", args.pretrained, args.tuned, LEVELS), out / "table5_levels.tsv",
                    f"Table 5 ({args.pair}): linguistic levels of the described FFN concepts")
    else:
        groups = min(8, args.layers)
        shares = level_shares_by_group(args.concepts, args.pretrained, args.tuned, args.layers, groups)
        figure3(shares, args.pretrained, args.tuned, args.layers, Path(args.output).with_suffix(""))


if __name__ == "__main__":
    main()
