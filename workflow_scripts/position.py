"""Importance by relative prompt position ("lost in the middle"): the paper finds the density over
prompt positions U-shaped in pre-trained models and flatter after tuning (docs/design.md#report).

Each prompt token i of n sits at relative position (i + 0.5) / n, in one of `bins` equal bins.
A sample contributes the mean density of its tokens in each bin it has tokens in; a bin's value
is the mean over samples, its band one standard error (std with ddof 1 / sqrt(samples)).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_file
from .cli import positive_int, setup_logging

log = logging.getLogger(__name__)


def sample_bins(density: np.ndarray, bins: int = 10) -> np.ndarray:
    """(bins,) mean density of one sample's tokens per relative-position bin; NaN where it has none.

    Args:
        density: (P,) importance density of each prompt token, in prompt order
    """
    density = np.asarray(density, dtype=np.float64)
    n = len(density)
    out = np.full(bins, np.nan)
    if n == 0:
        return out
    which = np.minimum(((np.arange(n) + 0.5) / n * bins).astype(int), bins - 1)
    sums, counts = np.bincount(which, density, bins), np.bincount(which, minlength=bins)
    np.divide(sums, counts, out=out, where=counts > 0)
    return out


def position_profile(densities: list[np.ndarray], bins: int = 10) -> pd.DataFrame:
    """Per bin: mean over samples, standard error and number of samples with tokens in it.

    Args:
        densities: (P_i,) per sample, each sample's prompt-token densities (lengths differ)
    """
    per_sample = np.array([sample_bins(d, bins) for d in densities]).reshape(-1, bins)
    counts = (~np.isnan(per_sample)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, np.nansum(per_sample, axis=0) / np.maximum(counts, 1), np.nan)
        deviations = np.where(np.isnan(per_sample), 0.0, per_sample - mean) ** 2
        std = np.sqrt(deviations.sum(axis=0) / np.maximum(counts - 1, 1))
        se = np.where(counts > 1, std / np.sqrt(np.maximum(counts, 1)), np.nan)
    return pd.DataFrame({
        "bin": np.arange(1, bins + 1),
        "start": np.arange(bins) / bins,
        "end": np.arange(1, bins + 1) / bins,
        "mean": mean,
        "se": se,
        "samples": counts,
    })


def profiles_table(profiles: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Models side by side: one row per (model, bin).

    Args:
        profiles: model -> position_profile's table (one row per bin)
    """
    return pd.concat([p.assign(model=model) for model, p in profiles.items()], ignore_index=True)[
        ["model", "bin", "start", "end", "mean", "se", "samples"]
    ]


def draw_profiles(profiles: dict[str, tuple[str, pd.DataFrame]], title: str, output: str | Path) -> None:
    """Line per model (label -> (role, profile)) with a +-1 SE band; pre-trained dashed, tuned solid.

    Args:
        profiles: label -> (role, position_profile's table, one row per bin)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"pretrained": ("tab:blue", "--", "o"), "tuned": ("tab:red", "-", "s")}
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, (role, profile) in profiles.items():
        colour, line, marker = styles[role]
        centre = (profile["start"] + profile["end"]) / 2
        ax.plot(centre, profile["mean"], line, color=colour, marker=marker, label=f"{label} ({role})")
        se = profile["se"].fillna(0)
        ax.fill_between(centre, profile["mean"] - se, profile["mean"] + se, color=colour, alpha=0.2, linewidth=0)
    ax.set_xlim(0, 1)
    ax.set_xticks(np.linspace(0, 1, 11))
    ax.set_xlabel("relative position in the prompt (10 bins; 0 = first token)", fontsize=10)
    ax.set_ylabel("mean importance density (band: ±1 SE)", fontsize=10)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    with atomic_file(output) as tmp, open(tmp, "wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)


def main(argv=None):
    from .attribution_views import load_views

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--pretrained", nargs=2, required=True, metavar=("MODEL", "ATTRIBUTIONS"))
    parser.add_argument("--tuned", nargs=2, required=True, metavar=("MODEL", "ATTRIBUTIONS"))
    parser.add_argument("--levels", type=positive_int, required=True)
    parser.add_argument("--threshold", type=int, required=True)
    parser.add_argument("--p", type=float, required=True)
    parser.add_argument("--bins", type=positive_int, default=10)
    parser.add_argument("--pair", required=True)
    parser.add_argument("--png", required=True)
    parser.add_argument("--tsv", required=True)
    args = parser.parse_args(argv)
    setup_logging()
    analysis = {"levels": args.levels, "threshold": args.threshold, "p": args.p}
    profiles = {}
    for role, (model, path) in (("pretrained", args.pretrained), ("tuned", args.tuned)):
        views = load_views(path, args.dataset, analysis)
        profiles[model] = (role, position_profile([v.density for v in views.values()], args.bins))
        log.info("%s: %d samples\n%s", model, len(views), profiles[model][1].to_string(index=False))
    table = profiles_table({model: profile for model, (_, profile) in profiles.items()})
    with atomic_file(args.tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    settings = f"L = {args.levels}, b = {args.threshold}, p = {args.p:g}"  # in the picture, not only the config
    draw_profiles(profiles, f"Importance by prompt position ({args.pair}; {settings})", args.png)


if __name__ == "__main__":
    main()
