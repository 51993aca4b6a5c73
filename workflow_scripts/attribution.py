"""Input-output attribution: gradient x input of every prompt token for every response token.

docs/design.md#attribution. For response token j at position t_j, the objective is its softmax probability
p(y_j | y_<j, x); the attribution of prompt token i is grad_{e_i}(objective_j) . e_i. The model
is frozen (only the input embeddings need gradients), one forward pass serves a chunk of
response tokens, the output head's part of their gradients is taken in one pass, and only the
transformer body is traversed once per response token, or for several response tokens in one
batched backward (`backward_batch`). The result equals one full forward and backward per token
(`attribute_ids_reference`) to float precision.

Two ways to the same matrix (`AUTODIFF`, docs/design.md#forward-mode): reverse mode traverses the
body backward once per response token; forward mode pushes one tangent per prompt token (that
token's own embedding at its position) through the body, batched with `torch.func.vmap` over one
shared forward pass, and meets the head's gradients at the end. A forward tangent along e_i gives
sum_k d p_j / d e_ik * e_ik for every j at once: row i of the matrix. The paper's prompts are short
next to their responses (median 31 tokens against 240-299), so forward mode needs far fewer passes;
`auto` picks, per sample, the one with less work (`choose_autodiff`).

Precision modes (`attribution_model`, docs/design.md#precision-modes): float32 is the paper's (its loop runs
`.float()`); tf32 keeps float32 weights and lets CUDA run float32 matmuls in TF32; bfloat16 and
float16 run the weights and activations in that half dtype while the objectives (output head and
softmax) and the gradient x input sums are computed in float32. float16 keeps 3 more bits than
bfloat16 but ends at 65504: the backward passes start from cotangents scaled by a power of two
(`unit_scale`, exact), and a matrix that still overflowed is an error, never a table entry.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .attribution_batches import MemoryShare, batch_size, in_batches, is_out_of_memory
from .attribution_model import PRECISIONS, load_model, precision_record
from .attribution_tokens import Tokenized, check_fits, generate_responses, tokenize_pair
from .cli import non_negative_int, positive_int
from .dataset import read_dataset, shard_samples
from .devices import ieee_float32, input_device
from .progress import progress
from .shards import SampleAttribution, Shard, save_shard

log = logging.getLogger(__name__)

AUTODIFF = ("auto", "reverse", "forward")
# What a position costs a forward-mode tangent against a reverse-mode pass (JVPs of the norms, activations and
# attention on top of the same matrix products), per device type: 1.29-1.35 on SmolLM2-135M on a CPU at four
# prompt x response shapes; 0.94-1.03 on an H200 at the LLaMA-7B shape in all four precision modes, where the
# matrix products dominate (docs/benchmarks.md, forward vs reverse mode; bench/gpu_bench.py prints it for the GPU
# it runs on). A device type not listed gets the CPU's weight.
FORWARD_POSITION_COST = {"cpu": 1.3, "cuda": 1.0}
FORWARD_BATCH_CPU = 16  # tangents per forward pass on a CPU (SmolLM2: 16-23 were 1.2x faster than 8)


def _objectives(model, embeddings: torch.Tensor, input_ids: torch.Tensor, n_prompt: int) -> torch.Tensor:
    """Probability of each response token at its position (teacher forcing), through the full model."""
    logits = model(inputs_embeds=embeddings.unsqueeze(0)).logits[0]
    probs = torch.softmax(logits[n_prompt - 1 : -1].float(), dim=-1)
    return probs.gather(1, input_ids[n_prompt:, None]).squeeze(1)


def _embed(model, input_ids: torch.Tensor) -> torch.Tensor:
    return model.get_input_embeddings()(input_ids).detach().requires_grad_(True)


def _head_cotangents(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d p(y_j) / d h_j for every response position at once, through the output head only, in float32.

    Objective j depends on the final hidden state of its own position alone, so one backward
    of the summed objectives through the head gives every row exactly; the transformer body is
    then traversed once per objective instead of once per objective *and* through the head.
    The head runs in float32 whatever the weights' dtype (a no-op for float32 weights), so that the
    objectives are float32 probabilities: bf16 logits keep 2-3 significant digits (on SmolLM2, one
    sample's largest difference to float32 went from 0.16 to 0.11 of its largest value with this).
    Its products are IEEE float32 in tf32 mode too (`ieee_float32`).
    The head's weight is read outside a forward call, so a head that `device_map="auto"` offloaded
    (its weight on the meta device between calls) is loaded for it by its accelerate hook.
    """
    from accelerate.utils import align_module_device

    head = model.get_output_embeddings()
    with align_module_device(head), ieee_float32():
        h = hidden.detach().to(head.weight.device).float().requires_grad_(True)  # one device, model spread or not
        bias = None if head.bias is None else head.bias.float()
        probs = torch.softmax(torch.nn.functional.linear(h, head.weight.float(), bias), dim=-1)
        (grad,) = torch.autograd.grad(probs.gather(1, targets.to(h.device)[:, None]).sum(), h)
    return grad.to(hidden.device)


def unit_scale(cotangents: torch.Tensor) -> torch.Tensor:
    """A power of two per row that brings the row's largest magnitude into [0.5, 1), as a column.

    A cotangent d p_j / d h_j is as small as p_j(1 - p_j), below float16's normal range for an
    unlikely token, and would underflow on its way through the body; the backward pass is linear
    in its cotangent and a power of two scales without rounding, so scaling before and dividing
    after changes no float32 or bfloat16 bit (those share float32's exponent range)."""
    largest = cotangents.abs().amax(dim=-1, keepdim=True)
    _, exponent = torch.frexp(torch.where(largest > 0, largest, torch.full_like(largest, 0.5)))  # 0: scale 1
    return torch.ldexp(torch.ones_like(largest), -exponent)


def _body_gradients(hidden: torch.Tensor, prefix: torch.Tensor, positions: torch.Tensor, cotangents: torch.Tensor,
                    batch: int, memory: MemoryShare):
    """d objective_k / d prefix for each k in order, `batch` objectives per backward pass (stacked
    cotangents through `is_grads_batched`), yielded as (batch, T, d) tensors; an out-of-memory error
    halves the batch, down to one at a time (the per-token path)."""

    def backward(k: int, size: int) -> torch.Tensor:
        if size == 1:
            # slices, not positions[k]: a 0-d CUDA index is read back to the host, a sync per token
            (grad,) = torch.autograd.grad(hidden[positions[k : k + 1]], prefix, cotangents[k : k + 1],
                                          retain_graph=True)
            return grad[None]
        stacked = hidden.new_zeros((size, *hidden.shape))
        stacked[torch.arange(size, device=hidden.device), positions[k : k + size]] = cotangents[k : k + size]
        (grad,) = torch.autograd.grad(hidden, prefix, stacked, retain_graph=True, is_grads_batched=True)
        return grad

    yield from in_batches(len(positions), batch, backward, "backward of {} response tokens", memory)


def attribute_ids(
    model, input_ids: torch.Tensor, n_prompt: int, chunk_size: int = 32, backward_batch: int = 0,
    memory: MemoryShare | None = None,
) -> np.ndarray:
    """(n_prompt x m) gradient x input matrix (docs/design.md#attribution).

    Response tokens go in chunks of `chunk_size` (0: all at once). Each chunk runs one forward
    pass over the prefix it needs (the model is causal, so the sequence is cut after the chunk's
    last predicting position), then body-only backward passes, `backward_batch` response tokens
    per pass (0: chosen from `memory`'s share of the free GPU memory, the job's or this call's own;
    1 on a CPU). The saving is in FLOPs: no output head and no weight gradients in the backward
    passes, shorter sequences for the early tokens; a batched pass turns a token's
    matrix-vector-like products into fuller matrix products.
    The gradient x input products are summed in float32 whatever the weights' dtype.
    """
    m = input_ids.numel() - n_prompt
    if m <= 0:
        return np.zeros((n_prompt, 0), dtype=np.float32)
    chunk_size = chunk_size or m
    memory = memory or MemoryShare()
    prompt_embeddings = model.get_input_embeddings()(input_ids[:n_prompt]).detach().float()
    columns = []
    for start in range(0, m, chunk_size):
        stop = min(start + chunk_size, m)
        prefix = _embed(model, input_ids[: n_prompt + stop - 1])
        hidden = model.base_model(inputs_embeds=prefix.unsqueeze(0)).last_hidden_state[0]
        positions = torch.arange(n_prompt - 1 + start, n_prompt - 1 + stop, device=hidden.device)
        cotangents = _head_cotangents(model, hidden[positions], input_ids[n_prompt + start : n_prompt + stop])
        scale = unit_scale(cotangents)
        unscale = scale.to(prompt_embeddings.device)  # the gradients are where the embeddings are, not the last layer
        batch = batch_size(model, prefix.shape[0], len(positions), backward_batch, 1, memory)
        done = 0
        for grads in _body_gradients(hidden, prefix, positions, (cotangents * scale).to(hidden.dtype), batch, memory):
            products = (grads[:, :n_prompt].float() * prompt_embeddings).sum(-1)
            columns.append((products / unscale[done : done + len(grads)]).T)
            done += len(grads)
        del hidden  # frees the retained graph before the next chunk's forward
    return torch.cat(columns, dim=1).cpu().numpy().astype(np.float32)


def reverse_positions(n_prompt: int, m: int, chunk_size: int = 32) -> int:
    """Positions reverse mode runs through the body (`attribute_ids`): per chunk of response tokens, one
    forward pass and one backward pass per token, each over the chunk's whole prefix (a backward from
    one position still runs every layer over every position of the graph, most of them zero)."""
    chunk_size = chunk_size or m
    return sum((min(start + chunk_size, m) - start + 1) * (n_prompt + min(start + chunk_size, m) - 1)
               for start in range(0, m, chunk_size))


def forward_positions(rows: int, n_prompt: int, m: int) -> int:
    """Positions forward mode runs through the body (`attribute_ids_forward`): the primal pass and one
    tangent per row, each over the whole sequence but its last token."""
    return (rows + 1) * (n_prompt + m - 1)


def forward_position_cost(forward_seconds: float, reverse_seconds: float, rows: int, n_prompt: int, m: int,
                          chunk_size: int = 32) -> float:
    """What a forward-mode position cost against a reverse-mode one in a timed pair of runs: what
    `FORWARD_POSITION_COST` stands for (the benchmarks measure it with this)."""
    return (forward_seconds / forward_positions(rows, n_prompt, m)) / (
        reverse_seconds / reverse_positions(n_prompt, m, chunk_size))


def autodiff_summary(samples: dict) -> str:
    """`{"forward": 14, "reverse": 2}` -> "forward 14, reverse 2" (a shard header's `autodiff_samples`)."""
    return ", ".join(f"{mode} {count}" for mode, count in samples.items()) or "no sample"


def check_autodiff(autodiff: str) -> None:
    if autodiff not in AUTODIFF:
        raise ValueError(f"unknown autodiff {autodiff!r} (known: {', '.join(AUTODIFF)})")


def forward_position_weight(device_type: str) -> float:
    return FORWARD_POSITION_COST.get(device_type, FORWARD_POSITION_COST["cpu"])


def choose_autodiff(autodiff: str, rows: int, n_prompt: int, m: int, chunk_size: int = 32,
                    device_type: str = "cpu") -> str:
    """`auto`: the mode with less work, counted as positions run through the body, a forward-mode
    position weighing `FORWARD_POSITION_COST` reverse-mode ones on the device type the body runs on
    (docs/benchmarks.md, forward vs reverse mode). Speed only: both modes give the same matrix, to the
    precision mode's rounding."""
    check_autodiff(autodiff)
    if autodiff != "auto":
        return autodiff
    weighed = forward_position_weight(device_type) * forward_positions(rows, n_prompt, m)
    return "forward" if weighed < reverse_positions(n_prompt, m, chunk_size) else "reverse"


def attribute_ids_forward(model, input_ids: torch.Tensor, n_prompt: int, rows=None, batch: int = 0,
                          memory: MemoryShare | None = None) -> np.ndarray:
    """Rows `rows` (default: every prompt position) of the gradient x input matrix, by forward mode.

    The tangent of prompt row i is its own embedding at position i (zero elsewhere), so the body's
    Jacobian-vector product is sum_k d h_j / d e_ik * e_ik at every response position j; contracted with
    the head's gradient d p_j / d h_j (float32, `_head_cotangents`) it is the attribution of row i to
    response token j. `torch.func.vmap` runs `batch` tangents over one shared primal pass (0: from the
    free GPU memory; `FORWARD_BATCH_CPU` on a CPU); attention runs through SDPA's math kernel, the one
    with forward-mode derivatives. An out-of-memory error halves the batch, down to one tangent, and
    `memory`'s share (the job's, or this call's own)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    m = input_ids.numel() - n_prompt
    rows = torch.arange(n_prompt) if rows is None else torch.as_tensor(rows, dtype=torch.long)
    if m <= 0 or len(rows) == 0:
        return np.zeros((len(rows), max(m, 0)), dtype=np.float32)
    embeddings = model.get_input_embeddings()(input_ids[:-1]).detach()  # the last token predicts nothing
    rows = rows.to(embeddings.device)

    def body(x):
        return model.base_model(inputs_embeds=x[None], use_cache=False).last_hidden_state[0, n_prompt - 1 :]

    def tangent_out(tangent):
        return torch.func.jvp(body, (embeddings,), (tangent,))[1]

    with torch.no_grad():
        hidden = body(embeddings)
    cotangents = _head_cotangents(model, hidden, input_ids[n_prompt:])

    def forward(k: int, size: int) -> torch.Tensor:
        tangents = embeddings.new_zeros((size, *embeddings.shape))
        tangents[torch.arange(size, device=rows.device), rows[k : k + size]] = embeddings[rows[k : k + size]]
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            dh = torch.func.vmap(tangent_out)(tangents)
        return (dh.float() * cotangents).sum(-1)

    memory = memory or MemoryShare()
    batch = batch_size(model, embeddings.shape[0], len(rows), batch, FORWARD_BATCH_CPU, memory,
                       float32_attention=True)  # the math kernel below
    out = list(in_batches(len(rows), batch, forward, "forward pass of {} tangents", memory))
    return torch.cat(out).cpu().numpy().astype(np.float32)


@dataclass
class Attributor:
    """One job's way to its matrices: the autodiff mode (`auto` decides per sample) and batch sizes,
    and what each sample actually ran, for the shard header. Under `auto`, forward mode falls back to
    reverse mode, with a warning and a count in the header: for good on a model it cannot run (an
    operation without a forward derivative), and for a sample it cannot fit one tangent at a time
    (forward attention runs on SDPA's math kernel, whose score matrices reverse mode's kernels never
    hold). An explicit `forward` raises instead."""

    model: object
    chunk_size: int = 32
    backward_batch: int = 0
    autodiff: str = "auto"
    forward_batch: int = 0
    used: dict = field(default_factory=dict)
    forward_failed: str = ""
    forward_out_of_memory: int = 0
    forward_too_long: int = 0  # the shortest sequence forward mode could not fit (0: none): longer ones skip it
    # each mode's share of the free GPU memory for its automatic batches (MemoryShare): kept for the job
    memory: dict = field(default_factory=lambda: {"forward": MemoryShare(), "reverse": MemoryShare()})

    def __post_init__(self):
        check_autodiff(self.autodiff)  # before any sample

    def matrix(self, input_ids: torch.Tensor, n_prompt: int, rows: np.ndarray) -> np.ndarray:
        mode = self._mode(input_ids.numel(), n_prompt, len(rows))
        out = self._forward(input_ids, n_prompt, rows) if mode == "forward" else None
        if out is None:
            mode = "reverse"
            out = attribute_ids(self.model, input_ids, n_prompt, self.chunk_size, self.backward_batch,
                                self.memory["reverse"])[rows]
        self.used[mode] = self.used.get(mode, 0) + 1
        return out

    def _mode(self, length: int, n_prompt: int, rows: int) -> str:
        """The mode a sample tries first: reverse mode once forward mode failed on this model, and for a
        sequence as long as one forward mode could not fit (a tangent's memory grows with the sequence)."""
        if self.forward_failed:
            return "reverse"
        mode = choose_autodiff(self.autodiff, rows, n_prompt, length - n_prompt, self.chunk_size,
                               input_device(self.model).type)
        if mode == "forward" and self.autodiff == "auto" and 0 < self.forward_too_long <= length:
            self.forward_out_of_memory += 1
            return "reverse"
        return mode

    def _forward(self, input_ids: torch.Tensor, n_prompt: int, rows: np.ndarray) -> np.ndarray | None:
        """The sample's matrix in forward mode, or None where `auto` falls back to reverse mode."""
        share = self.memory["forward"].value
        try:
            return attribute_ids_forward(self.model, input_ids, n_prompt, rows, self.forward_batch,
                                         self.memory["forward"])
        except (NotImplementedError, RuntimeError) as error:
            if self.autodiff == "forward":
                raise RuntimeError(f"forward-mode attribution failed ({error}); `attribution.autodiff: "
                                   "reverse` runs this model in reverse mode") from error
            out_of_memory = is_out_of_memory(error)
            if out_of_memory:
                self.forward_out_of_memory += 1
                # the sample was too long for forward mode, not the memory estimate too high: the shorter
                # samples after it keep their batches
                self.memory["forward"].value = share
                self.forward_too_long = input_ids.numel()  # shorter than any before: they skip forward mode
                log.warning("forward mode ran out of memory on a sample of %d prompt and %d response tokens: "
                            "that sample, and any as long, in reverse mode", n_prompt, input_ids.numel() - n_prompt)
            else:
                self.forward_failed = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                log.warning("forward mode failed on this model (%s): reverse mode from now on", self.forward_failed)
        if out_of_memory:
            torch.cuda.empty_cache()  # out of the except block: the failed pass's tensors are gone
        return None

    def record(self) -> dict:
        """What the shard header says: the mode asked for, the samples per mode it ran."""
        record = {"autodiff": self.autodiff, "autodiff_samples": dict(sorted(self.used.items()))}
        if self.forward_failed:
            record["forward_failed"] = self.forward_failed
        if self.forward_out_of_memory:
            record["forward_out_of_memory"] = self.forward_out_of_memory
        return record


def attribute_ids_reference(model, input_ids: torch.Tensor, n_prompt: int) -> np.ndarray:
    """The straightforward definition: a fresh forward and one backward per response token."""
    m = input_ids.numel() - n_prompt
    matrix = np.zeros((n_prompt, m), dtype=np.float32)
    for j in range(m):
        embeddings = _embed(model, input_ids)
        objective = _objectives(model, embeddings, input_ids, n_prompt)[j]
        (grad,) = torch.autograd.grad(objective, embeddings)
        matrix[:, j] = (grad[:n_prompt] * embeddings[:n_prompt].detach()).sum(-1).float().cpu().numpy()
    return matrix


def attribute_sample(attributor: Attributor, tokenizer, sample_id: str, prompt: str, tokens: Tokenized
                     ) -> SampleAttribution:
    ids = tokens.input_ids.to(input_device(attributor.model))
    matrix = attributor.matrix(ids, tokens.n_prompt, tokens.prompt_rows)
    if not np.isfinite(matrix).all():
        dtype = str(attributor.model.dtype).removeprefix("torch.")
        raise FloatingPointError(
            f"sample {sample_id}: its gradient x input matrix holds inf or nan ({dtype} arithmetic)"
            + ("; float16 ends at 65504: `precision: bfloat16` (float32's range) or float32 runs this model"
               if dtype == "float16" else ""))
    all_tokens = tokenizer.convert_ids_to_tokens(tokens.input_ids.tolist())
    return SampleAttribution(
        id=sample_id,
        prompt=prompt,
        response=tokens.response_text,
        prompt_tokens=[all_tokens[i] for i in tokens.prompt_rows],
        prompt_offsets=tokens.prompt_offsets,
        response_tokens=all_tokens[tokens.n_prompt :],
        response_offsets=tokens.response_offsets,
        matrix=matrix,
    )


def attribute_shard(
    model_dir: str, dataset: str, shard: int, shard_size: int, output: str, model_id: str,
    response: str = "reference", max_new_tokens: int = 300, precision: str = "float32",
    chunk_size: int = 32, backward_batch: int = 0, autodiff: str = "auto", generate_batch: int = 16,
) -> Shard:
    samples = shard_samples(read_dataset(dataset), shard_size)
    if not 0 <= shard < len(samples):
        raise ValueError(f"{dataset}: shard {shard} does not exist ({len(samples)} shards of {shard_size})")
    started = time.perf_counter()
    model, tokenizer = load_model(model_dir, precision)
    arithmetic = precision_record(model, precision)
    log.info("loaded %s (%s) in %.1f s on %s: %s", model_id, model_dir, time.perf_counter() - started,
             input_device(model), arithmetic)
    check_fits(model, tokenizer, samples[shard], response, max_new_tokens, dataset)
    attributor = Attributor(model, chunk_size, backward_batch, autodiff)
    generation = {}
    if response == "generate":
        pairs = generate_responses(model, tokenizer, [s.prompt for s in samples[shard]], max_new_tokens,
                                   generate_batch, f"generate {model_id} shard {shard}")
        generation = {"generate_batch": generate_batch}
    else:
        pairs = [tokenize_pair(tokenizer, s.prompt, s.response) for s in samples[shard]]
    results = [attribute_sample(attributor, tokenizer, sample.id, sample.prompt, tokens)
               for sample, tokens in progress(list(zip(samples[shard], pairs)), f"attribute {model_id} shard {shard}",
                                              "sample")]
    out = Shard(results, {"model": model_id, "source": f"computed:{response}", "binned_levels": 0,
                          "device": str(input_device(model)), **arithmetic, **generation, **attributor.record()})
    save_shard(out, output)
    log.info("attributed %d samples in %.1f s -> %s", len(results), time.perf_counter() - started, output)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description="Gradient x input attribution of one shard of samples.")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument("--shard-size", type=int, required=True)
    parser.add_argument("--response", choices=("reference", "generate"), required=True,
                        help="generate: the model's own greedy response (the paper's); reference: the dataset's")
    parser.add_argument("--max-new-tokens", type=int, default=300)
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="float32")
    parser.add_argument("--chunk-size", type=int, default=32, help="response tokens per forward pass; 0: all")
    parser.add_argument("--backward-batch", type=non_negative_int, default=0,
                        help="response tokens per body backward pass; 0: from the free GPU memory (1 on a CPU)")
    parser.add_argument("--autodiff", choices=AUTODIFF, default="auto",
                        help="reverse: a backward pass per response token; forward: a tangent per prompt token; "
                             "auto: per sample, the one with less work")
    parser.add_argument("--generate-batch", type=positive_int, default=16,
                        help="prompts per generate call under --response generate (an out-of-memory error halves it)")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    attribute_shard(
        args.model_dir, args.dataset, args.shard, args.shard_size, args.output, args.model_id,
        args.response, args.max_new_tokens, args.precision, args.chunk_size, args.backward_batch, args.autodiff,
        args.generate_batch,
    )


if __name__ == "__main__":
    main()
