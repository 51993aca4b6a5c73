"""Attribution heatmaps of one sample, pre-trained and tuned side by side (docs/design.md#report).

The PNG shows the binned attribution (threshold b = 0, as the paper's pictures) with prompt tokens
across and response tokens down, the importance density as bars above the prompt tokens, and the
instruction tokens in red. Long prompts wrap into rows of `PER_ROW` tokens; long responses label
every k-th token, so no tick label ever overlaps another. The HTML page shows the same sample as
text, each prompt token coloured by its density, the value on hover; it needs no network.
"""
from __future__ import annotations

import argparse
import html
import logging
import math
from pathlib import Path

import numpy as np

from .atomic import atomic_dir, atomic_file, atomic_write_text
from .attribution_views import SampleView, chosen_samples, load_views
from .cli import positive_int, setup_logging
from .progress import progress

log = logging.getLogger(__name__)

PER_ROW = 40  # prompt tokens per row of panels
MAX_RESPONSE_LABELS = 40  # response tick labels per panel at most
TOKEN_INCH = 0.17  # width of one prompt token, and height of one labelled response row
INSTRUCTION_COLOUR = "#c0392b"
OTHER_COLOUR = "#7f8c8d"
def tick_label(text: str, limit: int = 12) -> str:
    """A short, visible label of a token's text (token_texts): spaces as `␣`, line breaks as `↵`, `$`
    escaped (matplotlib math), and `∅` for a token that stands for no text of its own."""
    text = text.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5")
    text = text if len(text) <= limit else text[: limit - 1] + "\u2026"
    return (text or "\u2205").replace("$", r"\$")


def response_ticks(m: int, most: int = MAX_RESPONSE_LABELS) -> np.ndarray:
    """Which response rows get a label: all when they fit, else every k-th (never more than `most`)."""
    return np.arange(0, m, max(1, math.ceil(m / most)))


def draw_sample(views: dict[str, tuple[str, SampleView]], levels: int, title: str, output: str | Path) -> None:
    """`views`: model label -> (role, view), pre-trained first. Rows of panels along the prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    columns = list(views.items())
    n = max(len(v.prompt_texts) for _, (_, v) in columns)
    rows = max(1, math.ceil(n / PER_ROW))
    span = max(1, min(PER_ROW, n))  # columns per row: a short prompt's panel is as wide as the prompt
    shown = max(1, min(max(len(v.response_texts) for _, (_, v) in columns), MAX_RESPONSE_LABELS))
    bar_h, heat_h, gap_h = 0.9, max(1.2, shown * TOKEN_INCH), 1.3
    width = span * TOKEN_INCH + 2.0
    height = rows * (bar_h + heat_h + gap_h) + 0.9
    fig = plt.figure(figsize=(width * len(columns) + 0.8, height), dpi=100)
    # margins in inches (the figure's height grows with the rows): the title sits just above them
    outer = fig.add_gridspec(rows, len(columns), hspace=gap_h / (bar_h + heat_h), wspace=0.3,
                             top=1 - 0.75 / height, bottom=gap_h / height)
    image = None
    for c, (label, (role, view)) in enumerate(columns):
        for r in range(rows):
            start, stop = r * PER_ROW, min((r + 1) * PER_ROW, len(view.prompt_texts))
            inner = outer[r, c].subgridspec(2, 1, height_ratios=[bar_h, heat_h], hspace=0.08)
            bar, heat = fig.add_subplot(inner[0]), fig.add_subplot(inner[1])
            image = _panel(bar, heat, view, start, stop, levels, span)
            if r == 0:
                bar.set_title(f"{label} ({role})", fontsize=11, fontweight="bold")
            if r == 0 and c == 0:
                bar.legend(handles=[Patch(color=INSTRUCTION_COLOUR, label="instruction token"),
                                    Patch(color=OTHER_COLOUR, label="other prompt token")],
                           fontsize=7, loc="upper right", framealpha=0.9)
    if image is not None:
        bar = fig.colorbar(image, ax=fig.axes, fraction=0.015, pad=0.01)
        bar.set_label(f"binned attribution (0..{levels}, b = 0)", fontsize=9)
    fig.suptitle(title, fontsize=12, y=1 - 0.2 / height, parse_math=False)  # a sample id may hold `$`
    with atomic_file(output) as tmp, open(tmp, "wb") as handle:
        fig.savefig(handle, format="png", bbox_inches="tight")
    plt.close(fig)


def _panel(bar, heat, view: SampleView, start: int, stop: int, levels: int, span: int):
    """One row of one model: density bars over prompt tokens start..stop, heatmap below; `span` columns
    wide, so that a token has the same width in every row."""
    x = np.arange(stop - start)
    mask = view.mask[start:stop]
    bar.bar(x, view.density[start:stop], width=0.85,
            color=np.where(mask, INSTRUCTION_COLOUR, OTHER_COLOUR))
    bar.set_xlim(-0.5, span - 0.5)
    bar.set_ylim(0, 1.05)
    bar.set_xticks([])
    bar.set_yticks([0, 1])
    bar.tick_params(labelsize=7)
    bar.set_ylabel("density", fontsize=8)
    m = len(view.response_texts)
    image = heat.imshow(view.binned[start:stop].T if m else np.zeros((1, stop - start)), aspect="auto",
                        cmap="YlOrRd", vmin=0, vmax=levels, interpolation="nearest",
                        extent=(-0.5, stop - start - 0.5, max(m, 1) - 0.5, -0.5))
    heat.set_xlim(-0.5, span - 0.5)
    heat.set_xticks(x)
    heat.set_xticklabels([tick_label(t) for t in view.prompt_texts[start:stop]], rotation=90, fontsize=7)
    for tick, marked in zip(heat.get_xticklabels(), mask):
        if marked:
            tick.set_color(INSTRUCTION_COLOUR)
            tick.set_fontweight("bold")
    ticks = response_ticks(m)
    heat.set_yticks(ticks)
    heat.set_yticklabels([f"{j} {tick_label(view.response_texts[j])}" for j in ticks], fontsize=7)
    heat.set_ylabel(f"response tokens ({m})", fontsize=8)
    heat.set_xlabel(f"prompt tokens {start}..{stop - 1}", fontsize=8)
    return image


def _density_colour(value: float) -> str:
    return f"rgba(214, 39, 40, {0.08 + 0.85 * float(value):.3f})"


def sample_page(views: dict[str, tuple[str, SampleView]], title: str, note: str) -> str:
    """A self-contained HTML page: per model, the prompt's tokens coloured by density (value on hover),
    instruction tokens underlined, then the response."""
    sections = []
    for label, (role, view) in views.items():
        tokens = []
        for i, (token, value, marked) in enumerate(zip(view.prompt_texts, view.density, view.mask)):
            text = html.escape(token).replace("\n", "\u21b5<br>")
            kind = " instruction token" if marked else ""
            tokens.append(
                f'<span class="tok{" ins" if marked else ""}" style="background:{_density_colour(value)}" '
                f'title="token {i}: density {value:.3f}{kind}" data-density="{value:.6f}">{text}</span>'
            )
        response = html.escape("".join(view.response_texts))
        sections.append(
            f'<section><h2>{html.escape(label)} <small>({role})</small></h2>\n<div class="prompt">{"".join(tokens)}'
            f'</div>\n<h3>Response ({len(view.response_texts)} tokens)</h3>\n<pre class="response">{response}</pre>'
            "</section>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 110em; }}
.columns {{ display: flex; gap: 2em; }} section {{ flex: 1; min-width: 0; }}
.prompt {{ font-family: monospace; line-height: 1.9; white-space: pre-wrap; overflow-wrap: anywhere; }}
.tok {{ border-radius: 2px; }} .tok.ins {{ border-bottom: 2px solid #1f4e99; }}
.response {{ white-space: pre-wrap; overflow-wrap: anywhere; background: #f4f4f4; padding: .5em; }}
.legend span {{ padding: 0 .4em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(note)}</p>
<p class="legend">Density: <span style="background:{_density_colour(0)}">0</span>
<span style="background:{_density_colour(0.5)}">0.5</span> <span style="background:{_density_colour(1)}">1</span>
&nbsp; <span class="tok ins">instruction token</span> (hover a token for its value)</p>
<div class="columns">
{chr(10).join(sections)}
</div></body></html>
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--groups", required=True, help="prefix=group,prefix=group")
    parser.add_argument("--samples", type=int, required=True, help="samples per dataset group (report.samples)")
    parser.add_argument("--pretrained", nargs=2, required=True, metavar=("MODEL", "ATTRIBUTIONS"))
    parser.add_argument("--tuned", nargs=2, required=True, metavar=("MODEL", "ATTRIBUTIONS"))
    parser.add_argument("--levels", type=positive_int, required=True)
    parser.add_argument("--threshold", type=int, required=True)
    parser.add_argument("--p", type=float, required=True)
    parser.add_argument("--png-dir", required=True)
    parser.add_argument("--html-dir", required=True)
    args = parser.parse_args(argv)
    setup_logging()
    analysis = {"levels": args.levels, "threshold": args.threshold, "p": args.p}
    groups = dict(item.split("=", 1) for item in args.groups.split(",") if item)
    ids = chosen_samples(args.dataset, groups, args.samples)
    models = {}
    for role, (model, path) in (("pretrained", args.pretrained), ("tuned", args.tuned)):
        models[model] = (role, load_views(path, args.dataset, analysis, ids))
    note = (f"Importance density at L = {args.levels}, b = {args.threshold}, p = {args.p:g} (config key analysis), "
            "scaled to a maximum of 1 per model; the tables score the same densities.")
    with atomic_dir(args.png_dir) as pngs, atomic_dir(args.html_dir) as pages:
        for sample_id in progress(ids, "heatmaps", "sample"):
            views = {model: (role, views[sample_id]) for model, (role, views) in models.items()}
            title = f"Sample {sample_id}: attribution, pre-trained vs tuned"
            # the settings in the picture: a report made after a config edit shows them, not the config's
            settings = f" (cells: L = {args.levels}; bars: b = {args.threshold}, p = {args.p:g})"
            draw_sample(views, args.levels, title + settings, pngs / f"{sample_id}.png")
            atomic_write_text(pages / f"{sample_id}.html", sample_page(views, title, note))
    log.info("%d samples -> %s, %s", len(ids), args.png_dir, args.html_dir)


if __name__ == "__main__":
    main()
