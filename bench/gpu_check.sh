#!/usr/bin/env bash
# One short GPU check (a few minutes on an H100): equality of the batched GPU attribution with the
# per-token definition on tiny models, then bench/gpu_bench.py (LLaMA-7B shape: attribution vs the
# per-token loop, one attention and one FFN layer job). Arguments go to gpu_bench.py, e.g.
#   bash bench/gpu_check.sh --output gpu_bench.json
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
# 1. equality on tiny LLaMA/Mistral GQA models, every chunk size, on the GPU
python - <<'PY'
import numpy as np, torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
from workflow_scripts.attribution import attribute_ids, attribute_ids_reference
for cfg_cls, cls in ((LlamaConfig, LlamaForCausalLM), (MistralConfig, MistralForCausalLM)):
    torch.manual_seed(0)
    cfg = cfg_cls(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
    m = cls(cfg).cuda().eval().requires_grad_(False)
    ids = torch.randint(3, 300, (40,), device="cuda")
    ref = attribute_ids_reference(m, ids, 25)
    for chunk in (0, 1, 4, 16):
        fast = attribute_ids(m, ids, 25, chunk)
        err = np.abs(fast - ref).max() / np.abs(ref).max()
        print(f"{cls.__name__} chunk={chunk}: max relative difference {err:.2e}")
        assert err < 1e-4
PY
# 2. the LLaMA-7B-shaped benchmark (random weights built on the GPU)
python bench/gpu_bench.py "$@"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
