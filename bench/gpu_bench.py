"""GPU benchmark: the project's GPU jobs on a LLaMA-7B-shaped model with random weights.

    PYTHONPATH=. python bench/gpu_bench.py [--precisions float32,tf32,bfloat16,float16] [--output gpu_bench.json]
    PYTHONPATH=. python bench/gpu_bench.py --dry-run             # the plan only; no GPU needed
    PYTHONPATH=. python bench/gpu_bench.py --allow-cpu --small   # smoke test on a tiny shape

Needs only torch, transformers (with tokenizers), numpy, scipy and safetensors: no internet,
no model weights, no GloVe package. In one run, on one card:
1. attribution of one sample (200 prompt + 300 response random token ids): the paper's per-token
   loop (`attribute_ids_reference`, float32: the paper runs `.float()`), then `attribute_ids`
   (chunk 32) in float32 with one body backward per token, then with batched backward passes
   (--backward-batch, 0: from free memory) in each precision mode (float32, tf32, bfloat16, float16,
   each from the float32 weights): times, peak GPU memory, the max relative
   difference to the float32 matrix and the share of binned cells equal to its. When the whole
   loop would not fit the time budget, it is timed on the last N response tokens and scaled up
   (every iteration is one forward and backward over the whole sample, so its time is linear in N);
   then, per precision mode, forward mode (`attribute_ids_forward`: one tangent per prompt token,
   --forward-batch, 0: from free memory) on the same sample, and the workflow's `auto` choice on a
   sample of the paper's mean shape (51 prompt + 300 response tokens: the released attributions'
   prompts average 50.9 tokens with BOS, their responses 294 for LLaMA-7B and 197 for Vicuna-7B);
2. in child processes: an attribution job's model load (`load_model`, straight onto the GPU) of
   checkpoints of the model's first 1 and 4 layers, fitted to the whole model (a fixed cost and a cost
   per parameter); then one attention and one FFN layer job (layer 0), through the modules' `main` as
   the rules run them, on a checkpoint holding the model's own tensors a layer-0 job reads (float16,
   as LLaMA ships), a BPE tokenizer trained on a random vocabulary of 26,000 words (the paper's
   vocabulary size) and random clustered word vectors in GloVe text format.
3. the projected wall time of the paper's workflow on one such GPU, component by component (632
   samples x 2 models attributed, 2 x 32 attention and FFN layer jobs, annotation of 5 seeds),
   from the times above and one stated assumption (seconds per annotation request; the model load too
   with --skip-layer-jobs or --load-seconds), which the table labels as such.
Prints Markdown tables and optionally writes the results as JSON for docs/benchmarks.md (--output:
rewritten after every measurement, `"complete": false` until the end, so that a run stopped by a
time limit or an error keeps what it measured). About
4-5 minutes on an H100 (an estimate from the 4-layer H200 run in docs/benchmarks.md; the
per-token loop is capped by --reference-budget).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # workflow_scripts without `pip install -e .` (imported in the functions)

PAPER = {"samples": 632, "models": 2, "layers": 32, "shard_size": 16, "seeds": 5, "components": 300, "steps": 3}
CALIBRATION_TOKENS = 3  # per-token loop iterations timed to decide whether the whole loop fits
LAYER_TENSORS = (  # what a layer-0 attention job (embeddings, q, k, norm) and FFN job (down, lm_head) read
    "model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight", "model.layers.0.input_layernorm.weight",
    "model.layers.0.mlp.down_proj.weight",
)
# A child's peak memory, printed last. The host peak is VmHWM, the process's own: a spawned child's
# ru_maxrss also counts the parent's peak.
PEAKS = """
with open("/proc/self/status") as status:
    print("peak_host_kib", status.read().split("VmHWM:")[1].split()[0], file=sys.stderr)
if torch.cuda.is_available():
    print("peak_gpu_bytes", torch.cuda.max_memory_allocated(), file=sys.stderr)
"""
# A layer job: the module's `main`, as the rules run `python -m MODULE layer ...`.
LAYER_CHILD = """
import importlib, sys, torch
importlib.import_module(sys.argv[1]).main(sys.argv[2:])
""" + PEAKS
# An attribution job's model load: `load_model` in float32 (the default mode) of each checkpoint, after
# an untimed load of the first: the imports and the CUDA start-up are paid once per job, whatever the
# model's size (bench/job_startup.py).
LOAD_CHILD = """
import sys, time, torch
from workflow_scripts.attribution import load_model
def load(path):
    start = time.perf_counter()
    model, _ = load_model(path, "float32")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return model, time.perf_counter() - start
load(sys.argv[1])
for path in sys.argv[1:]:
    model, seconds = load(path)
    print("load_seconds", seconds, "on", next(model.parameters()).device, file=sys.stderr)
    del model
""" + PEAKS
DEFAULT_LOAD_SECONDS = 30.0  # a 7B model per shard when the load was not measured (--skip-layer-jobs)
LOAD_LAYERS = (1, 4)  # checkpoints of the first 1 and 4 layers: two loads give a fixed and a per-parameter cost


@dataclasses.dataclass(frozen=True)
class Shape:
    """The model, sample and vocabulary sizes of one benchmark."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    prompt: int
    response: int
    words: int
    paper_prompt: int  # the sample of the paper's mean shape: this many prompt tokens, `response` response tokens


LLAMA_7B = Shape("LLaMA-7B shape", 4096, 11008, 32, 32, 32, 32000, 200, 300, 26000, 51)
SMALL = Shape("tiny smoke-test shape", 64, 128, 2, 4, 4, 2000, 20, 30, 2000, 6)


def llama_config(shape: Shape) -> LlamaConfig:
    config = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        rms_norm_eps=1e-6,
    )
    config.architectures = ["LlamaForCausalLM"]
    return config


def print_plan(args, shape: Shape) -> None:
    """What the run will build and time; the model is built on the meta device, which checks the
    config and counts its parameters without allocating them."""
    config = llama_config(shape)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    tensors = model.state_dict()
    params = sum(p.numel() for p in model.parameters())
    checkpoint = sum(tensors[name].numel() for name in LAYER_TENSORS) * 2 / 2**30
    print(f"plan ({shape.name}): LlamaForCausalLM hidden {config.hidden_size}, "
          f"intermediate {config.intermediate_size}, "
          f"{config.num_hidden_layers} layers, {config.num_attention_heads}/{config.num_key_value_heads} heads, "
          f"vocab {config.vocab_size}: {params / 1e6:,.1f}M params, "
          f"{params * 4 / 2**30:.1f} GiB in float32, random weights built on the device")
    print(f"  attribution: {shape.prompt} prompt + {shape.response} response random ids, attribute_ids chunk "
          f"{args.chunk_size}, backward batch {args.backward_batch or 'auto'}, modes {args.precisions}, "
          f"vs attribute_ids_reference in float32 ("
          f"{'all tokens if they fit' if args.reference_tokens is None else f'{args.reference_tokens} tokens'}, "
          f"budget {args.reference_budget:.0f} s); forward mode (batch {args.forward_batch or 'auto'}) per mode; "
          f"auto on {shape.paper_prompt} + {shape.response} tokens (the paper's mean shape)")
    print(f"  layer jobs: checkpoint of {checkpoint:.2f} GiB (float16): "
          + ", ".join(f"{name} {tuple(tensors[name].shape)}" for name in LAYER_TENSORS))
    layers = " and ".join(str(min(n, shape.layers)) for n in LOAD_LAYERS)
    print(f"  model load: load_model of checkpoints of the first {layers} layers (float16), fitted to {shape.layers}")
    print(f"  vocabulary: {shape.words} random words, BPE tokenizer of {shape.vocab} tokens, 50-d random GloVe text")
    print("  jobs: python -m workflow_scripts.attention layer ... --word-vectors-kind glove-text; "
          "python -m workflow_scripts.ffn layer ...")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, fn, *args):
    """(result, seconds, peak GPU GiB or None) of one call, the GPU's queue drained on both sides."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    synchronize(device)
    start = time.perf_counter()
    out = fn(*args)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return out, seconds, peak


def reference_tail(model, ids: torch.Tensor, n_prompt: int, tokens: int) -> np.ndarray:
    """The per-token loop's columns of the last `tokens` response tokens, by the project's own
    `attribute_ids_reference` with the prompt/response split moved to T - tokens.

    An attribution entry (prompt position i, response position t) does not depend on where the
    split is, so the first n_prompt rows equal the benchmark matrix's last `tokens` columns; each
    iteration still runs the full model over the whole sample, as in the full loop.
    """
    from workflow_scripts.attribution import attribute_ids_reference

    return attribute_ids_reference(model, ids, ids.numel() - tokens)[:n_prompt]


def cells_equal(a: np.ndarray, b: np.ndarray) -> float:
    """Share of binned cells (the analysis defaults L=10, b=7) of b equal to a's."""
    from workflow_scripts.importance import bin_attributions

    return float((bin_attributions(a) == bin_attributions(b)).mean())


def benchmark_attribution(model, shape: Shape, args, device: torch.device, results: dict, save) -> None:
    """The per-token loop (float32), then `attribute_ids` per-token and batched, per precision mode,
    forward mode on the same sample, and `auto` on a sample of the paper's mean shape, into
    `results` (the run's `attribution` entry); `save()` after each measurement, so that a run cut
    short (a time limit, an out-of-memory error) keeps what it measured."""
    from workflow_scripts.attribution import (
        PRECISIONS,
        Attributor,
        attribute_ids,
        attribute_ids_forward,
        autodiff_summary,
        forward_position_cost,
        set_matmul_precision,
    )

    ids = torch.randint(3, shape.vocab, (shape.prompt + shape.response,), device=device)
    m = shape.response
    set_matmul_precision("float32")
    attribute_ids(model, ids[:16], 8)  # warm-up: kernels, allocator, autograd
    attribute_ids_forward(model, ids[:16], 8)  # and vmap's and forward AD's first-call costs
    tokens = args.reference_tokens
    if tokens is None:  # a few iterations say whether the whole loop fits the budget
        _, t_calibration, _ = timed(device, reference_tail, model, ids, shape.prompt, CALIBRATION_TOKENS)
        per_token = t_calibration / CALIBRATION_TOKENS
        tokens = m if per_token * m <= args.reference_budget else max(1, int(args.reference_budget / per_token))
        print(f"per-token loop: {per_token:.2f} s per token, estimated {per_token * m:.0f} s for all {m}: "
              f"timing {'all' if tokens == m else f'the last {tokens}'}")
    tokens = min(tokens, m)
    slow, t_slow, peak_slow = timed(device, reference_tail, model, ids, shape.prompt, tokens)
    t_slow_all = t_slow * m / tokens
    scale = np.abs(slow).max()
    results.update({"chunk_size": args.chunk_size, "backward_batch": args.backward_batch,
                    "forward_batch": args.forward_batch,
                    "reference_seconds": t_slow_all, "reference_peak_gpu_gib": peak_slow,
                    "reference_tokens_timed": tokens, "reference_extrapolated": tokens < m,
                    "max_abs_value": float(scale)})
    save()
    per_token_body, t_body, peak_body = timed(device, attribute_ids, model, ids, shape.prompt, args.chunk_size, 1)
    results["float32_per_token_backward"] = {
        "seconds": t_body, "peak_gpu_gib": peak_body,
        "max_relative_difference": float(np.abs(per_token_body[:, m - tokens:] - slow).max() / scale)}
    print(f"attribute_ids float32, one backward per token: {t_body:.2f} s")
    results["modes"] = modes = {}
    save()
    reference = per_token_body
    paper_ids = ids[shape.prompt - shape.paper_prompt :]  # the same response after a shorter prompt
    paper_reference = None
    float32_weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
    for mode in args.precisions.split(","):
        set_matmul_precision(mode)
        model.to(torch.float32).load_state_dict(float32_weights)  # rounded from float32, not from the last mode
        model.to(PRECISIONS[mode])
        fast, seconds, peak = timed(device, attribute_ids, model, ids, shape.prompt, args.chunk_size,
                                    args.backward_batch)
        modes[mode] = {"seconds": seconds, "peak_gpu_gib": peak, "speed_up": t_slow_all / seconds,
                       "max_relative_difference": float(np.abs(fast - reference).max() / np.abs(reference).max()),
                       "cells_equal": cells_equal(reference, fast)}
        print(f"attribute_ids {mode}, backward batch {args.backward_batch or 'auto'}: {seconds:.2f} s, "
              f"{modes[mode]['cells_equal']:.2%} of binned cells equal to float32's")
        save()
        forward, seconds, peak = timed(device, attribute_ids_forward, model, ids, shape.prompt, None,
                                       args.forward_batch)
        per_position = forward_position_cost(seconds, modes[mode]["seconds"], shape.prompt, shape.prompt, m,
                                             args.chunk_size)
        modes[mode]["forward"] = {
            "seconds": seconds, "peak_gpu_gib": peak, "speed_up": t_slow_all / seconds,
            "position_cost": per_position,  # what `auto` assumes: FORWARD_POSITION_COST
            "max_relative_difference": float(np.abs(forward - reference).max() / np.abs(reference).max()),
            "cells_equal": cells_equal(reference, forward)}
        print(f"attribute_ids_forward {mode}: {seconds:.2f} s, {modes[mode]['forward']['cells_equal']:.2%} "
              "of binned cells equal to float32's")
        save()
        attributor = Attributor(model, args.chunk_size, args.backward_batch, "auto", args.forward_batch)
        rows = np.arange(shape.paper_prompt)
        paper, seconds, peak = timed(device, attributor.matrix, paper_ids, shape.paper_prompt, rows)
        paper_reference = paper if paper_reference is None else paper_reference
        modes[mode]["paper_shape_auto"] = {
            "seconds": seconds, "peak_gpu_gib": peak,
            "autodiff_samples": autodiff_summary(attributor.record()["autodiff_samples"]),
            "cells_equal_to_first_mode": cells_equal(paper_reference, paper)}
        print(f"auto on the paper's mean shape ({shape.paper_prompt} + {shape.response}), {mode}: {seconds:.2f} s "
              f"({modes[mode]['paper_shape_auto']['autodiff_samples']})")
        save()
    set_matmul_precision("float32")


def projection(r: dict, args) -> dict:
    """Seconds of each component of the paper's workflow on one GPU, per precision mode.

    Attribution: 632 samples x 2 models at this sample's time (200 + 300 tokens: the paper's
    responses are at most 300 tokens, so this errs long), and at the time of the paper's mean shape
    (51 + 300: the mean prompt, and responses as long as LLaMA-7B's, longer than Vicuna-7B's); model
    loads: one per shard of 16, at the measured `load_model` time fitted to the whole model (from the
    page cache: a cold disk or a network file system is slower), or --load-seconds; layer jobs: 2 x 32
    of each kind at the measured wall time; annotation: at most 5 seeds x 2 models x 32 layers x 300
    components x 3 steps requests at --annotation-seconds-per-request (assumed: it depends on the
    server, not on this code)."""
    jobs = r.get("layer_jobs")
    shards = -(-PAPER["samples"] // PAPER["shard_size"]) * PAPER["models"]
    requests = PAPER["seeds"] * PAPER["models"] * PAPER["layers"] * PAPER["components"] * PAPER["steps"]
    fixed = {
        **load_projection(r.get("model_load"), shards, args.load_seconds),
        "attention layer jobs": None if jobs is None else PAPER["models"] * PAPER["layers"] * jobs["attention"][
            "wall_seconds"],
        "FFN layer jobs": None if jobs is None else PAPER["models"] * PAPER["layers"] * jobs["ffn"]["wall_seconds"],
        "annotation (assumed)": requests * args.annotation_seconds_per_request,
    }
    attributed = PAPER["samples"] * PAPER["models"]
    a = r["attribution"]
    attribution = {"per-token loop (paper), float32": attributed * a["reference_seconds"],
                   "this project, float32, one backward per token": attributed * a["float32_per_token_backward"][
                       "seconds"]}
    attribution.update({f"this project, {mode}": attributed * m["seconds"] for mode, m in a["modes"].items()})
    attribution.update({f"this project, {mode}, forward mode": attributed * m["forward"]["seconds"]
                        for mode, m in a["modes"].items()})
    attribution.update({
        f"this project, {mode}, auto, paper's mean shape ({m['paper_shape_auto']['autodiff_samples']})":
        attributed * m["paper_shape_auto"]["seconds"] for mode, m in a["modes"].items()})
    known = sum(v for v in fixed.values() if v is not None)
    return {"shards": shards, "annotation_requests": requests, "fixed_seconds": fixed,
            "attribution_seconds": attribution, "total_hours": {k: (v + known) / 3600 for k, v in attribution.items()}}


def load_projection(load: dict | None, shards: int, load_seconds: float | None) -> dict:
    """{label: seconds} of the shards' model loads: --load-seconds when given, else the measured load."""
    if load_seconds is None and load is not None:
        return {f"model loads (measured: checkpoints of up to {load['layers']} layers from the page cache, "
                "fitted to the whole model)": shards * load["scaled_seconds"]}
    return {"model loads (assumed)": shards * (DEFAULT_LOAD_SECONDS if load_seconds is None else load_seconds)}


def random_words(count: int, rng: np.random.Generator) -> list[str]:
    """Distinct lower-case letter strings, 3-9 letters (lower case: no case variants to merge)."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: dict[str, None] = {}
    while len(words) < count:
        words["".join(rng.choice(letters, rng.integers(3, 10)))] = None
    return list(words)


def write_vocabulary_files(words: list[str], workdir: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    """The vocabulary (word<TAB>frequency, Zipf frequencies) and 50-d GloVe-text word vectors.

    The vectors are clustered (20 words per topic, as in bench/attention_speed.py) so that related
    pairs pass the thresholds and the jobs format pairs as they would on real data.
    """
    vocabulary, vectors = workdir / "vocabulary.tsv", workdir / "glove-random-50d.txt"
    vocabulary.write_text("".join(f"{w}\t{1 / (rank + 1):.6g}\n" for rank, w in enumerate(words)))
    topics = rng.standard_normal((max(1, len(words) // 20), 50))
    rows = topics[np.arange(len(words)) % len(topics)] + 0.3 * rng.standard_normal((len(words), 50))
    vectors.write_text("".join(f"{w} {' '.join(f'{x:.5f}' for x in row)}\n" for w, row in zip(words, rows)))
    return vocabulary, vectors


def write_checkpoint(model, words: list[str], directory: Path) -> float:
    """config.json, the layer-0 tensors a layer job reads (float16) and a BPE tokenizer trained on
    the words (the project's demo tokenizer: LLaMA's layout, most words split in 1-3 pieces);
    returns the safetensors size in GiB."""
    from workflow_scripts.demo_models import train_tokenizer

    corpus = directory.parent / "corpus.txt"
    corpus.write_text("".join(" ".join(words[i:i + 10]) + "\n" for i in range(0, len(words), 10)))
    train_tokenizer(corpus, directory, vocab_size=model.config.vocab_size)  # creates the directory
    model.config.save_pretrained(directory)
    save_file(float16_on_host(model, lambda name: name in LAYER_TENSORS), directory / "model.safetensors")
    return (directory / "model.safetensors").stat().st_size / 2**30


def float16_on_host(model, keep) -> dict[str, torch.Tensor]:
    """The model's tensors whose names `keep` accepts, as LLaMA ships them (float16), in host memory."""
    return {name: tensor.detach().half().cpu().contiguous() for name, tensor in model.state_dict().items()
            if keep(name)}


def run_child(code: str, arguments: list[str], log: Path, what: str) -> tuple[float, str, dict]:
    """`code` in a child process (the project importable, its output in `log`): wall seconds, the
    log's text and the child's peak host and GPU memory (`PEAKS`); stops the benchmark if it fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    with open(log, "w") as handle:
        status = subprocess.call([sys.executable, "-c", code, *arguments], cwd=REPO, env=env, stdout=handle,
                                 stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    text = log.read_text()
    if status:
        raise SystemExit(f"{what} failed ({status}):\n{text[-3000:]}")
    host = re.search(r"peak_host_kib (\d+)", text)
    gpu = re.search(r"peak_gpu_bytes (\d+)", text)
    return wall, text, {"peak_host_gib": int(host.group(1)) / 2**20 if host else None,
                        "peak_gpu_gib": int(gpu.group(1)) / 2**30 if gpu else None}


def run_layer_job(module: str, arguments: list[str], log: Path, output: Path) -> dict:
    """One layer job in a child process: wall time, the job's own time (its log), peak host and GPU memory."""
    wall, text, peaks = run_child(LAYER_CHILD, [module, *arguments, "--output", str(output)], log,
                                  f"{module} layer job")
    job = re.search(r" in ([\d.]+) s -> ", text)
    return {"wall_seconds": wall, "job_seconds": float(job.group(1)) if job else None, **peaks,
            "rows": output.read_text().count("\n") - 1}


def benchmark_model_load(files: dict, workdir: Path, device: torch.device) -> dict:
    """An attribution job's `load_model` of checkpoints of the first layers, in a child process, and the
    whole model's load from them: a fixed cost plus a cost per parameter, fitted to the two loads. On
    a GPU the weights must arrive there (loaded through a device map, `attribution.load_kwargs`)."""
    checkpoints = files["load"]
    wall, text, peaks = run_child(LOAD_CHILD, [str(c["model_dir"]) for c in checkpoints], workdir / "load.log",
                                  "load_model")
    loads = re.findall(r"load_seconds ([\d.e+-]+) on (\S+)", text)
    wrong = [placed for _, placed in loads if placed.split(":")[0] != device.type]
    if len(loads) != len(checkpoints) or wrong:
        raise SystemExit(f"load_model did not load every checkpoint onto the {device.type}:\n{text[-3000:]}")
    points = [(c["params"], float(seconds)) for c, (seconds, _) in zip(checkpoints, loads)]
    (small, t_small), (large, t_large) = points[0], points[-1]  # one checkpoint (a 1-layer model): no fixed part
    per_param = max(0.0, (t_large - t_small) / (large - small)) if large > small else t_large / large
    fixed = max(0.0, t_large - per_param * large)
    results = {"checkpoints": [{k: c[k] for k in ("layers", "params", "checkpoint_gib")} | {"seconds": float(t)}
                               for c, (t, _) in zip(checkpoints, loads)],
               "layers": checkpoints[-1]["layers"], "device": loads[-1][1], "fixed_seconds": fixed,
               "seconds_per_billion_params": per_param * 1e9, "scaled_seconds": fixed + per_param * files["params"],
               "wall_seconds": wall, **peaks}
    each = ", ".join(f"{c['layers']} layer(s) {c['seconds']:.2f} s" for c in results["checkpoints"])
    print(f"load_model: {each} on {results['device']}: {fixed:.1f} s + {per_param * 1e9:.1f} s per billion "
          f"parameters, about {results['scaled_seconds']:.1f} s for the whole model; "
          f"peak host {gib(results['peak_host_gib'])}")
    return results


def write_load_checkpoints(model, tokenizer_dir: Path, workdir: Path) -> list[dict]:
    """Loadable checkpoints of the model's first `LOAD_LAYERS` layers (float16, the tokenizer of
    `tokenizer_dir`): what `load_model` is timed on without writing all 13 GiB of a 7B model."""
    def layer(name: str) -> int:  # a decoder layer's index; -1 for the embeddings, the final norm and the head
        return int(name.split(".")[2]) if name.startswith("model.layers.") else -1

    counts = sorted({min(n, model.config.num_hidden_layers) for n in LOAD_LAYERS})
    tensors, checkpoints = float16_on_host(model, lambda name: layer(name) < counts[-1]), []  # converted once
    for layers in counts:
        directory = workdir / f"load-check-{layers}"
        directory.mkdir()
        for file in tokenizer_dir.iterdir():
            if file.name not in ("config.json", "model.safetensors"):
                shutil.copy(file, directory / file.name)
        (directory / "config.json").write_text(json.dumps(model.config.to_dict() | {"num_hidden_layers": layers}))
        kept = {name: tensor for name, tensor in tensors.items() if layer(name) < layers}
        save_file(kept, directory / "model.safetensors")
        checkpoints.append({"model_dir": directory, "layers": layers, "params": sum(t.numel() for t in kept.values()),
                            "checkpoint_gib": (directory / "model.safetensors").stat().st_size / 2**30})
    return checkpoints


def prepare_layer_jobs(model, shape: Shape, workdir: Path) -> dict:
    """The checkpoints and word files the layer jobs and the load read, written while the model is at hand."""
    rng = np.random.default_rng(0)
    words = random_words(shape.words, rng)
    vocabulary, vectors = write_vocabulary_files(words, workdir, rng)
    size = write_checkpoint(model, words, workdir / "llama-shaped")
    return {"model_dir": workdir / "llama-shaped", "vocabulary": vocabulary, "vectors": vectors,
            "checkpoint_gib": size, "words": len(words),
            "load": write_load_checkpoints(model, workdir / "llama-shaped", workdir),
            "params": sum(p.numel() for p in model.parameters())}


def benchmark_layer_jobs(files: dict, workdir: Path) -> dict:
    """One attention and one FFN job on layer 0 of the checkpoint, with the rules' arguments."""
    common = ["layer", "--model-dir", str(files["model_dir"]), "--model-id", "bench", "--layer", "0",
              "--vocabulary", str(files["vocabulary"])]
    results = {"checkpoint_gib": files["checkpoint_gib"], "words": files["words"]}
    results["attention"] = run_layer_job(
        "workflow_scripts.attention",
        common + ["--word-vectors-kind", "glove-text", "--word-vectors-path", str(files["vectors"])],
        workdir / "attention.log", workdir / "attention-layer-0.tsv")
    print(f"attention layer job: {results['attention']['wall_seconds']:.1f} s")
    results["ffn"] = run_layer_job("workflow_scripts.ffn", common, workdir / "ffn.log", workdir / "ffn-layer-0.tsv")
    print(f"FFN layer job: {results['ffn']['wall_seconds']:.1f} s")
    return results


def write_json(path: Path, results: dict) -> None:
    """Replace `path` whole (temp file + rename): a run killed while writing leaves the last copy."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(results, indent=1) + "\n")
    partial.replace(path)


def gib(value, note: str = "") -> str:
    return "n/a" if value is None else f"{value:.1f} GiB{note}"


def markdown(r: dict) -> str:
    """The results as a two-column Markdown table, then the projection of the paper's workflow."""
    from workflow_scripts.attribution import FORWARD_POSITION_COST

    a, jobs = r["attribution"], r.get("layer_jobs")
    timed_on = (f"timed on the last {a['reference_tokens_timed']} of {r['sample']['response']} tokens, "
                "EXTRAPOLATED linearly" if a["reference_extrapolated"] else "timed on all tokens")
    body = a["float32_per_token_backward"]
    rows = [
        ("card", r["card"]),
        ("torch / transformers", f"{r['torch']} (CUDA {r['cuda']}) / {r['transformers']}"),
        ("model", f"{r['shape']}: {r['params'] / 1e6:,.1f}M params, built in float32 "
                  + f"({r['attention_implementation']} attention), random weights built in {r['init_seconds']:.1f} s"),
        ("sample", f"{r['sample']['prompt']} prompt + {r['sample']['response']} response tokens (random ids)"),
        ("attribution, per-token loop (the paper's), float32",
         f"{a['reference_seconds']:.2f} s ({timed_on}), peak GPU {gib(a['reference_peak_gpu_gib'])}"),
        (f"attribution, this project, float32, chunk {a['chunk_size']}, one backward per token",
         f"{body['seconds']:.2f} s ({a['reference_seconds'] / body['seconds']:.2f}x), peak GPU "
         f"{gib(body['peak_gpu_gib'], ' (weights included)')}, max relative difference to the loop "
         f"{body['max_relative_difference']:.1e}"),
    ]
    for mode, m in a["modes"].items():
        rows.append((f"attribution, this project, {mode}, backward batch {a['backward_batch'] or 'auto'}",
                     f"{m['seconds']:.2f} s ({m['speed_up']:.2f}x the loop), peak GPU {gib(m['peak_gpu_gib'])}, "
                     f"vs float32: max relative difference {m['max_relative_difference']:.1e}, "
                     f"{m['cells_equal']:.2%} of binned cells equal"))
        f = m["forward"]
        rows.append((f"attribution, this project, {mode}, forward mode, batch {a['forward_batch'] or 'auto'}",
                     f"{f['seconds']:.2f} s ({f['speed_up']:.2f}x the loop), peak GPU {gib(f['peak_gpu_gib'])}, "
                     f"vs float32: max relative difference {f['max_relative_difference']:.1e}, "
                     f"{f['cells_equal']:.2%} of binned cells equal; a position costs "
                     f"{f['position_cost']:.2f}x a reverse-mode one (`auto` assumes {FORWARD_POSITION_COST})"))
        p = m["paper_shape_auto"]
        rows.append((f"attribution, this project, {mode}, auto, the paper's mean shape "
                     f"({r['sample']['paper_prompt']} + {r['sample']['response']} tokens)",
                     f"{p['seconds']:.2f} s ({p['autodiff_samples']}), peak GPU {gib(p['peak_gpu_gib'])}, "
                     f"{p['cells_equal_to_first_mode']:.2%} of binned cells equal to the first mode's"))
    for name, label, what in (("attention", "attention", f"{r['config']['heads']} heads"),
                              ("ffn", "FFN", "top 300 components")):
        if jobs is None:
            rows.append((f"{label} layer job", "skipped (--skip-layer-jobs)"))
            continue
        j = jobs[name]
        job = f", in-job {j['job_seconds']:.1f} s" if j["job_seconds"] is not None else ""
        rows.append((f"{label} layer job (layer 0, {what}, {jobs['words']:,} words)",
                     f"wall {j['wall_seconds']:.1f} s{job}, peak GPU {gib(j['peak_gpu_gib'])}, "
                     + f"peak host {gib(j['peak_host_gib'])}, {j['rows']} rows"))
    load = r.get("model_load")
    if load is not None:
        loads = ", ".join(f"first {c['layers']} layer(s) ({c['checkpoint_gib']:.2f} GiB float16) {c['seconds']:.2f} s"
                          for c in load["checkpoints"])
        rows.append(("attribution job's model load (`load_model`, float32, from the page cache)",
                     f"{loads}, onto {load['device']}: {load['fixed_seconds']:.1f} s + "
                     f"{load['seconds_per_billion_params']:.1f} s per billion parameters, about "
                     f"{load['scaled_seconds']:.1f} s for the whole model; peak host {gib(load['peak_host_gib'])}, "
                     f"peak GPU {gib(load['peak_gpu_gib'])}"))
    rows.append(("whole benchmark", f"{r['total_seconds']:.0f} s"))
    table = "\n".join(["| measurement | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
    p = r["projection"]
    lines = ["", f"Projected paper workflow on one {r['card']} ({PAPER['samples']} samples x {PAPER['models']} "
             f"models, {p['shards']} shards, {PAPER['models']} x {PAPER['layers']} layer jobs of each kind, "
             f"<= {p['annotation_requests']:,} annotation requests):", "", "| component | hours |", "|---|---|"]
    lines += [f"| {k} | {'n/a' if v is None else f'{v / 3600:.2f}'} |" for k, v in p["fixed_seconds"].items()]
    lines += [f"| attribution: {k} | {v / 3600:.2f} |" for k, v in p["attribution_seconds"].items()]
    lines += [f"| **total with attribution by {k}** | **{v:.2f}** |" for k, v in p["total_hours"].items()]
    return table + "\n" + "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="float32,tf32,bfloat16,float16",
                        help="attribution modes, in this order (each rounds the float32 weights)")
    parser.add_argument("--chunk-size", type=int, default=32, help="attribute_ids chunk size (0: all)")
    parser.add_argument("--backward-batch", type=int, default=0, help="response tokens per backward; 0: auto")
    parser.add_argument("--forward-batch", type=int, default=0, help="prompt tokens per forward-mode pass; 0: auto")
    parser.add_argument("--load-seconds", type=float,
                        help="projection: seconds to load the model per shard (default: the measured load, "
                             f"fitted to the whole model; {DEFAULT_LOAD_SECONDS:.0f} assumed with --skip-layer-jobs)")
    parser.add_argument("--annotation-seconds-per-request", type=float, default=0.01,
                        help="projection: seconds per annotation request at the server's concurrency (assumed)")
    parser.add_argument("--reference-tokens", type=int,
                        help="time the per-token loop on this many response tokens and extrapolate "
                             "(default: all if the estimate fits --reference-budget)")
    parser.add_argument("--reference-budget", type=float, default=60.0,
                        help="seconds the per-token loop may take (default 60; it is extrapolated beyond)")
    parser.add_argument("--output", help="also write the results as JSON here (after every measurement)")
    parser.add_argument("--workdir", help="keep the checkpoint, word files and job logs here (default: a temp dir)")
    parser.add_argument("--skip-layer-jobs", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and check the config; no GPU needed")
    parser.add_argument("--small", action="store_true", help="a tiny shape, to smoke-test the script")
    parser.add_argument("--allow-cpu", action="store_true", help="with --small: run on the CPU")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    shape = SMALL if args.small else LLAMA_7B
    if args.dry_run:
        print_plan(args, shape)
        return
    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif args.allow_cpu and args.small:
        device = torch.device("cpu")
    else:
        print(f"bench/gpu_bench.py needs a CUDA GPU: torch {torch.__version__} sees none. On a CPU, run the CPU "
              "benchmarks instead (bench/attribution_speed.py, bench/attention_speed.py, bench/ffn_speed.py, "
              "bench/attention_layer_memory.py; see docs/benchmarks.md). --dry-run prints this benchmark's plan; "
              "--allow-cpu --small (both) smoke-tests it on a tiny shape.", file=sys.stderr)
        raise SystemExit(2)
    print_plan(args, shape)
    if device.type == "cpu":
        print("SMOKE TEST on the CPU (--allow-cpu --small): a tiny shape, not a benchmark")
        torch.set_num_threads(1)  # tiny ops: on a busy machine, OpenMP's spinning threads made them 100x slower
    started = time.perf_counter()
    torch.manual_seed(0)
    init_start = time.perf_counter()
    with device:  # built where it runs: a 6.7B-parameter init takes seconds on a GPU, minutes on a CPU
        model = LlamaForCausalLM(llama_config(shape))
    model = model.eval().requires_grad_(False)
    synchronize(device)
    results = {
        "card": torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke test)",
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": __import__("transformers").__version__,
        "shape": shape.name, "config": dataclasses.asdict(shape), "params": sum(p.numel() for p in model.parameters()),
        "attention_implementation": model.config._attn_implementation,
        "init_seconds": time.perf_counter() - init_start,
        "sample": {"prompt": shape.prompt, "response": shape.response, "paper_prompt": shape.paper_prompt},
    }
    print(f"model built in {results['init_seconds']:.1f} s on {results['card']}")

    def save() -> None:  # after every measurement: a run cut short keeps what it measured
        if args.output:
            write_json(Path(args.output), {**results, "complete": False})

    results["attribution"] = {}
    benchmark_attribution(model, shape, args, device, results["attribution"], save)
    if not args.skip_layer_jobs:
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpu-bench-"))
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            files = prepare_layer_jobs(model, shape, workdir)
            del model  # its memory goes back to the jobs' processes
            if device.type == "cuda":
                torch.cuda.empty_cache()
            results["model_load"] = benchmark_model_load(files, workdir, device)
            save()
            results["layer_jobs"] = benchmark_layer_jobs(files, workdir)
            save()
        finally:
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
    results["total_seconds"] = time.perf_counter() - started
    results["projection"] = projection(results, args)
    print(markdown(results))
    if args.output:
        write_json(Path(args.output), {**results, "complete": True})
        print(f"results -> {args.output}")


if __name__ == "__main__":
    main()
