"""The attribution shard format: a NumPy `.npz` archive with no pickled objects.

Ragged per-sample data are stored flat with per-sample lengths, strings as fixed-width unicode
arrays, and a JSON header; `load_shard` opens the file with `allow_pickle=False`, so a shard
from anywhere is safe to read. The same format holds one shard and a merged model file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_file

FORMAT = "shiftlens-attribution/1"


@dataclass
class SampleAttribution:
    id: str
    prompt: str
    response: str
    prompt_tokens: list[str]
    prompt_offsets: np.ndarray  # (n, 2) character [start, end) in `prompt`
    response_tokens: list[str]
    response_offsets: np.ndarray  # (m, 2) character [start, end) in `response`
    matrix: np.ndarray  # (n, m) float32: prompt token i -> response token j


@dataclass
class Shard:
    samples: list[SampleAttribution]
    meta: dict = field(default_factory=dict)  # model, source, binned_levels (0 = raw); device, precision


def _strings(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=np.str_) if values else np.zeros(0, dtype="<U1")


def save_shard(shard: Shard, path: str | Path) -> None:
    """Write atomically (temp file + rename), so a crash never leaves a half-written shard."""
    s = shard.samples
    arrays = {
        "header": np.array(json.dumps({"format": FORMAT, **shard.meta})),
        "ids": _strings([x.id for x in s]),
        "prompts": _strings([x.prompt for x in s]),
        "responses": _strings([x.response for x in s]),
        "prompt_lengths": np.array([len(x.prompt_tokens) for x in s], dtype=np.int64),
        "response_lengths": np.array([len(x.response_tokens) for x in s], dtype=np.int64),
        "prompt_tokens": _strings([t for x in s for t in x.prompt_tokens]),
        "response_tokens": _strings([t for x in s for t in x.response_tokens]),
        "prompt_offsets": np.concatenate([np.asarray(x.prompt_offsets, np.int64).reshape(-1, 2) for x in s])
        if s else np.zeros((0, 2), np.int64),
        "response_offsets": np.concatenate([np.asarray(x.response_offsets, np.int64).reshape(-1, 2) for x in s])
        if s else np.zeros((0, 2), np.int64),
        "matrices": np.concatenate([np.asarray(x.matrix, np.float32).ravel() for x in s])
        if s else np.zeros(0, np.float32),
    }
    for x in s:
        if np.shape(x.matrix) != (len(x.prompt_tokens), len(x.response_tokens)):
            raise ValueError(
                f"sample {x.id}: matrix shape {np.shape(x.matrix)} does not match "
                f"{len(x.prompt_tokens)} prompt x {len(x.response_tokens)} response tokens"
            )
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:  # a handle: savez would add ".npz"
        np.savez_compressed(handle, **arrays)


class CorruptShardError(ValueError):
    """A shard file that cannot be read (truncated, damaged, or not a shard); names the file."""


ARRAYS = ("ids", "prompts", "responses", "prompt_lengths", "response_lengths", "prompt_tokens", "response_tokens",
          "prompt_offsets", "response_offsets", "matrices")


def _check_arrays(a: dict) -> None:
    """The arrays a shard is read from fit together: else a sample would be sliced short, unseen."""
    for name in ARRAYS:
        if name not in a:
            raise ValueError(f"no array {name!r}")
    samples = len(a["prompt_lengths"])
    for name in ("ids", "prompts", "responses", "response_lengths"):
        if len(a[name]) != samples:
            raise ValueError(f"{len(a[name])} {name} for {samples} samples")
    n, m = a["prompt_lengths"].astype(np.int64), a["response_lengths"].astype(np.int64)
    for part, lengths in (("prompt", n), ("response", m)):
        for name in (f"{part}_tokens", f"{part}_offsets"):
            if len(a[name]) != lengths.sum():
                raise ValueError(f"{len(a[name])} {part} {name.split('_')[1]}, the lengths say {lengths.sum()}")
    if a["matrices"].size != (n * m).sum():
        raise ValueError(f"the matrices hold {a['matrices'].size} values, the lengths say {(n * m).sum()}")


def load_shard(path: str | Path, discard_corrupt: bool = False) -> Shard:
    """Read a shard. With `discard_corrupt`, an unreadable file is deleted before the error is
    raised, so that it is recomputed instead of failed on again; the error says how."""
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            if header.pop("format", None) != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            a = {k: data[k] for k in data.files}
        _check_arrays(a)
    except FileNotFoundError as error:
        raise ValueError(f"{path}: cannot read attribution shard: {error}") from error
    except Exception as error:  # zipfile, zlib, numpy and json all raise their own kinds
        message = f"{path}: cannot read attribution shard ({type(error).__name__}: {error})"
        if discard_corrupt:
            Path(path).unlink(missing_ok=True)
            message += ("; deleted it: run the same snakemake command with `--forcerun merge_attributions` added to "
                        "compute it again (a plain rerun may plan nothing: Snakemake rebuilds a missing file only for "
                        "a job that has to run; the merges take seconds, and only what was deleted is recomputed)")
        raise CorruptShardError(message) from error
    samples, p0, r0, m0 = [], 0, 0, 0
    for i, sample_id in enumerate(a["ids"]):
        n, m = int(a["prompt_lengths"][i]), int(a["response_lengths"][i])
        samples.append(
            SampleAttribution(
                id=str(sample_id),
                prompt=str(a["prompts"][i]),
                response=str(a["responses"][i]),
                prompt_tokens=[str(t) for t in a["prompt_tokens"][p0 : p0 + n]],
                prompt_offsets=a["prompt_offsets"][p0 : p0 + n],
                response_tokens=[str(t) for t in a["response_tokens"][r0 : r0 + m]],
                response_offsets=a["response_offsets"][r0 : r0 + m],
                matrix=a["matrices"][m0 : m0 + n * m].reshape(n, m),
            )
        )
        p0, r0, m0 = p0 + n, r0 + m, m0 + n * m
    return Shard(samples, header)


def load_header(path: str | Path) -> dict:
    """Only the JSON header (model, source, binned_levels; device and precision where recorded),
    without reading the matrices: what the report's provenance needs of a large file."""
    with np.load(path, allow_pickle=False) as data:
        header = json.loads(str(data["header"]))
    if header.pop("format", None) != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    return header


# Where and by which route a shard ran, not what it computed (to float precision): shards that differ
# here merge, and the merged header says all of them. `matmul` is how the shard's device ran the mode's
# matmuls (TF32 and half-precision reductions are CUDA switches): `models.<id>.gpus` places jobs and reruns
# none, so shards of one mode from two devices sit side by side, and the mode (precision, dtypes) must agree.
# `generate_batch` (prompts per `generate` call) is a speed key too: a shard made after a change merges.
PLACEMENT = ("device", "matmul", "autodiff", "autodiff_samples", "forward_failed", "forward_out_of_memory",
             "generate_batch")


def arithmetic(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in PLACEMENT}


def merged_placement(metas: list[dict]) -> dict:
    """Devices, their matmuls, autodiff modes asked for, failures and generation batch sizes joined; samples
    per autodiff mode, and those forward mode could not fit, summed."""
    out: dict = {}
    for key, joint in (("device", ", "), ("matmul", " and "), ("autodiff", ", "), ("forward_failed", ", ")):
        values = sorted({m[key] for m in metas if key in m})
        if values:
            out[key] = joint.join(values)
    if batches := sorted({m["generate_batch"] for m in metas if "generate_batch" in m}):
        out["generate_batch"] = ", ".join(map(str, batches))
    counts: dict[str, int] = {}
    for m in metas:
        for mode, count in m.get("autodiff_samples", {}).items():
            counts[mode] = counts.get(mode, 0) + count
    if counts:
        out["autodiff_samples"] = dict(sorted(counts.items()))
    if out_of_memory := sum(m.get("forward_out_of_memory", 0) for m in metas):
        out["forward_out_of_memory"] = out_of_memory
    return out


def merge_shards(paths: list[str | Path], output: str | Path) -> Shard:
    """Concatenate shards of one model; the same sample id twice is an error, not a silent overwrite."""
    shards = [load_shard(p, discard_corrupt=True) for p in paths]
    seen: dict[str, str] = {}
    for path, shard in zip(paths, shards):
        for sample in shard.samples:
            if sample.id in seen:
                raise ValueError(f"sample {sample.id} is in both {seen[sample.id]} and {path}")
            seen[sample.id] = str(path)
    meta = dict(shards[0].meta) if shards else {}
    for path, shard in zip(paths[1:], shards[1:]):  # a table over mixed arithmetic would say only the first's
        if arithmetic(shard.meta) != arithmetic(meta):
            raise ValueError(f"{path} was made with {shard.meta}, {paths[0]} with {meta}: rerun the older shards")
    meta.update(merged_placement([s.meta for s in shards]))
    merged = Shard([x for s in shards for x in s.samples], meta)
    save_shard(merged, output)
    return merged


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="Attribution shard files.")
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="concatenate shards of one model")
    merge.add_argument("output")
    merge.add_argument("inputs", nargs="+")
    args = parser.parse_args(argv)
    merged = merge_shards(args.inputs, args.output)
    print(f"merged {len(args.inputs)} files, {len(merged.samples)} samples -> {args.output}")


if __name__ == "__main__":
    main()
