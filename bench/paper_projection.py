"""The paper's attribution time on a GPU, projected over its real samples rather than one mean shape.

    PYTHONPATH=. python bench/paper_projection.py [--gpu-json docs/gpu-runs/2026-12-04-h200/run1-gpu_bench.json]
        [--generation-json docs/gpu-runs/2026-12-04-h200/run3-generation-gpu_bench.json | none]
        [--released ../shared/paper/results/attribution_interpret]

`bench/gpu_bench.py` times one sample of 200 + 300 tokens in reverse and forward mode per precision
mode, and one of the paper's mean shape (51 + 300). A sample's cost is not linear in its prompt
length (forward mode runs one tangent per prompt row over the whole sequence) and Vicuna-7B's
responses are shorter than LLaMA-7B's (197 tokens on average against 294), so one mean shape can err
either way. This script reads the released attributions' token counts (632 samples per model: the
prompt with its BOS, and the response), turns each mode's two timings into seconds per position
(`reverse_positions`, `forward_positions`: what `auto` counts), checks that model against the timed
mean-shape sample, and sums, over the 1,264 samples, the mode `auto` picks on a CUDA device
(`choose_autodiff`). The response generation is added as the job runs it: a shard's prompts in one
batch of 16 (`generate_batched` in the JSON, from --generation-json when given), each batch at the timed
batch's full length; a run that timed one prompt at a time only is counted at its seconds per token times
each sample's response length. The layer jobs, model loads and annotation are the JSON's projection.
Prints Markdown; reads pickles only through the project's restricted unpickler.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow_scripts.attribution import choose_autodiff, forward_positions, reverse_positions  # noqa: E402
from workflow_scripts.released import safe_load_pickle  # noqa: E402

MODELS = ("ifa_llama_7b", "ifa_vicuna_7b")


def released_shapes(released: Path) -> list[tuple[int, int]]:
    """(prompt tokens with BOS, response tokens) of every released sample of both models."""
    shapes = []
    for model in MODELS:
        files = sorted((released / model).glob("*.pkl"))
        if not files:
            raise SystemExit(f"no released attributions in {released / model}")
        for path in files:
            sample = safe_load_pickle(path)
            shapes.append((len(sample["Input"]), len(sample["Output"])))
    return shapes


def sample_seconds(n: int, m: int, reverse_cost: float, forward_cost: float | None, chunk_size: int) -> float:
    """One sample's attribution in the mode `auto` picks on a CUDA device, at the measured position costs."""
    rows = n - 1  # the prompt's rows: its tokens but BOS
    reverse = reverse_cost * reverse_positions(n, m, chunk_size)
    if forward_cost is None or choose_autodiff("auto", rows, n, m, chunk_size, "cuda") == "reverse":
        return reverse
    return forward_cost * forward_positions(rows, n, m)


def generation_seconds(entry: dict, shapes: list[tuple[int, int]]) -> float | None:
    """The greedy responses of every sample in one mode: as the job generates them, a shard's prompts in
    batches (`generate_batch`, the timed batch's size), each batch running the full timed length (a batch
    lasts as long as its longest response; errs long); from a run that timed one prompt at a time only,
    its seconds per token times each response's length; None when neither was timed."""
    batched, solo = entry.get("generate_batched"), entry.get("generate")
    if batched and "prompt_lengths" in batched:
        per_model = len(shapes) // len(MODELS)
        return len(MODELS) * -(-per_model // batched["prompts"]) * batched["seconds"]
    return None if solo is None else solo["seconds_per_token"] * sum(m for _, m in shapes)


def with_generation(bench: dict, generation_run: dict) -> dict:
    """`bench` with each mode's generation timings taken from another run of the same card and shape
    (`gpu_bench.py --generation-only`)."""
    if (generation_run["card"], generation_run["shape"]) != (bench["card"], bench["shape"]):
        raise SystemExit(f"the generation run is of {generation_run['card']}, {generation_run['shape']}; the "
                         f"attribution run of {bench['card']}, {bench['shape']}")
    merged = json.loads(json.dumps(bench))
    for mode, entry in generation_run["attribution"]["modes"].items():
        target = merged["attribution"]["modes"].setdefault(mode, {})
        for key in ("generate", "generate_batched"):
            if key in entry:
                target[key] = entry[key]
    return merged


def project(bench: dict, shapes: list[tuple[int, int]]) -> list[dict]:
    a, sample = bench["attribution"], bench["sample"]
    chunk = a["chunk_size"]
    n0, m0 = sample["prompt"], sample["response"]
    fixed = sum(v for v in bench["projection"]["fixed_seconds"].values() if v is not None)
    rows = []
    for mode, entry in a["modes"].items():
        if entry.get("seconds") is None:
            continue
        reverse_cost = entry["seconds"] / reverse_positions(n0, m0, chunk)
        forward = entry.get("forward")
        forward_cost = forward["seconds"] / forward_positions(n0, n0, m0) if forward else None
        check = entry.get("paper_shape_auto")
        predicted = sample_seconds(sample["paper_prompt"], m0, reverse_cost, forward_cost, chunk)
        attribution = sum(sample_seconds(n, m, reverse_cost, forward_cost, chunk) for n, m in shapes if m > 0)
        generation = generation_seconds(entry, shapes)
        rows.append({"mode": mode, "forward_measured": forward is not None,
                     "mean_shape_measured": None if check is None else check["seconds"],
                     "mean_shape_predicted": predicted, "attribution_hours": attribution / 3600,
                     "generation_hours": None if generation is None else generation / 3600,
                     "total_hours": (attribution + (generation or 0.0) + fixed) / 3600})
    return rows


def markdown(bench: dict, shapes: list[tuple[int, int]], rows: list[dict]) -> str:
    fixed = bench["projection"]["fixed_seconds"]
    lines = [f"{len(shapes)} released samples ({sum(m == 0 for _, m in shapes)} with an empty response), "
             f"{sum(m for _, m in shapes):,} response tokens; {bench['card']}, torch {bench['torch']}", "",
             "| mode | mean shape, timed / this model | attribution (h) | generation (h) | total with the rest (h) |",
             "|---|---|---|---|---|"]
    for r in rows:
        timed = "n/a" if r["mean_shape_measured"] is None else f"{r['mean_shape_measured']:.2f} s"
        generation = "not measured" if r["generation_hours"] is None else f"{r['generation_hours']:.2f}"
        note = "" if r["forward_measured"] else " (no forward-mode timing: reverse only)"
        total = f"{r['total_hours']:.2f}" + ("" if r["generation_hours"] is not None else ", without generation")
        lines.append(f"| {r['mode']}{note} | {timed} / {r['mean_shape_predicted']:.2f} s | "
                     f"{r['attribution_hours']:.2f} | {generation} | {total} |")
    lines += ["", "The rest: " + "; ".join(f"{k} {'n/a' if v is None else f'{v / 3600:.2f} h'}"
                                          for k, v in fixed.items())]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-json", type=Path, default=REPO / "docs/gpu-runs/2026-12-04-h200/run1-gpu_bench.json",
                        help="bench/gpu_bench.py's --output")
    parser.add_argument("--released", type=Path, default=REPO.parent / "shared/paper/results/attribution_interpret",
                        help="the paper's released attributions (ifa_llama_7b/, ifa_vicuna_7b/)")
    parser.add_argument("--generation-json", type=Path,
                        default=REPO / "docs/gpu-runs/2026-12-04-h200/run3-generation-gpu_bench.json",
                        help="another run's --output whose generation timings replace --gpu-json's (a "
                             "`gpu_bench.py --generation-only` run of the same card); 'none': --gpu-json's own")
    args = parser.parse_args(argv)
    bench = json.loads(args.gpu_json.read_text())
    if str(args.generation_json) != "none":
        bench = with_generation(bench, json.loads(args.generation_json.read_text()))
    shapes = released_shapes(args.released)
    print(markdown(bench, shapes, project(bench, shapes)))


if __name__ == "__main__":
    main()
