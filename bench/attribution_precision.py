"""Benchmark: how far the tf32, bfloat16 and float16 attribution modes land from float32 on a real checkpoint.

    PYTHONPATH=. python bench/attribution_precision.py [--samples 40 --max-new-tokens 64] [--output x.json]

SmolLM2-135M-Instruct (converted once by `python -m workflow_scripts.local_chat convert --output DIR`)
on prompts of the paper's dataset (evenly spaced over FinalDataset.tsv, prompts of at most
--max-prompt-tokens tokens, samples whose float32 greedy response is empty skipped). The float32 model
writes each greedy response (raw prompt, no chat template, as the paper); every mode then attributes
the same tokens, so that the matrices compare cell by cell. Per mode: the share of binned cells
(analysis defaults L=10, b=7) equal to float32's, the largest and mean absolute difference of the
per-sample instruction scores, the group means of the instruction score (Table 2's statistic for one
model), the mean and SD of the per-sample score differences with what they imply for the group means at
the paper's group sizes, and seconds per sample; for bfloat16 also how many of its own greedy responses equal float32's
(in the workflow each mode generates its own). Not a test: the issue's targets (group means within
0.005, >= 97% of cells equal) are reported against, never tuned to. On a CPU tf32 runs as float32 (TF32
is a CUDA mode), so its row is float32's by construction; --modes float32,bfloat16 skips it.

Two diagnostic rows, not workflow modes, split bfloat16's disagreement into its causes (--modes
float32,bf16-weights,autocast-bf16,bfloat16): `bf16-weights` runs the bf16-rounded weights in float32
arithmetic (what rounding the checkpoint alone changes); `autocast-bf16` keeps float32 weights and
residual stream and runs the body's matmuls in bf16 under torch.autocast (the head in float32).

`float16-f32mm` (and `bfloat16-f32mm`) is the float16 workflow mode with its matrix products computed
in float32 and rounded to float16 (`HalfMatmulsInFloat32`): a GPU's half kernels accumulate in float32
too, and a CPU without AVX512-FP16 computes its own float16 products ~100x slower than float32 ones
(an AMD EPYC; `float16` itself runs, at that speed). On a CPU with AVX512-FP16 (a 5th-generation Xeon)
`float16` runs at about float32's speed, and the emulation is not needed.

A mode may name its autodiff mode after a slash (`float32/reverse`, `bfloat16/forward`; without one, the
workflow's default `auto`): `--modes float32/reverse,float32/forward,bfloat16/reverse,bfloat16/forward`
compares forward mode with reverse mode in each precision, against float32 in reverse mode.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow_scripts.attribution import AUTODIFF, Attributor, attribute_sample, autodiff_summary  # noqa: E402
from workflow_scripts.attribution_model import PRECISIONS, load_model  # noqa: E402
from workflow_scripts.attribution_tokens import generate_responses  # noqa: E402
from workflow_scripts.dataset import dataset_group, read_dataset  # noqa: E402
from workflow_scripts.demo_annotator import DEFAULT_SMOLLM2_DIR, ensure_smollm2  # noqa: E402
from workflow_scripts.importance import bin_attributions  # noqa: E402
from workflow_scripts.shards import Shard, save_shard  # noqa: E402
from workflow_scripts.table1_2 import instruction_scores  # noqa: E402

GROUPS = {"user_oriented_task_": "self_instruct", "lima_author_": "lima", "mtbench_": "mtbench"}  # schema default
ANALYSIS = {"levels": 10, "threshold": 7, "p": 4.0}  # schema defaults (the paper's)


def select(samples, tokenizer, max_prompt_tokens: int):
    """Short prompts only (CPU time), in an order that spreads any prefix of it over the whole dataset."""
    short = [s for s in samples if len(tokenizer(s.prompt)["input_ids"]) <= max_prompt_tokens]
    order = np.argsort((np.arange(len(short)) * 0.6180339887) % 1.0, kind="stable")  # spread, then fill in
    return [short[i] for i in order]


def responses(model, tokenizer, candidates, count: int, max_new_tokens: int):
    """The first `count` candidates whose greedy response is not empty, with their tokens."""
    chosen = []
    for sample in candidates:
        (tokens,) = generate_responses(model, tokenizer, [sample.prompt], max_new_tokens)
        if tokens.input_ids.numel() > tokens.n_prompt:
            chosen.append((sample, tokens))
            print(f"  {len(chosen):>2} {sample.id}: {tokens.n_prompt} prompt + "
                  f"{tokens.input_ids.numel() - tokens.n_prompt} response tokens", flush=True)
        if len(chosen) == count:
            break
    return chosen


def subset_dataset(path: Path, ids: set[str], target: Path) -> Path:
    """The chosen samples' own lines of the dataset file (header kept), for the table code."""
    lines = path.read_text(encoding="utf8").splitlines(keepends=True)
    target.write_text(lines[0] + "".join(line for line in lines[1:] if line.split("\t", 1)[0] in ids), encoding="utf8")
    return target


# Not workflow modes (see the docstring): `<mode>-f32mm` is a half mode with `HalfMatmulsInFloat32`.
DIAGNOSTICS = ("bf16-weights", "autocast-bf16", "float16-f32mm", "bfloat16-f32mm")


HALF_MATMULS = {"mm", "bmm", "addmm", "baddbmm", "mv", "addmv", "dot"}


class HalfMatmulsInFloat32(TorchDispatchMode):
    """Half-precision matrix products computed on the CPU's float32 units, the result rounded to the
    half dtype: what a GPU's half kernels do (float32 accumulation), at 1.4-1.6x float32's time (a CPU
    without AVX512-FP16 computes float16 products ~100x slower). Everything else runs in the model's dtype."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        half = [a.dtype for a in args if isinstance(a, torch.Tensor) and a.dtype in (torch.float16, torch.bfloat16)]
        if func.overloadpacket.__name__ not in HALF_MATMULS or not half:
            return func(*args, **kwargs)
        wide = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        return func(*wide, **kwargs).to(half[0])


def load_mode(model_dir: str, mode: str):
    """The model and tokenizer of a workflow mode, or of a diagnostic (see the docstring)."""
    if mode == "bf16-weights":
        model, tokenizer = load_model(model_dir, "bfloat16")
        return model.float(), tokenizer
    if mode.endswith("-f32mm"):
        return load_model(model_dir, mode.removesuffix("-f32mm"))
    if mode == "autocast-bf16":  # the body only: the output head stays float32, as in every mode
        model, tokenizer = load_model(model_dir, "float32")
        body_forward = model.base_model.forward

        def autocast_forward(*args, **kwargs):
            with torch.autocast(model.device.type, dtype=torch.bfloat16):
                return body_forward(*args, **kwargs)

        model.base_model.forward = autocast_forward
        return model, tokenizer
    return load_model(model_dir, mode)


def attribute_all(model, tokenizer, chosen, chunk_size: int, autodiff: str) -> tuple[list, float, str]:
    """The matrices, seconds per sample and the samples per autodiff mode it ran."""
    started = time.perf_counter()
    attributor = Attributor(model, chunk_size, autodiff=autodiff)
    out = [attribute_sample(attributor, tokenizer, s.id, s.prompt, tokens) for s, tokens in chosen]
    return out, (time.perf_counter() - started) / len(chosen), autodiff_summary(attributor.record()["autodiff_samples"])


def split_mode(mode: str) -> tuple[str, str]:
    """`bfloat16/forward` -> (bfloat16, forward); `bfloat16` -> (bfloat16, auto)."""
    precision, _, autodiff = mode.partition("/")
    return precision, autodiff or "auto"


def group_means(scores) -> dict[str, float]:
    means = {g: float(x.mean()) for g, x in scores.groupby("group")["score"]}
    return {**means, "all": float(scores["score"].mean())}


PAPER_GROUP_SIZES = {"self_instruct": 252, "lima": 300, "mtbench": 80}  # Table 2's n


def matrix_agreement(reference, other) -> tuple[int, int, float]:
    """Binned cells in all, binned cells that differ, and the largest difference of a matrix as a share of
    that reference matrix's largest value, over two runs' samples in the same order."""
    binned = [(bin_attributions(a.matrix, ANALYSIS["levels"], ANALYSIS["threshold"]),
               bin_attributions(b.matrix, ANALYSIS["levels"], ANALYSIS["threshold"])) for a, b in zip(reference, other)]
    largest = max(float(np.abs(a.matrix - b.matrix).max() / max(np.abs(a.matrix).max(), 1e-30))
                  for a, b in zip(reference, other))
    return sum(x.size for x, _ in binned), sum(int((x != y).sum()) for x, y in binned), largest


def compare(reference, other, ref_scores, scores) -> dict:
    """Cells and scores of one mode against float32. A group mean's difference is the mean of its samples'
    differences: the bias (`score_bias`, with its standard error over these prompts) plus a sampling part
    of +- 1.96 `score_diff_sd` / sqrt(n) at 95% for a group of n (`paper_size_half_width`, at the paper's
    group sizes): what this sample of prompts says about a full-size Table 2."""
    cells, differing, max_rel_matrix_diff = matrix_agreement(reference, other)
    signed = scores.set_index("id")["score"].reindex(ref_scores["id"]).to_numpy() - ref_scores["score"].to_numpy()
    diff = np.abs(signed)
    sd = float(signed.std(ddof=1)) if len(signed) > 1 else 0.0
    ref_means, means = group_means(ref_scores), group_means(scores)
    return {"cells_equal": (cells - differing) / cells, "cells": cells, "score_max_abs_diff": float(diff.max()),
            "score_mean_abs_diff": float(diff.mean()), "score_bias": float(signed.mean()),
            "score_bias_se": sd / len(signed) ** 0.5, "score_diff_sd": sd,
            "paper_size_half_width": {g: 1.96 * sd / n ** 0.5 for g, n in PAPER_GROUP_SIZES.items()},
            "group_means": means, "group_mean_max_abs_diff": max(abs(means[g] - ref_means[g]) for g in ref_means),
            "scores": dict(zip(scores["id"], map(float, scores["score"]))), "max_rel_matrix_diff": max_rel_matrix_diff}


def emulation_checks(matrices: dict) -> dict:
    """Each `<mode>-f32mm` against the real `<mode>` with the same autodiff, where both ran: what the
    emulation changes, cell by cell."""
    checks = {}
    for mode, emulated in matrices.items():
        precision, autodiff = split_mode(mode)
        real = (precision.removesuffix("-f32mm"), autodiff)
        against = next((m for m in matrices if split_mode(m) == real), None) if precision.endswith("-f32mm") else None
        if against is not None:
            cells, differing, largest = matrix_agreement(matrices[against], emulated)
            checks[mode] = {"against": against, "cells": cells, "cells_differing": differing,
                            "max_rel_matrix_diff": largest}
    return checks


def markdown(results: dict) -> str:
    groups = list(next(iter(results["modes"].values()))["group_means"])
    head = ("| mode | autodiff (samples) | s/sample | binned cells = float32 | score max / mean abs diff | "
            "score diff mean (bias) / SD | group mean max abs diff | " + " | ".join(f"mean {g}" for g in groups) + " |")
    rows = [head, "|" + "---|" * (7 + len(groups))]
    for mode, r in results["modes"].items():
        rows.append(f"| {mode} | {r['autodiff_samples']} | {r['seconds_per_sample']:.1f} | "
                    f"{r['cells_equal']:.2%} of {r['cells']:,} | "
                    f"{r['score_max_abs_diff']:.4f} / {r['score_mean_abs_diff']:.4f} | "
                    f"{r['score_bias']:+.4f} / {r['score_diff_sd']:.4f} | {r['group_mean_max_abs_diff']:.4f} | "
                    + " | ".join(f"{r['group_means'][g]:.4f}" for g in groups) + " |")
    rows += ["", "Group-mean difference to float32 at the paper's group sizes: the bias (+- its standard error "
             "over these prompts) plus +- 1.96 SD / sqrt(n):", ""]
    for mode, r in list(results["modes"].items())[1:]:
        rows.append(f"- {mode}: bias {r['score_bias']:+.4f} +- {r['score_bias_se']:.4f}, then "
                    + ", ".join(f"{g} (n = {PAPER_GROUP_SIZES[g]}) +- {half:.4f}"
                                for g, half in r["paper_size_half_width"].items()))
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=DEFAULT_SMOLLM2_DIR, help="converted here first when missing")
    parser.add_argument("--dataset", default="/work/shared/paper/datasets/FinalDataset.tsv")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-prompt-tokens", type=int, default=128)
    parser.add_argument("--modes", default="float32,tf32,bfloat16")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    modes = args.modes.split(",")
    if split_mode(modes[0])[0] != "float32":
        parser.error("--modes must start with a float32 mode (the reference)")
    unknown = [mode for mode in modes if split_mode(mode)[0] not in (*PRECISIONS, *DIAGNOSTICS)
               or split_mode(mode)[1] not in AUTODIFF]
    if unknown:
        parser.error(f"unknown --modes {unknown} (known: {', '.join((*PRECISIONS, *DIAGNOSTICS))}, "
                     f"each optionally /{'|'.join(AUTODIFF)})")
    started = time.perf_counter()
    ensure_smollm2(args.model_dir)
    model, tokenizer = load_model(args.model_dir, "float32")
    candidates = select(read_dataset(args.dataset), tokenizer, args.max_prompt_tokens)
    print(f"float32 greedy responses of up to {args.max_new_tokens} tokens:")
    chosen = responses(model, tokenizer, candidates, args.samples, args.max_new_tokens)
    results = {"model": args.model_dir, "samples": len(chosen), "max_new_tokens": args.max_new_tokens,
               "max_prompt_tokens": args.max_prompt_tokens, "torch": torch.__version__, "threads": args.threads,
               "groups": {g: sum(dataset_group(s.id, GROUPS) == g for s, _ in chosen) for g in GROUPS.values()},
               "response_tokens": int(sum(t.input_ids.numel() - t.n_prompt for _, t in chosen)), "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = subset_dataset(Path(args.dataset), {s.id for s, _ in chosen}, Path(tmp) / "subset.tsv")
        matrices, scores, loaded, first = {}, {}, "float32", modes[0]
        for mode in modes:
            precision, autodiff = split_mode(mode)
            if precision != loaded:
                model, tokenizer = load_mode(args.model_dir, precision)
                loaded = precision
            with HalfMatmulsInFloat32() if precision.endswith("-f32mm") else contextlib.nullcontext():
                matrices[mode], seconds, used = attribute_all(model, tokenizer, chosen, args.chunk_size, autodiff)
            shard = Path(tmp) / f"{mode.replace('/', '-')}.npz"
            save_shard(Shard(matrices[mode], {"model": "smollm2", "source": "bench"}), shard)
            scores[mode] = instruction_scores(shard, dataset, GROUPS, ANALYSIS)
            results["modes"][mode] = {"seconds_per_sample": seconds, "autodiff_samples": used,
                                      **compare(matrices[first], matrices[mode], scores[first], scores[mode])}
            if precision == "bfloat16" and not any("own_responses_equal" in r for r in results["modes"].values()):
                own = generate_responses(model, tokenizer, [s.prompt for s, _ in chosen], args.max_new_tokens)
                same = sum(torch.equal(a.input_ids, t.input_ids) for a, (_, t) in zip(own, chosen))
                results["modes"][mode]["own_responses_equal"] = same
            print(f"{mode}: {seconds:.1f} s per sample, {results['modes'][mode]['cells_equal']:.2%} of cells equal",
                  flush=True)
    results["emulation_checks"] = emulation_checks(matrices)
    results["total_seconds"] = time.perf_counter() - started
    print(f"\nSmolLM2-135M-Instruct, {len(chosen)} prompts of the paper's dataset {results['groups']}, float32 greedy "
          f"responses of up to {args.max_new_tokens} tokens ({results['response_tokens']} in all), CPU, "
          f"{args.threads} thread(s), torch {torch.__version__}:\n")
    print(markdown(results))
    for mode, check in results["emulation_checks"].items():
        print(f"\n{mode} against {check['against']}: {check['cells_differing']} of {check['cells']:,} binned cells "
              f"differ, largest difference {check['max_rel_matrix_diff']:.4f} of a matrix's largest value")
    for r in results["modes"].values():
        if "own_responses_equal" in r:
            print(f"\nbfloat16's own greedy responses equal to float32's: {r['own_responses_equal']} of {len(chosen)}")
    print(f"whole benchmark: {results['total_seconds']:.0f} s")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
