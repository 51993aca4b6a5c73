#!/usr/bin/env bash
# One short GPU check (about 5 minutes on an H100): equality of the GPU attribution (chunked, batched
# backward passes, forward mode; a model whose last layers run on another device) with the per-token
# definition on tiny models and the arithmetic each precision mode records, then bench/gpu_bench.py
# (LLaMA-7B shape: the per-token loop, every precision mode in reverse and forward mode, an attribution
# job's model load, one attention and one FFN layer job, the projected paper workflow). Give --output a path under the device's $OUT: it is rewritten
# after every measurement, so a run cut off by the time limit still returns what it measured.
# Arguments go to gpu_bench.py, e.g.
#   bash bench/gpu_check.sh --output gpu_bench.json
# Smoke test on a CPU (the same code paths, a tiny shape): GPU_CHECK_ALLOW_CPU=1 bash bench/gpu_check.sh --allow-cpu --small
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
           torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
# 1. equality on tiny LLaMA/Mistral GQA models, every chunk size, on the GPU
python - <<'PY'
import numpy as np, torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
import os
from workflow_scripts.attribution import (attribute_ids, attribute_ids_forward, attribute_ids_reference,
                                         precision_record, set_matmul_precision)
device = "cuda" if torch.cuda.is_available() or not os.environ.get("GPU_CHECK_ALLOW_CPU") else "cpu"
for cfg_cls, cls in ((LlamaConfig, LlamaForCausalLM), (MistralConfig, MistralForCausalLM)):
    torch.manual_seed(0)
    cfg = cfg_cls(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
    m = cls(cfg).to(device).eval().requires_grad_(False)
    ids = torch.randint(3, 300, (40,), device=device)
    set_matmul_precision("float32")
    ref = attribute_ids_reference(m, ids, 25)
    for chunk in (0, 1, 4, 16):
        for batch in (1, 3, 0):  # per token, forced batches, automatic from free memory
            fast = attribute_ids(m, ids, 25, chunk, batch)
            err = np.abs(fast - ref).max() / np.abs(ref).max()
            print(f"{cls.__name__} chunk={chunk} backward batch={batch}: max relative difference {err:.2e}")
            assert err < 1e-4
    for batch in (1, 3, 0):  # forward mode: one tangent per prompt token, forced batches, automatic
        err = np.abs(attribute_ids_forward(m, ids, 25, None, batch) - ref).max() / np.abs(ref).max()
        print(f"{cls.__name__} forward mode batch={batch}: max relative difference {err:.2e}")
        assert err < 1e-4
    weights = {name: tensor.clone() for name, tensor in m.state_dict().items()}
    for mode, dtype, matmul, bound in (("tf32", torch.float32, "tf32", 1e-2), ("float16", torch.float16, "float16",
                                       2e-2), ("bfloat16", torch.bfloat16, "bfloat16", 1e-1)):
        set_matmul_precision(mode)
        m.to(torch.float32).load_state_dict(weights)  # each mode rounds the float32 weights
        m.to(dtype)
        record = precision_record(m, mode)
        assert record["weights_dtype"] == str(dtype)[6:] and (device == "cpu" or record["matmul"] == matmul), record
        err = np.abs(attribute_ids(m, ids, 25, 16, 0) - ref).max() / np.abs(ref).max()
        forward = np.abs(attribute_ids_forward(m, ids, 25) - ref).max() / np.abs(ref).max()
        print(f"{cls.__name__} {mode}: {record['matmul']} matmuls, max relative difference {err:.2e}, "
              f"forward mode {forward:.2e}")
        assert err < bound and forward < bound
    set_matmul_precision("float32")
PY
# 1b. a model that ends on another device than it starts (as device_map="auto" spreads a 7B model over
# two GPUs): body on the GPU, final norm and head run on the CPU through accelerate hooks, so the last
# hidden state is not where the input embeddings are; both autodiff modes against the plain model
python - <<'PY'
import copy, os
import numpy as np, torch
from accelerate.hooks import AlignDevicesHook, add_hook_to_module
from transformers import LlamaConfig, LlamaForCausalLM
from workflow_scripts.attribution import attribute_ids, attribute_ids_forward, attribute_ids_reference
device = "cuda" if torch.cuda.is_available() or not os.environ.get("GPU_CHECK_ALLOW_CPU") else "cpu"
torch.manual_seed(0)
plain = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2)).eval().requires_grad_(False)
ids = torch.randint(3, 300, (40,))
ref = attribute_ids_reference(plain, ids, 25)
split = copy.deepcopy(plain).to(device)
for module in (split.model.norm, split.lm_head):
    module.to("cpu")
    add_hook_to_module(module, AlignDevicesHook(execution_device="cpu", io_same_device=False))
ids = ids.to(device)
hidden = split.model(input_ids=ids[None]).last_hidden_state
print(f"split model: embeddings on {split.model.embed_tokens.weight.device}, last hidden state on {hidden.device}")
for name, matrix in (("reverse", attribute_ids(split, ids, 25, 16, 0)), ("forward", attribute_ids_forward(split, ids, 25))):
    err = np.abs(matrix - ref).max() / np.abs(ref).max()
    print(f"split model, {name} mode: max relative difference {err:.2e}")
    assert err < 1e-4
PY
# 2. the LLaMA-7B-shaped benchmark (random weights built on the GPU)
python bench/gpu_bench.py "$@"
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv; fi
