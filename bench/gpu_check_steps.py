"""The equality checks of bench/gpu_check.sh (steps 1 and 1b), each writing what it measured into one
JSON file (the measured differences, their bounds, pass or fail, and the error text of a step that
raised), so that a GPU run whose printed output is cut off still returns them; a failed check is
recorded and the step goes on to the next one. The exit status is 1 when a check failed or the step
raised.

    python3 bench/gpu_check_steps.py equality --json DIR/gpu_check_steps.json   # step 1
    python3 bench/gpu_check_steps.py split --json DIR/gpu_check_steps.json      # step 1b
    python3 bench/gpu_check_steps.py status --json ... --step NAME --exit-status N  # what the shell saw

On a CPU (GPU_CHECK_ALLOW_CPU=1) the same code runs on the CPU, where TF32 is never exercised.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
EXACT = 1e-4  # float32 arithmetic in another order: the per-token definition to about 1e-7
# Each mode's bound on the relative difference to float32 on step 1's tiny models. tf32: 3e-2, not the
# 1e-2 it had: TF32 rounds every matmul input to a 10-bit mantissa (about 5e-4 relative each), and an
# emulation of it on these models reached 8.8e-3 (a 1.1x margin); the CPU never exercises TF32, so the
# GPU run is the only check of this bound.
MODE_BOUNDS = {"tf32": 3e-2, "float16": 2e-2, "bfloat16": 1e-1}
# What precision_record must say of each mode's matmuls: on a GPU, half-precision modes turn off
# cuBLAS's reduced-precision reductions (devices.set_matmul_precision), and the record says so; a CPU
# has neither TF32 nor such reductions.
EXPECTED_MATMUL = {
    ("cuda", "tf32"): "tf32",
    ("cuda", "float16"): "float16 (float32 reductions)",
    ("cuda", "bfloat16"): "bfloat16 (float32 reductions)",
    ("cpu", "tf32"): "float32 (CPU: TF32 is a CUDA mode; tf32 runs as float32)",
    ("cpu", "float16"): "float16",
    ("cpu", "bfloat16"): "bfloat16",
}


def update(path: Path, step: str, entry: dict) -> None:
    """Merge `entry` into the step's record in the JSON file (rewritten whole: temp file + rename)."""
    data = json.loads(path.read_text()) if path.exists() else {"steps": {}}
    data["steps"].setdefault(step, {}).update(entry)
    data["failed"] = sorted(name for name, s in data["steps"].items() if s.get("passed") is False)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1) + "\n")
    partial.replace(path)


class Step:
    """One step's checks, written to the JSON after each, and printed."""

    def __init__(self, path: Path, name: str):
        self.path, self.name, self.checks, self.started = path, name, [], time.monotonic()
        update(path, name, {"passed": None, "checks": [], "error": None, "started": time.time()})

    def check(self, what: str, value, bound=None, ok=None, shown=None) -> bool:
        """Record `what`: a difference `value` below `bound`, or a condition `ok` on `value` (printed as
        `shown`, the JSON has it whole)."""
        passed = bool(ok if bound is None else value < bound)
        self.checks.append({"what": what, "value": value, "bound": bound, "passed": passed})
        if shown is None:
            shown = value if bound is None else f"max relative difference {value:.2e} (bound {bound:g})"
        print(f"{what}: {shown}{'' if passed else '  FAILED'}", flush=True)
        update(self.path, self.name, {"checks": self.checks})
        return passed

    def finish(self, error: str | None = None, traceback_tail: str | None = None) -> int:
        passed = error is None and all(c["passed"] for c in self.checks)
        update(self.path, self.name, {"passed": passed, "error": error, "traceback_tail": traceback_tail,
                                      "seconds": time.monotonic() - self.started,
                                      "failed_checks": [c["what"] for c in self.checks if not c["passed"]]})
        print(f"step {self.name}: {'passed' if passed else 'FAILED'}", flush=True)
        return 0 if passed else 1


def device():
    import torch

    return "cuda" if torch.cuda.is_available() or not os.environ.get("GPU_CHECK_ALLOW_CPU") else "cpu"


def relative(matrix, ref) -> float:
    import numpy as np

    return float(np.abs(matrix - ref).max() / np.abs(ref).max())


def equality(step: Step) -> None:
    """Step 1: tiny LLaMA/Mistral GQA models, every chunk size, both autodiff modes, on the GPU, against
    the per-token definition; batched greedy responses against solo ones; then each precision mode's
    weights (rounded from the same float32 ones, the rotary frequencies kept in float32 as
    `from_pretrained` keeps them) and arithmetic."""
    import torch
    from gpu_bench import cast_weights, tf32_probe
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    from workflow_scripts.attribution import attribute_ids, attribute_ids_forward, attribute_ids_reference
    from workflow_scripts.attribution_model import precision_record
    from workflow_scripts.devices import set_matmul_precision

    where = device()
    for cfg_cls, cls in ((LlamaConfig, LlamaForCausalLM), (MistralConfig, MistralForCausalLM)):
        name = cls.__name__
        torch.manual_seed(0)
        cfg = cfg_cls(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
        m = cls(cfg).to(where).eval().requires_grad_(False)
        ids = torch.randint(3, 300, (40,), device=where)
        set_matmul_precision("float32")
        ref = attribute_ids_reference(m, ids, 25)
        for chunk in (0, 1, 4, 16):
            for batch in (1, 3, 0):  # per token, forced batches, automatic from free memory
                step.check(f"{name} chunk={chunk} backward batch={batch}",
                           relative(attribute_ids(m, ids, 25, chunk, batch), ref), EXACT)
        for batch in (1, 3, 0):  # forward mode: one tangent per prompt token, forced batches, automatic
            step.check(f"{name} forward mode batch={batch}",
                       relative(attribute_ids_forward(m, ids, 25, None, batch), ref), EXACT)
        generation(step, name, m, where)
        weights = {key: tensor.clone() for key, tensor in m.state_dict().items()}
        for mode, dtype in (("tf32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)):
            set_matmul_precision(mode)
            m.to(torch.float32).load_state_dict(weights)  # each mode rounds the float32 weights
            cast_weights(m, dtype)  # the rotary frequencies stay float32
            record = precision_record(m, mode)
            buffers = {key: str(b.dtype).removeprefix("torch.") for key, b in m.named_buffers()}
            probe = tf32_probe(torch.device(where))
            step.check(f"{name} {mode}: weights, matmuls and rotary buffers", {
                "precision_record": record, "buffers_dtype": buffers, "tf32_probe": probe,
                "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                "float32_matmul_precision": torch.get_float32_matmul_precision()},
                ok=record["weights_dtype"] == str(dtype)[6:] and record["matmul"] == EXPECTED_MATMUL[where, mode]
                and set(buffers.values()) <= {"float32"},
                shown=f"weights {record['weights_dtype']}, {record['matmul']} matmuls, rotary buffers "
                      f"{'/'.join(sorted(set(buffers.values())))}, float32 matmul probe {probe['ran']} "
                      f"({probe['relative_error']:.1e})")
            step.check(f"{name} {mode}, reverse mode",
                       relative(attribute_ids(m, ids, 25, 16, 0), ref), MODE_BOUNDS[mode])
            step.check(f"{name} {mode}, forward mode",
                       relative(attribute_ids_forward(m, ids, 25), ref), MODE_BOUNDS[mode])
        set_matmul_precision("float32")


def generation(step: Step, name: str, model, where: str) -> None:
    """The job's batched greedy responses (prompts of different lengths padded on the left, one `generate`
    call) against one prompt at a time, in float32: padding only reorders the arithmetic, so all but a
    rounding-level flip of a near-tie must agree."""
    import torch

    from workflow_scripts.attribution_tokens import greedy_continuation, left_padded

    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 300, (n,), generator=generator) for n in (5, 9, 14, 20, 31)]
    solo = torch.cat([greedy_continuation(model, p[None].to(where), 12, 0, 12) for p in prompts])
    ids, mask = left_padded(prompts, 0)
    batched = greedy_continuation(model, ids.to(where), 12, 0, 12, mask.to(where))
    equal = float((solo == batched).float().mean())
    step.check(f"{name} greedy responses, 5 prompts padded on the left in one call", equal, ok=equal >= 0.95,
               shown=f"{equal:.1%} of the new tokens equal to one prompt at a time (at least 95%)")


def split(step: Step) -> None:
    """Step 1b: a model that ends on another device than it starts (as device_map="auto" spreads a 7B
    model over two GPUs): body on the GPU, final norm and head run on the CPU through accelerate hooks,
    so the last hidden state is not where the input embeddings are; both autodiff modes against the
    plain model, float32 matmuls in IEEE float32."""
    import copy

    import torch
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module
    from transformers import LlamaConfig, LlamaForCausalLM

    from workflow_scripts.attribution import attribute_ids, attribute_ids_forward, attribute_ids_reference

    torch.set_float32_matmul_precision("highest")
    where = device()
    torch.manual_seed(0)
    plain = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval().requires_grad_(False)
    ids = torch.randint(3, 300, (40,))
    ref = attribute_ids_reference(plain, ids, 25)
    model = copy.deepcopy(plain).to(where)
    for module in (model.model.norm, model.lm_head):
        module.to("cpu")
        add_hook_to_module(module, AlignDevicesHook(execution_device="cpu", io_same_device=False))
    ids = ids.to(where)
    hidden = model.model(input_ids=ids[None]).last_hidden_state
    devices = {"embeddings": str(model.model.embed_tokens.weight.device), "last_hidden_state": str(hidden.device),
               "float32_matmul_precision": torch.get_float32_matmul_precision()}
    step.check("split model: devices", devices, ok=True,
               shown=f"embeddings on {devices['embeddings']}, last hidden state on {devices['last_hidden_state']}")
    step.check("split model, reverse mode", relative(attribute_ids(model, ids, 25, 16, 0), ref), EXACT)
    step.check("split model, forward mode", relative(attribute_ids_forward(model, ids, 25), ref), EXACT)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["equality", "split", "status"])
    parser.add_argument("--json", required=True, type=Path, help="the steps' JSON file (created or updated)")
    parser.add_argument("--step", help="status: the step's name")
    parser.add_argument("--exit-status", type=int, help="status: the step's exit status as the shell saw it")
    args = parser.parse_args(argv)
    if args.command == "status":  # also a step killed (timeout) or crashed before it could record its failure
        data = json.loads(args.json.read_text()) if args.json.exists() else {"steps": {}}
        entry, failed = data["steps"].get(args.step, {}), args.exit_status != 0
        record = {"exit_status": args.exit_status, "passed": entry.get("passed") is not False and not failed}
        if failed and entry.get("passed") is not False and not entry.get("error"):  # not its own record
            record["error"] = f"exit status {args.exit_status}" + (" (timed out)" if args.exit_status == 124 else "")
        update(args.json, args.step, record)
        return 0
    name = {"equality": "1 equality", "split": "1b split model"}[args.command]
    step = Step(args.json, name)
    try:
        {"equality": equality, "split": split}[args.command](step)
    except Exception as error:
        traceback.print_exc()
        return step.finish(f"{type(error).__name__}: {error}"[:1000], traceback.format_exc()[-2000:])
    return step.finish()


if __name__ == "__main__":
    sys.exit(main())
