"""GPU benchmark: the project's GPU jobs on a LLaMA-7B-shaped model with random weights.

    PYTHONPATH=. python bench/gpu_bench.py [--precisions float32,tf32,bfloat16,float16] [--output gpu_bench.json]
    PYTHONPATH=. python bench/gpu_bench.py --dry-run             # the plan only; no GPU needed
    PYTHONPATH=. python bench/gpu_bench.py --allow-cpu --small   # smoke test on a tiny shape
    PYTHONPATH=. python bench/gpu_bench.py --generation-only      # per mode, the greedy responses only

Needs only torch, transformers (with tokenizers), numpy, scipy and safetensors: no internet,
no model weights, no GloVe package. In one run, on one card, in this order (the most distinctive
measurements first, so that a run short of time loses the least):
1. attribution of one sample (200 prompt + 300 response random token ids): the paper's per-token
   loop (`attribute_ids_reference`, float32: the paper runs `.float()`), then `attribute_ids`
   (chunk 32) in float32 with one body backward per token, then, in the first precision mode
   (float32), `attribute_ids` with batched backward passes (--backward-batch, 0: from free memory),
   forward mode (`attribute_ids_forward`: one tangent per prompt token, --forward-batch, 0: from
   free memory) on the same sample, and the workflow's `auto` choice on a sample of the paper's
   mean shape (51 prompt + 300 response tokens: the released attributions' prompts average 50.9
   tokens with BOS, their responses 294 for LLaMA-7B and 197 for Vicuna-7B): times, peak GPU
   memory, the max relative difference to the float32 matrix and the share of binned cells equal
   to its; and the greedy generation of a 300-token response after the mean prompt, as the job runs
   it before attributing under `response: generate` (the paper's), alone and in a batch of 16 prompts
   of spread lengths padded on the left, as the job generates a shard's (`generate_batch`). When the whole
   per-token loop would not fit --reference-budget (or a tenth of the time left), it is timed on the
   last N response tokens and scaled up (every iteration is one forward and backward over the whole
   sample, so its time is linear in N);
2. in child processes: an attribution job's model load (`load_model`, straight onto the GPU) of
   checkpoints of the model's first 1 and 4 layers, fitted to the whole model (a fixed cost and a cost
   per parameter); then one attention and one FFN layer job (layer 0), through the modules' `main` as
   the rules run them, on a checkpoint holding the model's own tensors a layer-0 job reads (float16,
   as LLaMA ships), a BPE tokenizer trained on a random vocabulary of 26,000 words (the paper's
   vocabulary size) and random clustered word vectors in GloVe text format;
3. the other precision modes (tf32, bfloat16, float16) as in 1, each on the model rebuilt from the
   same seed on the device and cast to the mode's weights (the same float32 weights, checked; the
   rotary embeddings' frequencies stay float32, as `from_pretrained` leaves them), with what
   arithmetic ran (torch's TF32 and reduced-precision switches, the TF32 override variables, and a
   512 x 512 float32 matmul against float64, which shows whether TF32 really ran);
4. the projected wall time of the paper's workflow on one such GPU, component by component (632
   samples x 2 models generated and attributed, 2 x 32 attention and FFN layer jobs, annotation of 5 seeds),
   from the times above and one stated assumption (seconds per annotation request; the model load too
   with --skip-layer-jobs or --load-seconds), which the table labels as such.
Every section runs under --deadline-s (seconds from the process's start): a section whose estimate
does not fit the time left is skipped, one still running at the deadline is cut off (a child job
killed), and the JSON says which and why (`skipped`); a section that fails records its error
(`errors`) and the run goes on. Prints Markdown tables and optionally writes the results as JSON for
docs/benchmarks.md (--output: rewritten after every section, `"complete": false` until the end, and
at the end false too when a section failed or was left out by the deadline; the exit status is 1
when a section failed). On an H200, 244 s without the generation sections, and 126 s for them alone
(--generation-only; 2026-12-04; --deadline-s bounds it).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # workflow_scripts without `pip install -e .` (imported in the functions)


def process_started() -> float:
    """`time.monotonic()` at this process's start (its start time and the system's uptime in /proc),
    so that --deadline-s also counts the imports; the time of this call where /proc cannot say."""
    now = time.monotonic()
    try:
        with open("/proc/self/stat") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as uptime:
            age = float(uptime.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return now
    return now - age if 0 <= age < 300 else now  # a sandbox's /proc may not agree with itself


PROCESS_STARTED = process_started()
PAPER = {"samples": 632, "models": 2, "layers": 32, "shard_size": 16, "seeds": 5, "components": 300, "steps": 3}
CPU_CARD = "CPU (smoke test)"  # the card named in the results of a run with --allow-cpu
SEED = 0  # every build of the model: the same float32 weights
CALIBRATION_TOKENS = 3  # per-token loop iterations timed to decide whether the whole loop fits
REFERENCE_SHARE = 0.1  # the per-token loop takes at most this share of the time left (and --reference-budget)
GENERATE_BATCH = 16  # prompts per generate call in the measurement of batched generation (a shard's size)
GENERATE_SECONDS_PER_TOKEN = 0.05  # estimate before the first mode measures it: a 7B greedy step at batch 1
BODY_PER_LOOP = 0.5  # estimate: one backward per token / the per-token loop (0.39 on an H200, 4 layers)
FINAL_RESERVE_S = 5.0  # kept after the last section: the projection, the tables, the JSON, the exit
LOG_TAIL = 2000  # characters of a child's log kept in the JSON (its work folder is deleted)
LAYER_TENSORS = (  # what a layer-0 attention job (embeddings, q, k, norm) and FFN job (down, lm_head) read
    "model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight", "model.layers.0.input_layernorm.weight",
    "model.layers.0.mlp.down_proj.weight",
)
TF32_OVERRIDES = ("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "NVIDIA_TF32_OVERRIDE")  # env variables that force TF32 on/off


def host_peak(maxrss_at_start_kib: int | None = None) -> tuple[int | None, str]:
    """This process's peak resident memory in KiB and where it was read. /proc/self/status's VmHWM where
    it exists; else getrusage's ru_maxrss (KiB on Linux; gVisor's /proc has no VmHWM), which in a
    spawned process also counts what the process inherited at its start (its parent's memory): it is
    the process's own peak when it rose above `maxrss_at_start_kib`, an upper bound otherwise;
    (None, "unavailable") when neither can be read. Never raises: the child processes run it last."""
    try:
        with open("/proc/self/status") as status:
            found = re.search(r"^VmHWM:\s*(\d+)\s*kB", status.read(), re.MULTILINE)
        if found:
            return int(found.group(1)), "VmHWM"
    except Exception:  # a probe: any failure means "not here"
        pass
    try:
        import resource

        kib = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except Exception:
        return None, "unavailable"
    if maxrss_at_start_kib is not None and kib <= maxrss_at_start_kib:
        return kib, "ru_maxrss, an upper bound (no more than the process inherited at its start)"
    return kib, "ru_maxrss"


# Run first and at exit in each child process: its peak memory, printed last (atexit: also after a
# job's SystemExit or an exception, whose exit status is kept).
CHILD_PROLOGUE = """
import atexit, re, sys
try:
    import resource
    _maxrss_at_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
except Exception:
    _maxrss_at_start = None
""" + textwrap.dedent(inspect.getsource(host_peak)) + """
def _report_peaks():
    try:
        kib, source = host_peak(_maxrss_at_start)
        print("peak_host_kib", "none" if kib is None else kib, source, file=sys.stderr)
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            print("peak_gpu_bytes", torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved(),
                  file=sys.stderr)
    except Exception as error:
        print("peak probe failed:", type(error).__name__, error, file=sys.stderr)
atexit.register(_report_peaks)
"""
# A layer job: the module's `main`, as the rules run `python -m MODULE layer ...`, its float32
# matmuls in IEEE float32 (no TF32), whatever torch's default.
LAYER_CHILD = CHILD_PROLOGUE + """
import importlib, torch
torch.set_float32_matmul_precision("highest")
importlib.import_module(sys.argv[1]).main(sys.argv[2:])
"""
# An attribution job's model load: `load_model` in float32 (the default mode) of each checkpoint, after
# an untimed load of the first: the imports and the CUDA start-up are paid once per job, whatever the
# model's size (bench/job_startup.py).
LOAD_CHILD = CHILD_PROLOGUE + """
import time, torch
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
"""
DEFAULT_LOAD_SECONDS = 30.0  # a 7B model per shard when the load was not measured (--skip-layer-jobs)
LOAD_LAYERS = (1, 4)  # checkpoints of the first 1 and 4 layers: two loads give a fixed and a per-parameter cost


@dataclasses.dataclass(frozen=True)
class Shape:
    """The model, sample and vocabulary sizes of one benchmark, and the seconds the child sections are
    expected to take (deadline estimates: writing the job files, the model load, the two layer jobs)."""

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
    # seconds: the layer-job files, the model load, the word-pieces job, the attention and the FFN layer job
    job_estimates: tuple[float, float, float, float, float] = (30.0, 45.0, 30.0, 60.0, 45.0)


LLAMA_7B = Shape("LLaMA-7B shape", 4096, 11008, 32, 32, 32, 32000, 200, 300, 26000, 51)
SMALL = Shape("tiny smoke-test shape", 64, 128, 2, 4, 4, 2000, 20, 30, 2000, 6, (3.0, 8.0, 8.0, 10.0, 10.0))


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
          f"budget {args.reference_budget:.0f} s, at most a tenth of the time left); "
          f"forward mode (batch {args.forward_batch or 'auto'}) per mode; "
          f"auto on {shape.paper_prompt} + {shape.response} tokens (the paper's mean shape); greedy generation of "
          f"{shape.response} tokens after {shape.paper_prompt} per mode, alone and {GENERATE_BATCH} prompts a call")
    print(f"  layer jobs: checkpoint of {checkpoint:.2f} GiB (float16): "
          + ", ".join(f"{name} {tuple(tensors[name].shape)}" for name in LAYER_TENSORS))
    layers = " and ".join(str(min(n, shape.layers)) for n in LOAD_LAYERS)
    print(f"  model load: load_model of checkpoints of the first {layers} layers (float16), fitted to {shape.layers}")
    print(f"  vocabulary: {shape.words} random words, BPE tokenizer of {shape.vocab} tokens, 50-d random GloVe text")
    print("  jobs: python -m workflow_scripts.attention layer ... --word-vectors-kind glove-text; "
          "python -m workflow_scripts.ffn layer ...")
    modes = args.precisions.split(",")
    if args.generation_only:
        print(f"  --generation-only: per mode ({', '.join(modes)}) its model and the greedy responses, within "
              f"{args.deadline_s:.0f} s of the process's start (--deadline-s)")
        return
    print(f"  order: the per-token loop, {modes[0]}, "
          + ("" if args.skip_layer_jobs else "the model load and the layer jobs, ")
          + (f"then {', '.join(modes[1:])}, " if modes[1:] else "")
          + f"within {args.deadline_s:.0f} s of the process's start (--deadline-s)")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, fn, *args):
    """(result, seconds, peaks) of one call, the GPU's queue drained on both sides. peaks: the GiB of GPU
    memory allocated at most, and reserved by torch's caching allocator (what the card must hold), or None."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    synchronize(device)
    start = time.perf_counter()
    out = fn(*args)
    synchronize(device)
    seconds = time.perf_counter() - start
    return out, seconds, {"peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                          "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None}


def reference_tail(model, ids: torch.Tensor, n_prompt: int, tokens: int) -> np.ndarray:
    """The per-token loop's columns of the last `tokens` response tokens, by the project's own
    `attribute_ids_reference` with the prompt/response split moved to T - tokens.

    An attribution entry (prompt position i, response position t) does not depend on where the
    split is, so the first n_prompt rows equal the benchmark matrix's last `tokens` columns; each
    iteration still runs the full model over the whole sample, as in the full loop; only its softmax over
    the response positions is shorter, so the extrapolation errs low by that share (7-11% on a 4-layer,
    8000-token-vocabulary model on a CPU, well under 1% at the 7B shape, whose body dominates).
    """
    from workflow_scripts.attribution import attribute_ids_reference

    return attribute_ids_reference(model, ids, ids.numel() - tokens)[:n_prompt]


def cells_equal(a: np.ndarray, b: np.ndarray) -> float:
    """Share of binned cells (the analysis defaults L=10, b=7) of b equal to a's."""
    from workflow_scripts.importance import bin_attributions

    return float((bin_attributions(a) == bin_attributions(b)).mean())


def cast_weights(model, dtype: torch.dtype):
    """`model.to(dtype)` for what a checkpoint holds (parameters and persistent buffers) only: the
    non-persistent buffers (the rotary embeddings' `inv_freq` and `original_inv_freq`, computed in
    float32 at init) keep their dtype, as `from_pretrained(dtype=...)` leaves them in a real job;
    a plain `.to(dtype)` would round the frequencies to bfloat16 or float16 too."""
    persistent = set(model.state_dict())
    kept = {name: buffer for name, buffer in model.named_buffers() if name not in persistent}
    model.to(dtype)
    for name, buffer in kept.items():
        owner, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner), leaf, buffer)
    return model


def weights_fingerprint(model) -> torch.Tensor:
    """One float64 sum per parameter (on the host): equal for equal weights (the reduction is
    deterministic), so a rebuild from the seed can be checked against the first build."""
    with torch.no_grad():
        return torch.stack([p.detach().sum(dtype=torch.float64) for p in model.parameters()]).cpu()


class Models:
    """The benchmark's model on the device, one at a time. Each is built from the same seed in float32
    (the same weights, bit for bit: `weights_fingerprint` checks it) straight on the device and cast
    to the mode's weights with `cast_weights`; `get` reuses the model in hand when its dtype is the
    one asked for (float32 and tf32 share one) and otherwise rebuilds: no float32 copy of the
    weights is kept, and nothing crosses between host and device."""

    def __init__(self, shape: Shape, device: torch.device):
        self.shape, self.device = shape, device
        self.model, self.dtype = None, None
        self.first_fingerprint, self.build_seconds = None, None

    def get(self, dtype: torch.dtype):
        """(the model in `dtype`, what its build did, or None when the model in hand was reused)."""
        if self.model is not None and self.dtype == dtype:
            return self.model, None
        self.release()
        start = time.perf_counter()
        torch.manual_seed(SEED)
        with self.device:  # built where it runs: a 6.7B-parameter init takes seconds on a GPU, minutes on a CPU
            model = LlamaForCausalLM(llama_config(self.shape))
        model = model.eval().requires_grad_(False)
        synchronize(self.device)
        init_seconds = time.perf_counter() - start
        fingerprint = weights_fingerprint(model)
        equal = None if self.first_fingerprint is None else bool(torch.equal(fingerprint, self.first_fingerprint))
        if self.first_fingerprint is None:
            self.first_fingerprint = fingerprint
        if equal is False:
            print("WARNING: the rebuilt model's float32 weights differ from the first build's", file=sys.stderr)
        cast_weights(model, dtype)
        synchronize(self.device)
        self.model, self.dtype = model, dtype
        self.build_seconds = self.build_seconds or time.perf_counter() - start
        return model, {"init_seconds": init_seconds, "seconds": time.perf_counter() - start,
                       "float32_weights_equal_to_first_build": equal,
                       "weights_dtype": sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()}),
                       "buffers_dtype": {name: str(b.dtype).removeprefix("torch.")
                                         for name, b in model.named_buffers()}}

    def release(self) -> None:
        self.model, self.dtype = None, None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def read_setting(read):
    """A torch setting's value, or why it could not be read (torch >= 2.9 refuses to read the legacy
    TF32 flags once the new `fp32_precision` API set them differently)."""
    try:
        return read()
    except Exception as error:
        return f"unreadable: {type(error).__name__}: {error}"


def arithmetic_environment() -> dict:
    """The versions and environment variables that decide a run's arithmetic (recorded once)."""
    try:
        import accelerate

        accelerate_version = accelerate.__version__
    except ImportError:
        accelerate_version = None
    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": read_setting(torch.backends.cudnn.version), "python": sys.version.split()[0],
            "transformers": __import__("transformers").__version__, "accelerate": accelerate_version,
            "env": {name: os.environ.get(name) for name in TF32_OVERRIDES}}


def tf32_probe(device: torch.device) -> dict:
    """A 512 x 512 float32 matmul on the device against float64: TF32 (10-bit mantissas) leaves a
    relative error near 1e-3, IEEE float32 near 1e-6; `ran` says which it looks like."""
    generator = torch.Generator().manual_seed(1)
    a, b = (torch.randn(512, 512, generator=generator, dtype=torch.float64) for _ in range(2))
    exact = a @ b
    product = (a.float().to(device) @ b.float().to(device)).double().cpu()
    error = float((product - exact).abs().max() / exact.abs().max())
    return {"relative_error": error, "ran": "tf32 or lower" if error > 1e-4 else "ieee float32"}


def arithmetic_record(model, mode: str, device: torch.device) -> dict:
    """What arithmetic a mode's measurements ran: the project's own record (weights, activations,
    matmuls), torch's switches as they stand, and the probe."""
    from workflow_scripts.attribution_model import precision_record

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    return {
        "precision_record": read_setting(lambda: precision_record(model, mode)),
        "cuda_matmul_allow_tf32": read_setting(lambda: matmul.allow_tf32),
        "cudnn_allow_tf32": read_setting(lambda: cudnn.allow_tf32),
        "float32_matmul_precision": read_setting(torch.get_float32_matmul_precision),
        "cuda_matmul_fp32_precision": read_setting(lambda: getattr(matmul, "fp32_precision", None)),
        "allow_bf16_reduced_precision_reduction": read_setting(lambda: matmul.allow_bf16_reduced_precision_reduction),
        "allow_fp16_reduced_precision_reduction": read_setting(lambda: matmul.allow_fp16_reduced_precision_reduction),
        "env": {name: os.environ.get(name) for name in TF32_OVERRIDES},
        "tf32_probe": read_setting(lambda: tf32_probe(device)),
    }


class DeadlineExceeded(BaseException):
    """Raised in the running section when the deadline comes (a BaseException: no `except Exception`
    in a library swallows it)."""


def error_record(error: BaseException) -> dict:
    record = {"error": f"{type(error).__name__}: {error}"[:1000], "traceback_tail": traceback.format_exc()[-2000:]}
    if getattr(error, "log_tail", None):
        record["log_tail"] = error.log_tail
    return record


class Sections:
    """Runs the benchmark's sections in order before a deadline (seconds from the process's start,
    less `FINAL_RESERVE_S` for the tables and the JSON). A section is skipped when a section it needs
    did not finish or when its estimate exceeds the time left; one still running at the deadline is
    cut off by SIGALRM; one that raises has its error recorded. Each outcome goes into the results
    (`skipped`, `errors`, `sections`), which `write` saves after every section."""

    def __init__(self, results: dict, deadline_s: float, write):
        self.deadline_s, self.end = deadline_s, PROCESS_STARTED + deadline_s - FINAL_RESERVE_S
        self.results, self.write, self.done = results, write, set()
        self.armed = self.held = self.pending = False
        results.update({"skipped": {}, "errors": {}, "sections": {}})
        if hasattr(signal, "setitimer"):
            signal.signal(signal.SIGALRM, self._alarm)

    def left(self) -> float:
        """Seconds left to the sections."""
        return self.end - time.monotonic()

    def _cut(self) -> DeadlineExceeded:
        self.armed = self.pending = False
        return DeadlineExceeded(f"the deadline ({self.deadline_s:.0f} s from the process's start) came")

    def _alarm(self, signum, frame) -> None:
        if self.held:  # in the middle of a save: raised once it is done
            self.pending = True
        elif self.armed:
            raise self._cut()

    def _disarm(self) -> None:
        self.armed = False
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)

    def save(self) -> None:
        """`write` (the results, as they stand), never cut off in the middle of the file."""
        self.held = True
        try:
            self.write()
        finally:
            self.held = False
        if self.pending and self.armed:
            raise self._cut()

    def skip(self, name: str, reason: str, kind: str, **extra) -> None:
        self.results["skipped"][name] = {"reason": reason, "kind": kind, **extra}
        print(f"SKIPPED {name}: {reason}", flush=True)
        self.save()

    def run(self, name: str, fn, estimate=0.0, needs=()) -> bool:
        """Run `fn()` as section `name`; True when it finished. `estimate`: seconds, or a function
        called once the sections in `needs` are known to have finished."""
        missing = [n for n in needs if n not in self.done]
        if missing:
            self.skip(name, f"needs {', '.join(missing)}, which did not finish", "needs")
            return False
        try:
            estimate = float(estimate() if callable(estimate) else estimate)
        except Exception as error:  # an estimate is no reason to fail
            print(f"estimate of {name} failed: {type(error).__name__}: {error}", file=sys.stderr)
            estimate = 0.0
        left = self.left()
        if left <= 0 or estimate > left:
            self.skip(name, f"estimated {estimate:.0f} s, {max(left, 0):.0f} s left before the deadline", "deadline",
                      estimated_seconds=estimate, seconds_left=left)
            return False
        start = time.monotonic()
        try:
            try:
                if hasattr(signal, "setitimer"):
                    self.armed, self.pending = True, False
                    signal.setitimer(signal.ITIMER_REAL, left)
                fn()
            finally:
                self._disarm()
            self.done.add(name)
        except DeadlineExceeded as cut:
            seconds = time.monotonic() - start
            self.results["skipped"][name] = {
                "reason": f"cut off by the deadline after {seconds:.0f} s (estimated {estimate:.0f} s); what it "
                          "measured before is kept", "kind": "deadline", "cut_off": True, "estimated_seconds": estimate}
            if getattr(cut, "log_tail", None):
                self.results["skipped"][name]["log_tail"] = cut.log_tail
            print(f"CUT OFF {name}: the deadline came after {seconds:.0f} s", flush=True)
        except Exception as error:
            self.results["errors"][name] = error_record(error)
            print(f"FAILED {name}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            traceback.print_exc()
        finally:
            self._disarm()
            self.results["sections"][name] = {"seconds": time.monotonic() - start, "estimated_seconds": estimate}
            self.save()
        return name in self.done


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def ratio(numerator, denominator):
    return None if numerator is None or not denominator else numerator / denominator


class AttributionBench:
    """The attribution measurements, one method per section, into `results` (the run's `attribution`
    entry), `save()` after each measurement; each method reads what the sections before it measured
    and copes with their absence (skipped by the deadline, or failed): the modes are compared with
    float32's one-backward-per-token matrix, or, without it, with the first mode's batched one."""

    def __init__(self, models: Models, shape: Shape, args, device: torch.device, results: dict, save, left):
        from workflow_scripts.devices import set_matmul_precision

        self.models, self.shape, self.args, self.device = models, shape, args, device
        self.results, self.save, self.left = results, save, left
        set_matmul_precision("float32")
        self.ids = torch.randint(3, shape.vocab, (shape.prompt + shape.response,), device=device)
        self.per_token = self.slow = self.t_slow_all = self.tokens = None  # the per-token loop
        self.reference = self.paper_reference = None
        results.update({"chunk_size": args.chunk_size, "backward_batch": args.backward_batch,
                        "forward_batch": args.forward_batch, "modes": {}})

    def model(self, dtype: torch.dtype = torch.float32):
        return self.models.get(dtype)[0]

    def reference_loop(self) -> None:
        """Warm-up, then the per-token loop in float32: whole when it fits --reference-budget and a
        tenth of the time left, else its last tokens, extrapolated."""
        from workflow_scripts.attribution import attribute_ids, attribute_ids_forward
        from workflow_scripts.devices import set_matmul_precision

        model, ids, m, shape = self.model(), self.ids, self.shape.response, self.shape
        set_matmul_precision("float32")
        attribute_ids(model, ids[:16], 8)  # warm-up: kernels, allocator, autograd
        attribute_ids_forward(model, ids[:16], 8)  # and vmap's and forward AD's first-call costs
        tokens, budget = self.args.reference_tokens, min(self.args.reference_budget, REFERENCE_SHARE * self.left())
        if tokens is None:  # a few iterations say whether the whole loop fits the budget
            _, t_calibration, _ = timed(self.device, reference_tail, model, ids, shape.prompt, CALIBRATION_TOKENS)
            self.per_token = t_calibration / CALIBRATION_TOKENS
            tokens = m if self.per_token * m <= budget else max(1, int(budget / self.per_token))
            print(f"per-token loop: {self.per_token:.2f} s per token, estimated {self.per_token * m:.0f} s for all "
                  f"{m}: timing {'all' if tokens == m else f'the last {tokens}'} (budget {budget:.1f} s)")
        tokens = min(tokens, m)
        slow, t_slow, peaks = timed(self.device, reference_tail, model, ids, shape.prompt, tokens)
        self.slow, self.tokens, self.per_token = slow, tokens, t_slow / tokens
        self.t_slow_all = t_slow * m / tokens
        self.results.update({"reference_seconds": self.t_slow_all,
                             **{f"reference_{key}": value for key, value in peaks.items()},
                             "reference_tokens_timed": tokens, "reference_extrapolated": tokens < m,
                             "reference_budget_seconds": budget, "max_abs_value": float(np.abs(slow).max())})

    def body_estimate(self) -> float:
        """Seconds of `attribute_ids` with one backward per token, from the per-token loop's."""
        return BODY_PER_LOOP * self.per_token * self.shape.response if self.per_token else 0.0

    def per_token_backward(self) -> None:
        from workflow_scripts.attribution import attribute_ids
        from workflow_scripts.devices import set_matmul_precision

        set_matmul_precision("float32")
        shape, m = self.shape, self.shape.response
        body, seconds, peaks = timed(self.device, attribute_ids, self.model(), self.ids, shape.prompt,
                                    self.args.chunk_size, 1)
        self.results["float32_per_token_backward"] = {
            "seconds": seconds, **peaks,
            "max_relative_difference": None if self.slow is None else float(
                np.abs(body[:, m - self.tokens:] - self.slow).max() / np.abs(self.slow).max())}
        self.reference = body
        self.results["compared_with"] = "float32, one backward per token"
        print(f"attribute_ids float32, one backward per token: {seconds:.2f} s")

    def measured(self, key: str, field: str = "seconds"):
        """The first mode's measurement of `key` ("backward": the mode's own entry), None if none."""
        for entry in self.results["modes"].values():
            value = entry.get(field) if key == "backward" else (entry.get(key) or {}).get(field)
            if value is not None:
                return value
        return None

    def estimate(self, mode: str, kind: str) -> float:
        """Seconds a mode's section should take: what the first mode measured (the other modes are
        no slower on a GPU), else derived from the per-token loop."""
        entry = self.results["modes"].get(mode, {})
        backward = entry.get("seconds") or self.measured("backward") or (
            self.results.get("float32_per_token_backward") or {}).get("seconds") or self.body_estimate()
        if kind == "model":
            from workflow_scripts.attribution_model import PRECISIONS

            rebuild = self.models.dtype != PRECISIONS[mode] and self.models.build_seconds
            return 1.5 * rebuild + 1 if rebuild else 0.0
        if kind == "backward":
            return backward
        if kind == "forward":
            from workflow_scripts.attribution import forward_position_weight

            shape, weight = self.shape, forward_position_weight(self.device.type)
            return self.measured("forward") or backward * weight * shape.prompt / shape.response
        if kind == "generate":
            return 2 * (self.measured("generate") or self.shape.response * GENERATE_SECONDS_PER_TOKEN)
        forward = (entry.get("forward") or {}).get("seconds")
        return self.measured("paper_shape_auto") or min(x for x in (backward, forward) if x is not None)

    def mode_model(self, mode: str) -> None:
        """The mode's model (rebuilt unless the model in hand has its weights) and its arithmetic."""
        from workflow_scripts.attribution_model import PRECISIONS
        from workflow_scripts.devices import set_matmul_precision

        dtype = PRECISIONS[mode]  # an unknown mode fails here: recorded, and the run goes on
        set_matmul_precision(mode)
        model, built = self.models.get(dtype)
        entry = self.results["modes"].setdefault(mode, {})
        entry["model"] = built or {"reused": "the model in hand, which has this mode's weights"}
        entry["arithmetic"] = arithmetic_record(model, mode, self.device)
        probe = entry["arithmetic"]["tf32_probe"]
        print(f"{mode}: {entry['arithmetic']['precision_record'].get('matmul')} matmuls, float32 matmul probe: "
              f"{probe.get('ran') if isinstance(probe, dict) else probe}"
              + ("" if built is None else f"; model rebuilt in {built['seconds']:.1f} s, float32 weights equal to "
                 f"the first build's: {built['float32_weights_equal_to_first_build']}"))

    def mode_backward(self, mode: str) -> None:
        from workflow_scripts.attribution import attribute_ids
        from workflow_scripts.attribution_model import PRECISIONS
        from workflow_scripts.devices import set_matmul_precision

        set_matmul_precision(mode)
        entry, args = self.results["modes"][mode], self.args
        fast, seconds, peaks = timed(self.device, attribute_ids, self.model(PRECISIONS[mode]), self.ids,
                                    self.shape.prompt, args.chunk_size, args.backward_batch)
        if self.reference is None:
            self.reference = fast
            self.results["compared_with"] = f"{mode}, backward batch {args.backward_batch or 'auto'}"
        entry.update({"seconds": seconds, **peaks, "speed_up": ratio(self.t_slow_all, seconds),
                      "max_relative_difference": relative_difference(fast, self.reference),
                      "cells_equal": cells_equal(self.reference, fast)})
        print(f"attribute_ids {mode}, backward batch {args.backward_batch or 'auto'}: {seconds:.2f} s, "
              f"{entry['cells_equal']:.2%} of binned cells equal to {self.results['compared_with']}'s")

    def mode_forward(self, mode: str) -> None:
        from workflow_scripts.attribution import attribute_ids_forward, forward_position_cost
        from workflow_scripts.attribution_model import PRECISIONS
        from workflow_scripts.devices import set_matmul_precision

        set_matmul_precision(mode)
        entry, shape = self.results["modes"][mode], self.shape
        forward, seconds, peaks = timed(self.device, attribute_ids_forward, self.model(PRECISIONS[mode]), self.ids,
                                       shape.prompt, None, self.args.forward_batch)
        if self.reference is None:
            self.reference = forward
            self.results["compared_with"] = f"{mode}, forward mode"
        per_position = None if entry.get("seconds") is None else forward_position_cost(
            seconds, entry["seconds"], shape.prompt, shape.prompt, shape.response, self.args.chunk_size)
        entry["forward"] = {
            "seconds": seconds, **peaks, "speed_up": ratio(self.t_slow_all, seconds),
            "position_cost": per_position,  # what `auto` assumes: FORWARD_POSITION_COST
            "max_relative_difference": relative_difference(forward, self.reference),
            "cells_equal": cells_equal(self.reference, forward)}
        print(f"attribute_ids_forward {mode}: {seconds:.2f} s, {entry['forward']['cells_equal']:.2%} "
              f"of binned cells equal to {self.results['compared_with']}'s")

    def mode_auto(self, mode: str) -> None:
        from workflow_scripts.attribution import Attributor, autodiff_summary
        from workflow_scripts.attribution_model import PRECISIONS
        from workflow_scripts.devices import set_matmul_precision

        set_matmul_precision(mode)
        entry, shape, args = self.results["modes"][mode], self.shape, self.args
        paper_ids = self.ids[shape.prompt - shape.paper_prompt:]  # the same response after a shorter prompt
        attributor = Attributor(self.model(PRECISIONS[mode]), args.chunk_size, args.backward_batch, "auto",
                                args.forward_batch)
        paper, seconds, peaks = timed(self.device, attributor.matrix, paper_ids, shape.paper_prompt,
                                     np.arange(shape.paper_prompt))
        if self.paper_reference is None:
            self.paper_reference = paper
            self.results["paper_shape_compared_with"] = mode
        entry["paper_shape_auto"] = {
            "seconds": seconds, **peaks,
            "autodiff_samples": autodiff_summary(attributor.record()["autodiff_samples"]),
            "cells_equal_to_first_mode": cells_equal(self.paper_reference, paper)}
        print(f"auto on the paper's mean shape ({shape.paper_prompt} + {shape.response}), {mode}: {seconds:.2f} s "
              f"({entry['paper_shape_auto']['autodiff_samples']})")

    def mode_generate(self, mode: str) -> None:
        """The greedy responses the attribution job generates first under `response: generate` (the
        paper's), through its own calls (`greedy_continuation`, `left_padded`), forced to the full
        `response` tokens (random weights would stop anywhere): one response after the paper's mean
        prompt, then a batch as the job runs one (GENERATE_BATCH prompts of spread lengths, padded on the
        left to the longest: a shard of the paper's prompts spans such lengths)."""
        from workflow_scripts.attribution_model import PRECISIONS
        from workflow_scripts.attribution_tokens import greedy_continuation, left_padded
        from workflow_scripts.devices import set_matmul_precision

        set_matmul_precision(mode)
        entry, shape, model = self.results["modes"][mode], self.shape, self.model(PRECISIONS[mode])
        prompt = self.ids[None, :shape.paper_prompt]
        new, seconds, peaks = timed(self.device, greedy_continuation, model, prompt, shape.response, 0,
                                    shape.response)
        tokens = new.shape[1]
        entry["generate"] = {"seconds": seconds, **peaks, "tokens": tokens, "seconds_per_token": seconds / tokens}
        lengths = np.linspace(shape.paper_prompt // 2, 2 * shape.paper_prompt, GENERATE_BATCH).astype(int).tolist()
        generator = torch.Generator().manual_seed(SEED)
        ids, mask = left_padded([torch.randint(3, shape.vocab, (n,), generator=generator) for n in lengths], 0)
        _, batched, batch_peaks = timed(self.device, greedy_continuation, model, ids.to(self.device), shape.response,
                                        0, shape.response, mask.to(self.device))
        entry["generate_batched"] = {"prompts": GENERATE_BATCH, "prompt_lengths": lengths, "seconds": batched,
                                     **batch_peaks, "seconds_per_sample": batched / GENERATE_BATCH}
        print(f"generate {mode}: {tokens} tokens after {shape.paper_prompt} in {seconds:.2f} s "
              f"({1000 * seconds / tokens:.1f} ms a token); a batch of {GENERATE_BATCH} prompts "
              f"({lengths[0]}-{lengths[-1]} tokens, padded on the left): {batched:.2f} s "
              f"({batched / GENERATE_BATCH:.2f} s "
              "a sample)")

    def run_mode(self, sections: Sections, mode: str) -> None:
        """A mode's five sections: its model, then batched backward passes, forward mode, `auto` and the
        greedy responses' generation (--generation-only: its model and the generation)."""
        model = f"{mode} model"
        sections.run(model, lambda: self.mode_model(mode), lambda: self.estimate(mode, "model"))
        kinds = (("backward", self.mode_backward), ("forward", self.mode_forward), ("auto", self.mode_auto),
                 ("generate", self.mode_generate))
        for kind, fn in kinds[-1:] if self.args.generation_only else kinds:
            sections.run(f"{mode} {kind}", lambda fn=fn: fn(mode), lambda kind=kind: self.estimate(mode, kind),
                         needs=[model])


def run_jobs(sections: Sections, models: Models, shape: Shape, workdir: Path, device: torch.device,
             results: dict) -> None:
    """The child sections: the job files (from the float32 model, which is then freed: its memory goes
    back to the jobs' processes), the model load, the word-pieces job (the vocabulary cut once per model), the
    attention and the FFN layer job (layer 0, with the rules' arguments). Each child is killed when the deadline
    comes."""
    files = {}
    prepare_estimate, load_estimate, pieces_estimate, attention_estimate, ffn_estimate = shape.job_estimates

    def prepare() -> None:
        files.update(prepare_layer_jobs(models.get(torch.float32)[0], shape, workdir))
        models.release()
        results["layer_jobs"] = {"checkpoint_gib": files["checkpoint_gib"], "words": files["words"]}

    def load() -> None:
        results["model_load"] = benchmark_model_load(files, workdir, device, sections.left())

    def pieces() -> None:
        files["pieces"] = workdir / "word-pieces.tsv"
        arguments = ["--model-dir", str(files["model_dir"]), "--vocabulary", str(files["vocabulary"])]
        results["layer_jobs"]["word_pieces"] = run_layer_job(
            "workflow_scripts.word_pieces", arguments, workdir / "word_pieces.log", files["pieces"], sections.left())
        print(f"word-pieces job: {results['layer_jobs']['word_pieces']['wall_seconds']:.1f} s")

    def layer(name: str, module: str, extra: list[str]) -> None:
        common = ["layer", "--model-dir", str(files["model_dir"]), "--model-id", "bench", "--layer", "0",
                  "--word-pieces", str(files["pieces"])]
        results["layer_jobs"][name] = run_layer_job(module, common + extra, workdir / f"{name}.log",
                                                    workdir / f"{name}-layer-0.tsv", sections.left())
        print(f"{'FFN' if name == 'ffn' else name} layer job: {results['layer_jobs'][name]['wall_seconds']:.1f} s, "
              f"peak host {gib(results['layer_jobs'][name]['peak_host_gib'])}")

    sections.run("layer-job files", prepare, prepare_estimate)
    sections.run("model load", load, load_estimate, needs=["layer-job files"])
    vectors = ["--word-vectors-kind", "glove-text", "--word-vectors-path", str(files.get("vectors"))]
    sections.run("word-pieces job", pieces, pieces_estimate, needs=["layer-job files"])
    sections.run("attention layer job", lambda: layer("attention", "workflow_scripts.attention", vectors),
                 attention_estimate, needs=["word-pieces job"])
    sections.run("FFN layer job", lambda: layer("ffn", "workflow_scripts.ffn", []), ffn_estimate,
                 needs=["word-pieces job"])


def projection(r: dict, args) -> dict:
    """Seconds of each component of the paper's workflow on one GPU, per precision mode.

    Attribution: 632 samples x 2 models at this sample's time (200 + 300 tokens: the paper's
    responses are at most 300 tokens, so this errs long), and at the time of the paper's mean shape
    (51 + 300: the mean prompt, and responses as long as LLaMA-7B's, longer than Vicuna-7B's), each
    total with the greedy responses' generation in the same mode (`response: generate`, the paper's: 632
    x 2 at a sample's share of a batch of 16 generating `response` tokens, so it errs long; a total
    without it says so); model
    loads: one per shard of 16, at the measured `load_model` time fitted to the whole model (from the
    page cache: a cold disk or a network file system is slower), or --load-seconds; word-pieces jobs: one
    per model; layer jobs: 2 x 32 of each kind; both at the measured wall time; annotation: at most 5 seeds
    x 2 models x 32 layers x 300 components x 3 steps requests at --annotation-seconds-per-request (assumed:
    it depends on the server, not on this code). What was not measured (skipped, failed) is left out, or None."""
    jobs = r.get("layer_jobs") or {}
    shards = -(-PAPER["samples"] // PAPER["shard_size"]) * PAPER["models"]
    requests = PAPER["seeds"] * PAPER["models"] * PAPER["layers"] * PAPER["components"] * PAPER["steps"]
    per_kind = PAPER["models"] * PAPER["layers"]
    fixed = {
        **load_projection(r.get("model_load"), shards, args.load_seconds),
        "word-pieces jobs": PAPER["models"] * jobs["word_pieces"]["wall_seconds"] if "word_pieces" in jobs else None,
        "attention layer jobs": per_kind * jobs["attention"]["wall_seconds"] if "attention" in jobs else None,
        "FFN layer jobs": per_kind * jobs["ffn"]["wall_seconds"] if "ffn" in jobs else None,
        "annotation (assumed)": requests * args.annotation_seconds_per_request,
    }
    attributed = PAPER["samples"] * PAPER["models"]
    a = r.get("attribution") or {}
    attribution, mode_of = {}, {}  # {label: seconds}, {label: the mode whose generation goes with it}

    def add(label: str, mode: str, seconds: float) -> None:
        attribution[label], mode_of[label] = attributed * seconds, mode

    if a.get("reference_seconds") is not None:
        add("per-token loop (paper), float32", "float32", a["reference_seconds"])
    if a.get("float32_per_token_backward"):
        add("this project, float32, one backward per token", "float32", a["float32_per_token_backward"]["seconds"])
    modes = a.get("modes") or {}
    for mode, m in modes.items():
        if m.get("seconds") is not None:
            add(f"this project, {mode}", mode, m["seconds"])
    for mode, m in modes.items():
        if m.get("forward"):
            add(f"this project, {mode}, forward mode", mode, m["forward"]["seconds"])
    for mode, m in modes.items():
        if m.get("paper_shape_auto"):
            add(f"this project, {mode}, auto, paper's mean shape ({m['paper_shape_auto']['autodiff_samples']})",
                mode, m["paper_shape_auto"]["seconds"])
    # the greedy responses (`response: generate`, the paper's), `response` tokens each, in the mode's dtype, in
    # batches as the job generates them (a run from before the job batched them: one at a time)
    per_sample = {mode: timing for mode, m in modes.items() if (timing := generation_per_sample(m)) is not None}
    generation = {mode: attributed * seconds for mode, (seconds, _) in per_sample.items()}
    known = sum(v for v in fixed.values() if v is not None)
    totals = {}
    for label, seconds in attribution.items():
        generated = generation.get(mode_of[label])
        if generated is None:
            totals[f"{label}, response generation not measured"] = (seconds + known) / 3600
        else:
            totals[label] = (seconds + generated + known) / 3600
    return {"shards": shards, "annotation_requests": requests, "fixed_seconds": fixed,
            "generation_seconds": generation,
            "generation_basis": {mode: basis for mode, (_, basis) in per_sample.items()},
            "attribution_seconds": attribution,
            "total_hours": totals}


def generation_per_sample(mode: dict) -> tuple[float, str] | None:
    """(seconds, how) of a sample's greedy response: its share of its batch's generation, as the job batches
    a shard's prompts; from a run older than the left-padded batch (no `prompt_lengths`), the one-prompt
    time; None when neither was timed."""
    batched, solo = mode.get("generate_batched"), mode.get("generate")
    if batched and "prompt_lengths" in batched:
        return batched["seconds_per_sample"], f"{batched['prompts']} prompts a call"
    return (solo["seconds"], "one at a time") if solo else None


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


class ChildFailed(RuntimeError):
    """A child process failed or was killed; `log_tail` is the end of its log."""

    def __init__(self, message: str, log_tail: str):
        super().__init__(message)
        self.log_tail = log_tail


def run_child(code: str, arguments: list[str], log: Path, what: str, timeout: float) -> tuple[float, str, dict]:
    """`code` in a child process (the project importable, its output in `log`), killed (with the
    processes it started) after `timeout` seconds (the time left: DeadlineExceeded) or when this process
    is cut off: wall seconds, the log's text and the child's peak host and GPU memory (`CHILD_PROLOGUE`);
    ChildFailed if it fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    status = None
    try:
        with open(log, "w") as handle:
            child = subprocess.Popen([sys.executable, "-c", code, *arguments], cwd=REPO, env=env, stdout=handle,
                                     stderr=subprocess.STDOUT, start_new_session=True)
            try:
                status = child.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                pass
            finally:
                if child.poll() is None:
                    os.killpg(child.pid, signal.SIGKILL)  # its own session: the child and what it started
                    child.wait()
    except DeadlineExceeded as cut:
        cut.log_tail = log_tail(log)
        raise
    wall = time.perf_counter() - start
    text = log.read_text(errors="replace")
    if status is None:  # its time was the time left: the deadline came
        cut = DeadlineExceeded(f"{what} did not finish in {timeout:.0f} s, the time left before the deadline: killed")
        cut.log_tail = text[-LOG_TAIL:]
        raise cut
    if status:
        raise ChildFailed(f"{what} failed (exit status {status})", text[-LOG_TAIL:])
    host = re.search(r"^peak_host_kib (\d+|none) (.*)$", text, re.MULTILINE)
    gpu = re.search(r"peak_gpu_bytes (\d+) (\d+)", text)
    return wall, text, {
        "peak_host_gib": int(host.group(1)) / 2**20 if host and host.group(1) != "none" else None,
        "peak_host_source": host.group(2).strip() if host else "not reported",
        "peak_gpu_gib": int(gpu.group(1)) / 2**30 if gpu else None,
        "peak_gpu_reserved_gib": int(gpu.group(2)) / 2**30 if gpu else None,
        "log_tail": text[-LOG_TAIL:]}


def log_tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-LOG_TAIL:]
    except OSError:
        return ""


def run_layer_job(module: str, arguments: list[str], log: Path, output: Path, timeout: float) -> dict:
    """One layer job in a child process: wall time, the job's own time (its log), peak host and GPU memory."""
    wall, text, peaks = run_child(LAYER_CHILD, [module, *arguments, "--output", str(output)], log,
                                  f"{module} layer job", timeout)
    job = re.search(r" in ([\d.]+) s -> ", text)
    return {"wall_seconds": wall, "job_seconds": float(job.group(1)) if job else None, **peaks,
            "rows": output.read_text().count("\n") - 1}


def benchmark_model_load(files: dict, workdir: Path, device: torch.device, timeout: float) -> dict:
    """An attribution job's `load_model` of checkpoints of the first layers, in a child process, and the
    whole model's load from them: a fixed cost plus a cost per parameter, fitted to the two loads. On
    a GPU the weights must arrive there (loaded through a device map, `attribution_model.load_kwargs`)."""
    checkpoints = files["load"]
    wall, text, peaks = run_child(LOAD_CHILD, [str(c["model_dir"]) for c in checkpoints], workdir / "load.log",
                                  "load_model", timeout)
    loads = re.findall(r"load_seconds ([\d.e+-]+) on (\S+)", text)
    wrong = [placed for _, placed in loads if placed.split(":")[0] != device.type]
    if len(loads) != len(checkpoints) or wrong:
        raise ChildFailed(f"load_model did not load every checkpoint onto the {device.type}", text[-LOG_TAIL:])
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
          f"peak host {gib(results['peak_host_gib'])} ({results['peak_host_source']})")
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


def write_json(path: Path, results: dict) -> None:
    """Replace `path` whole (temp file + rename): a run killed while writing leaves the last copy."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(results, indent=1) + "\n")
    partial.replace(path)


def gib(value, note: str = "") -> str:
    return "n/a" if value is None else f"{value:.1f} GiB{note}"


def gpu_peak(entry: dict, prefix: str = "", note: str = "") -> str:
    """An entry's peak GPU memory: allocated, and what the caching allocator reserved beside it."""
    allocated, reserved = entry.get(f"{prefix}peak_gpu_gib"), entry.get(f"{prefix}peak_gpu_reserved_gib")
    return gib(allocated, note) + ("" if reserved is None else f" ({gib(reserved, ' reserved')})")


def cell(text: str, limit: int = 300) -> str:
    """`text` fit for a Markdown table cell: one line, no column bars, at most `limit` characters."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def speed(value) -> str:
    return "" if value is None else f" ({value:.2f}x the loop)"


def markdown(r: dict) -> str:
    """The results as a two-column Markdown table (what was measured, then what was skipped or failed),
    then the projection of the paper's workflow."""
    from workflow_scripts.attribution import forward_position_weight

    assumed = forward_position_weight("cpu" if r["card"] == CPU_CARD else "cuda")
    a, jobs = r.get("attribution") or {}, r.get("layer_jobs") or {}
    versions = r.get("arithmetic_environment") or {}
    rows = [
        ("card", r["card"]),
        ("torch / transformers / accelerate", f"{r['torch']} (CUDA {r['cuda']}) / {r['transformers']} / "
                                              f"{versions.get('accelerate')}"),
    ]
    if "params" in r:
        rows.append(("model", f"{r['shape']}: {r['params'] / 1e6:,.1f}M params, built in float32 "
                              f"({r['attention_implementation']} attention), random weights built in "
                              f"{r['init_seconds']:.1f} s"))
    rows.append(("sample", f"{r['sample']['prompt']} prompt + {r['sample']['response']} response tokens (random ids)"))
    if a.get("reference_seconds") is not None:
        timed_on = (f"timed on the last {a['reference_tokens_timed']} of {r['sample']['response']} tokens, "
                    "EXTRAPOLATED linearly" if a["reference_extrapolated"] else "timed on all tokens")
        rows.append(("attribution, per-token loop (the paper's), float32",
                     f"{a['reference_seconds']:.2f} s ({timed_on}), peak GPU {gpu_peak(a, 'reference_')}"))
    body = a.get("float32_per_token_backward")
    if body:
        difference = body["max_relative_difference"]
        rows.append((f"attribution, this project, float32, chunk {a['chunk_size']}, one backward per token",
                     f"{body['seconds']:.2f} s{speed(ratio(a.get('reference_seconds'), body['seconds']))}, peak GPU "
                     f"{gpu_peak(body, note=' (weights included)')}, max relative difference to the loop "
                     + ("n/a" if difference is None else f"{difference:.1e}")))
    compared = a.get("compared_with", "float32")
    for mode, m in (a.get("modes") or {}).items():
        arithmetic = m.get("arithmetic") or {}
        probe, record = arithmetic.get("tf32_probe"), arithmetic.get("precision_record")
        if arithmetic:
            rows.append((f"arithmetic, {mode}", cell(
                f"{record.get('matmul') if isinstance(record, dict) else record} matmuls; allow_tf32 "
                f"{arithmetic['cuda_matmul_allow_tf32']}, float32 matmul precision "
                f"{arithmetic['float32_matmul_precision']}; 512x512 float32 matmul vs float64: "
                + (f"{probe['relative_error']:.1e} ({probe['ran']})" if isinstance(probe, dict) else str(probe)))))
        if m.get("seconds") is not None:
            rows.append((f"attribution, this project, {mode}, backward batch {a['backward_batch'] or 'auto'}",
                         f"{m['seconds']:.2f} s{speed(m['speed_up'])}, peak GPU {gpu_peak(m)}, "
                         f"vs {compared}: max relative difference {m['max_relative_difference']:.1e}, "
                         f"{m['cells_equal']:.2%} of binned cells equal"))
        f = m.get("forward")
        if f:
            cost = "n/a" if f["position_cost"] is None else f"{f['position_cost']:.2f}x"
            rows.append((f"attribution, this project, {mode}, forward mode, batch {a['forward_batch'] or 'auto'}",
                         f"{f['seconds']:.2f} s{speed(f['speed_up'])}, peak GPU {gpu_peak(f)}, "
                         f"vs {compared}: max relative difference {f['max_relative_difference']:.1e}, "
                         f"{f['cells_equal']:.2%} of binned cells equal; a position costs "
                         f"{cost} a reverse-mode one (`auto` assumes {assumed})"))
        p = m.get("paper_shape_auto")
        if p:
            rows.append((f"attribution, this project, {mode}, auto, the paper's mean shape "
                         f"({r['sample']['paper_prompt']} + {r['sample']['response']} tokens)",
                         f"{p['seconds']:.2f} s ({p['autodiff_samples']}), peak GPU {gpu_peak(p)}, "
                         f"{p['cells_equal_to_first_mode']:.2%} of binned cells equal to the first mode's"))
        g = m.get("generate")
        if g:
            rows.append((f"greedy response, {mode} (`generate`, {g['tokens']} tokens after "
                         f"{r['sample']['paper_prompt']})",
                         f"{g['seconds']:.2f} s ({1000 * g['seconds_per_token']:.1f} ms a token), peak GPU "
                         f"{gpu_peak(g)}"))
        b = m.get("generate_batched")
        if b:
            spread = f", {b['prompt_lengths'][0]}-{b['prompt_lengths'][-1]} tokens" if "prompt_lengths" in b else ""
            rows.append((f"greedy responses, {mode}, a batch of {b['prompts']} prompts{spread} (the job's "
                         "`generate_batch`)", f"{b['seconds']:.2f} s ({b['seconds_per_sample']:.2f} s a sample), "
                                              f"peak GPU {gpu_peak(b)}"))
    for name, label in (("word_pieces", "word-pieces job (the vocabulary cut into the model's tokens"),
                        ("attention", f"attention layer job (layer 0, {r['config']['heads']} heads"),
                        ("ffn", "FFN layer job (layer 0, top 300 components")):
        if name in jobs:
            j = jobs[name]
            job = f", in-job {j['job_seconds']:.1f} s" if j["job_seconds"] is not None else ""
            rows.append((f"{label}, {jobs['words']:,} words)",
                         f"wall {j['wall_seconds']:.1f} s{job}, peak GPU {gpu_peak(j)}, "
                         f"peak host {gib(j['peak_host_gib'])} ({j['peak_host_source']}), {j['rows']} rows"))
    load = r.get("model_load")
    if load is not None:
        loads = ", ".join(f"first {c['layers']} layer(s) ({c['checkpoint_gib']:.2f} GiB float16) {c['seconds']:.2f} s"
                          for c in load["checkpoints"])
        rows.append(("attribution job's model load (`load_model`, float32, from the page cache)",
                     f"{loads}, onto {load['device']}: {load['fixed_seconds']:.1f} s + "
                     f"{load['seconds_per_billion_params']:.1f} s per billion parameters, about "
                     f"{load['scaled_seconds']:.1f} s for the whole model; peak host {gib(load['peak_host_gib'])} "
                     f"({load['peak_host_source']}), peak GPU {gpu_peak(load)}"))
    for name, skipped in (r.get("skipped") or {}).items():
        rows.append((cell(name), cell(f"SKIPPED: {skipped['reason']}")))
    for name, error in (r.get("errors") or {}).items():
        rows.append((cell(name), cell(f"FAILED: {error['error']}")))
    rows.append(("whole benchmark", f"{r['total_seconds']:.0f} s ({r['deadline']['process_seconds']:.0f} s since "
                                    f"the process started; deadline {r['deadline']['deadline_s']:.0f} s)"))
    table = "\n".join(["| measurement | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
    p = r.get("projection")
    if not p:
        return table
    lines = ["", f"Projected paper workflow on one {r['card']} ({PAPER['samples']} samples x {PAPER['models']} "
             f"models, {p['shards']} shards, {PAPER['models']} x {PAPER['layers']} layer jobs of each kind, "
             f"<= {p['annotation_requests']:,} annotation requests):", "", "| component | hours |", "|---|---|"]
    lines += [f"| {k} | {'n/a' if v is None else f'{v / 3600:.2f}'} |" for k, v in p["fixed_seconds"].items()]
    basis = p.get("generation_basis", {})
    lines += [f"| response generation ({r['sample']['response']} tokens a sample, {basis.get(k, 'one at a time')}), "
              f"{k} | {v / 3600:.2f} |" for k, v in p.get("generation_seconds", {}).items()]
    lines += [f"| attribution: {k} | {v / 3600:.2f} |" for k, v in p["attribution_seconds"].items()]
    lines += [f"| **total with attribution by {k}** | **{v:.2f}** |" for k, v in p["total_hours"].items()]
    return table + "\n" + "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="float32,tf32,bfloat16,float16",
                        help="attribution modes, in this order (each rounds the same float32 weights); the first "
                             "runs before the model load and the layer jobs, the others after them")
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
    parser.add_argument("--reference-budget", type=float, default=20.0,
                        help="seconds the per-token loop may take (default 20, and at most a tenth of the time "
                             "left; it is extrapolated beyond)")
    parser.add_argument("--deadline-s", type=float, default=540.0,
                        help="seconds from this process's start by which the run must end (default 540): a section "
                             "that would not fit is skipped, one running at the deadline is cut off, and the JSON "
                             "says which")
    parser.add_argument("--output", help="also write the results as JSON here (after every measurement)")
    parser.add_argument("--workdir", help="keep the checkpoint, word files and job logs here (default: a temp dir)")
    parser.add_argument("--skip-layer-jobs", action="store_true", help="no model load and no layer jobs")
    parser.add_argument("--generation-only", action="store_true",
                        help="per mode only the greedy responses' generation (no attribution, load or layer jobs)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and check the config; no GPU needed")
    parser.add_argument("--small", action="store_true", help="a tiny shape, to smoke-test the script")
    parser.add_argument("--allow-cpu", action="store_true", help="with --small: run on the CPU")
    return parser.parse_args(argv)


def terminated(signum, frame):
    raise SystemExit(f"terminated by signal {signum}")


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
    environment = arithmetic_environment()
    results = {
        "card": torch.cuda.get_device_name() if device.type == "cuda" else CPU_CARD,
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": environment["transformers"],
        "arithmetic_environment": environment, "shape": shape.name, "config": dataclasses.asdict(shape),
        "sample": {"prompt": shape.prompt, "response": shape.response, "paper_prompt": shape.paper_prompt},
        "deadline": {"deadline_s": args.deadline_s, "started_before_main_s": time.monotonic() - PROCESS_STARTED},
    }

    def write(complete: bool = False) -> None:  # after every section: a run cut short keeps what it measured
        results["deadline"]["process_seconds"] = time.monotonic() - PROCESS_STARTED
        if args.output:
            write_json(Path(args.output), {**results, "complete": complete})

    sections = Sections(results, args.deadline_s, write)
    signal.signal(signal.SIGTERM, terminated)  # a `timeout` around the run: the child jobs end with it
    print(f"deadline: {args.deadline_s:.0f} s from the process's start, {sections.left():.0f} s left to the "
          f"sections ({FINAL_RESERVE_S:.0f} s kept for the end)")
    models = Models(shape, device)
    attribution = None

    def build() -> None:
        nonlocal attribution
        model, built = models.get(torch.float32)
        results.update({"params": sum(p.numel() for p in model.parameters()),
                        "attention_implementation": model.config._attn_implementation,
                        "init_seconds": built["init_seconds"], "build": built})
        print(f"model built in {results['init_seconds']:.1f} s on {results['card']}")
        results["attribution"] = {}
        attribution = AttributionBench(models, shape, args, device, results["attribution"], sections.save,
                                       sections.left)

    sections.run("build", build)
    precisions = args.precisions.split(",")
    if args.generation_only:
        for name in ("per-token loop", "float32 one backward per token"):
            results["skipped"][name] = {"reason": "--generation-only", "kind": "option"}
    if "build" in sections.done:
        if not args.generation_only:
            sections.run("per-token loop", attribution.reference_loop)
            sections.run("float32 one backward per token", attribution.per_token_backward, attribution.body_estimate)
        attribution.run_mode(sections, precisions[0])
    if args.skip_layer_jobs or args.generation_only:
        for name in ("layer-job files", "model load", "word-pieces job", "attention layer job", "FFN layer job"):
            results["skipped"][name] = {"reason": "--generation-only" if args.generation_only else "--skip-layer-jobs",
                                        "kind": "option"}
    else:
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpu-bench-"))
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            run_jobs(sections, models, shape, workdir, device, results)
        finally:
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
    if attribution is not None:
        for mode in precisions[1:]:
            attribution.run_mode(sections, mode)
    models.release()
    from workflow_scripts.devices import set_matmul_precision

    set_matmul_precision("float32")
    results["total_seconds"] = time.perf_counter() - started
    results["peak_host_kib"], results["peak_host_source"] = host_peak()
    try:
        results["projection"] = projection(results, args)
    except Exception as error:
        results["errors"]["projection"] = error_record(error)
        traceback.print_exc()
    results["deadline"]["process_seconds"] = time.monotonic() - PROCESS_STARTED
    try:
        print(markdown(results))
    except Exception as error:
        results["errors"]["table"] = error_record(error)
        traceback.print_exc()
    deadline_skips = sorted(name for name, s in results["skipped"].items() if s["kind"] == "deadline")
    results["finished"] = True
    if deadline_skips:
        print(f"left out by the deadline: {', '.join(deadline_skips)}")
    if results["errors"]:
        print(f"FAILED sections: {', '.join(results['errors'])}", file=sys.stderr)
    write(complete=not results["errors"] and not deadline_skips)
    if args.output:
        print(f"results -> {args.output}")
    if results["errors"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
