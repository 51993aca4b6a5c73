"""Attribution equals its definition, on tiny random LLaMA and Mistral models with GQA."""
import numpy as np
import pytest
import torch
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from workflow_scripts import attribution, attribution_batches, attribution_model
from workflow_scripts.attribution import (
    Attributor,
    attribute_ids,
    attribute_ids_forward,
    attribute_ids_reference,
    attribute_shard,
    choose_autodiff,
    unit_scale,
)
from workflow_scripts.attribution_batches import auto_backward_batch
from workflow_scripts.attribution_model import PRECISIONS, load_kwargs, load_model
from workflow_scripts.attribution_tokens import generate_responses, tokenize_pair
from workflow_scripts.demo_models import train_tokenizer
from workflow_scripts.devices import input_device, set_matmul_precision
from workflow_scripts.importance import bin_attributions
from workflow_scripts.shards import load_shard

# Float32 paths that sum in different orders agree to this fraction of the matrix's largest magnitude:
# a near-zero cell is a cancellation, and an AMD EPYC's kernels moved one by 1.8e-7 of the largest.
FLOAT32_SPREAD = 1e-6

ARCHITECTURES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}


def tiny_model(kind: str, vocab_size: int = 300, seed: int = 0):
    config_class, model_class = ARCHITECTURES[kind]
    torch.manual_seed(seed)
    config = config_class(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    return model_class(config).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    corpus = root / "corpus.txt"
    corpus.write_text(
        "Rewrite the sentence to be shorter.\nThe meeting was moved to Monday.\n"
        "Write a short poem about the sea.\nThe café on the corner — naïve art.\n" * 20
    )
    train_tokenizer(corpus, root / "tokenizer", vocab_size=300)
    return root / "tokenizer"


@pytest.mark.parametrize("kind", ARCHITECTURES)
@pytest.mark.parametrize("chunk_size", [0, 1, 4, 64])
def test_batched_attribution_equals_one_backward_per_response_token(kind, chunk_size):
    model = tiny_model(kind)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA path
    ids = torch.randint(3, 300, (24,), generator=torch.Generator().manual_seed(1))
    fast = attribute_ids(model, ids, n_prompt=15, chunk_size=chunk_size)
    reference = attribute_ids_reference(model, ids, n_prompt=15)
    assert fast.shape == (15, 9)
    assert np.abs(reference).max() > 0
    np.testing.assert_allclose(fast, reference, rtol=1e-5, atol=FLOAT32_SPREAD * np.abs(reference).max())


def test_attribution_is_gradient_times_input_of_the_token_probability():
    """Check one entry against autograd on the textbook formula, written out independently."""
    model = tiny_model("llama")
    ids = torch.tensor([1, 5, 17, 42, 8, 99, 23])
    n_prompt, j = 4, 1  # response token j=1 sits at position 5, predicted from position 4
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    prob = torch.softmax(model(inputs_embeds=emb[None]).logits[0, n_prompt + j - 1], -1)[ids[n_prompt + j]]
    prob.backward()
    expected = (emb.grad * emb.detach()).sum(-1)[:n_prompt].numpy()
    np.testing.assert_allclose(attribute_ids(model, ids, n_prompt)[:, j], expected, rtol=1e-5, atol=1e-9)


def test_causality_later_response_tokens_do_not_feed_earlier_objectives():
    model = tiny_model("mistral")
    ids = torch.randint(3, 300, (12,), generator=torch.Generator().manual_seed(2))
    a = attribute_ids(model, ids, n_prompt=8)
    b = attribute_ids(model, torch.cat([ids[:10], torch.tensor([7, 7])]), n_prompt=8)
    np.testing.assert_allclose(a[:, :2], b[:, :2], rtol=1e-5, atol=1e-9)


def test_tokenize_pair_splits_prompt_and_response_with_character_offsets(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt, response = "Rewrite the café sentence.\nInput: The meeting was moved.", "The meeting moved."
    tokens = tokenize_pair(tokenizer, prompt, response)
    pieces = tokenizer.convert_ids_to_tokens(tokens.input_ids.tolist())
    assert pieces[0] == "<s>" and 0 not in tokens.prompt_rows  # BOS is not a prompt token row
    assert tokens.input_ids.numel() - tokens.n_prompt == len(tokens.response_offsets)
    for text, offsets in ((prompt, tokens.prompt_offsets), (response, tokens.response_offsets)):
        assert (np.diff(offsets[:, 0]) >= 0).all() and offsets.min() >= 0 and offsets.max() <= len(text)
        covered = {i for s, e in offsets for i in range(s, e)}
        assert covered >= {i for i, ch in enumerate(text) if not ch.isspace()}  # every character has a token


def test_generated_response_is_greedy_and_its_offsets_slice_its_text(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_model("llama", vocab_size=len(tokenizer))
    prompt = "Write a short poem about the sea."
    tokens = generate_responses(model, tokenizer, [prompt], 6)[0]
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"][0]
    with torch.no_grad():  # greedy: each new token is the argmax after the previous ones
        for _ in range(6):
            ids = torch.cat([ids, model(ids[None]).logits[0, -1].argmax()[None]])
    new = ids[-6:].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    assert tokens.response_text == tokenizer.decode(new, skip_special_tokens=True).strip() != ""
    expected = tokenize_pair(tokenizer, prompt, tokens.response_text)
    assert torch.equal(tokens.input_ids, expected.input_ids) and tokens.n_prompt == expected.n_prompt
    assert tokens.input_ids[0].item() == tokenizer.bos_token_id
    assert tokens.response_offsets[-1][1] == len(tokens.response_text)
    assert (np.diff(tokens.response_offsets[:, 0]) >= 0).all()


def chain_model(tokenizer, prompt: str, pieces: list[str]):
    """A real LLaMA without layers whose greedy next token depends on the last token alone, wired so
    that after `prompt` it writes `pieces`, then the end of sequence (embeddings one-hot, the output
    head a successor table)."""
    first = tokenizer(prompt)["input_ids"][-1]
    chain = [first, *tokenizer.convert_tokens_to_ids(pieces), tokenizer.eos_token_id]
    assert len(set(chain)) == len(chain), chain  # one successor per token
    size = len(tokenizer)
    config = LlamaConfig(vocab_size=size, hidden_size=size, intermediate_size=8, num_hidden_layers=0,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=0)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(torch.eye(size))
        head = torch.zeros(size, size)
        for token, successor in zip(chain, chain[1:]):
            head[successor, token] = 10.0
        model.lm_head.weight.copy_(head)
    return model


def test_a_generated_response_is_attributed_as_the_papers_code_retokenized_it(tokenizer_dir):
    """The paper decodes the greedy response and attributes `prompt + " " + response.strip()` as one
    text: a response the model opens with a line break is attributed from its first word."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt = "Write a short poem about the sea."
    model = chain_model(tokenizer, prompt, ["<0x0A>", "M", "on", "d", "a", "y", "▁"])
    tokens = generate_responses(model, tokenizer, [prompt], 20)[0]
    expected = tokenize_pair(tokenizer, prompt, "Monday")
    assert tokens.response_text == "Monday"
    assert torch.equal(tokens.input_ids, expected.input_ids)
    np.testing.assert_array_equal(tokens.response_offsets, expected.response_offsets)
    assert tokens.n_prompt == expected.n_prompt


def test_a_response_is_at_least_one_token_as_in_the_papers_generation(tokenizer_dir):
    """The paper's `min_length` is the prompt plus one: the end of sequence cannot come first."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt = "Write a short poem about the sea."
    model = chain_model(tokenizer, prompt, [])
    with torch.no_grad():  # the end of sequence first, else "The"
        model.lm_head.weight[:, tokenizer(prompt)["input_ids"][-1]] = 0.0
        model.lm_head.weight[tokenizer.eos_token_id, tokenizer(prompt)["input_ids"][-1]] = 10.0
        the = tokenizer.convert_tokens_to_ids("The")
        model.lm_head.weight[the, tokenizer(prompt)["input_ids"][-1]] = 5.0
        model.lm_head.weight[tokenizer.eos_token_id, the] = 10.0
    tokens = generate_responses(model, tokenizer, [prompt], 5)[0]
    assert tokens.response_text == "The"


PROMPTS = ["Write a short poem about the sea.", "Name three colours.", "Say hi.",
           "Explain in two sentences why the sky is blue at noon but red in the evening.", "List four fruits."]


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_batched_generation_gives_each_prompt_its_solo_response_in_the_prompts_order(tokenizer_dir, kind):
    """Prompts of different lengths share a `generate` call, padded on the left: each gets the response it
    gets alone (float32: the padding only reorders the arithmetic), returned in the prompts' order."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_model(kind, vocab_size=len(tokenizer))
    calls = []
    generate = model.generate

    def counting(input_ids, **kwargs):  # the real generate, its batch shapes recorded
        calls.append(tuple(input_ids.shape))
        return generate(input_ids, **kwargs)

    model.generate = counting
    batched = generate_responses(model, tokenizer, PROMPTS, 8, batch=3)
    lengths = sorted(len(tokenizer(p)["input_ids"]) for p in PROMPTS)
    assert calls == [(3, lengths[2]), (2, lengths[4])]  # shortest first, padded to each batch's longest
    calls.clear()
    solo = [generate_responses(model, tokenizer, [prompt], 8)[0] for prompt in PROMPTS]
    assert len(calls) == len(PROMPTS)
    assert len({s.response_text for s in solo}) > 1  # the prompts are told apart
    for one, many in zip(solo, batched):
        assert many.response_text == one.response_text != ""
        assert torch.equal(many.input_ids, one.input_ids) and many.n_prompt == one.n_prompt


def test_a_generation_batch_that_runs_out_of_memory_is_halved_and_every_response_kept(tokenizer_dir):
    """A card too small for the batch halves it (down to one prompt) instead of failing the shard."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_model("llama", vocab_size=len(tokenizer))
    sizes, generate = [], model.generate

    def small_card(input_ids, **kwargs):  # the real generate, on a card that holds two prompts
        sizes.append(input_ids.shape[0])
        if input_ids.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return generate(input_ids, **kwargs)

    model.generate = small_card
    batched = generate_responses(model, tokenizer, PROMPTS, 6, batch=4)
    assert sizes == [4, 2, 2, 1]  # 4 fails; 2 + 2, then the last prompt
    model.generate = generate
    assert [b.response_text for b in batched] == [generate_responses(model, tokenizer, [p], 6)[0].response_text
                                                  for p in PROMPTS]


def test_a_response_that_ends_early_in_a_batch_is_cut_at_its_end_of_sequence(tokenizer_dir):
    """A batch runs until its longest response ends: a shorter one is padded after its end of sequence, and
    that padding is not part of its response."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    long_prompt, short_prompt = PROMPTS[0], "Say hi!"
    model = chain_model(tokenizer, long_prompt, ["<0x0A>", "M", "on", "d", "a", "y", "▁"])
    bang, the = tokenizer(short_prompt)["input_ids"][-1], tokenizer.convert_tokens_to_ids("The")
    with torch.no_grad():  # after "!": "The", then the end of sequence
        model.lm_head.weight[:, bang] = 0.0
        model.lm_head.weight[the, bang] = 10.0
        model.lm_head.weight[tokenizer.eos_token_id, the] = 10.0
    short, long = generate_responses(model, tokenizer, [short_prompt, long_prompt], 20, batch=2)
    assert (short.response_text, long.response_text) == ("The", "Monday")
    assert torch.equal(short.input_ids, tokenize_pair(tokenizer, short_prompt, "The").input_ids)


@pytest.mark.parametrize("response", ["reference", "generate"])
def test_attribute_shard_writes_the_shard_samples_in_the_safe_format(tmp_path, tokenizer_dir, response):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_model("llama", vocab_size=len(tokenizer))
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    dataset = tmp_path / "data.tsv"
    rows = [f"s{i}\tRewrite the sentence {i}./nInput: The meeting was moved.\tThe meeting moved {i}.\t"
            f"Rewrite the sentence {i}.&&&The meeting was moved." for i in range(5)]
    dataset.write_text("ID\tPrompt\tResponse\tInstruct&Context\n" + "\n".join(rows) + "\n")
    out = tmp_path / "shard-1.npz"
    attribute_shard(str(model_dir), str(dataset), 1, 2, str(out), "tiny", response=response, max_new_tokens=4,
                    generate_batch=2)
    shard = load_shard(out)
    assert [s.id for s in shard.samples] == ["s2", "s3"]
    assert shard.meta.get("generate_batch") == (2 if response == "generate" else None)  # how the responses were made
    assert shard.meta["model"] == "tiny" and shard.meta["binned_levels"] == 0
    assert (shard.meta["device"], shard.meta["weights_dtype"]) == ("cpu", "float32")  # for the report's provenance
    for sample in shard.samples:
        assert sample.matrix.shape == (len(sample.prompt_tokens), len(sample.response_tokens))
        assert sample.matrix.dtype == np.float32 and np.isfinite(sample.matrix).all()
    with pytest.raises(ValueError, match="shard 9 does not exist"):
        attribute_shard(str(model_dir), str(dataset), 9, 2, str(out), "tiny")


def test_missing_model_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_model(str(tmp_path / "nope"))


@pytest.fixture
def tiny_model_dir(tmp_path, tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model_dir = tmp_path / "model"
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(model_dir)  # context: 128 positions
    tokenizer.save_pretrained(model_dir)
    return model_dir


@pytest.mark.parametrize("response, max_new_tokens, needs", [("reference", 4, "prompt and reference response"),
                                                            ("generate", 100, "prompt and up to 100 new tokens")])
def test_a_sample_longer_than_the_context_is_refused_before_any_attribution(
    tmp_path, tiny_model_dir, response, max_new_tokens, needs
):
    long_prompt = "Rewrite the sentence. " + "The meeting was moved to Monday. " * 40
    dataset = tmp_path / "data.tsv"
    dataset.write_text("ID\tPrompt\tResponse\tInstruct&Context\n"
                       "s0\tRewrite the sentence.\tOk.\tRewrite the sentence.\n"
                       f"s1\t{long_prompt}\tOk.\tRewrite the sentence.\n")
    out = tmp_path / "shard-0.npz"
    with pytest.raises(ValueError, match=rf"data.tsv:3: sample s1 needs \d+ tokens \({needs}\), more than the "
                                         r"model's context of 128"):
        attribute_shard(str(tiny_model_dir), str(dataset), 0, 2, str(out), "tiny", response=response,
                        max_new_tokens=max_new_tokens)
    assert not out.exists()


def test_an_empty_reference_response_is_refused_naming_the_sample(tmp_path, tiny_model_dir):
    dataset = tmp_path / "data.tsv"
    dataset.write_text("ID\tPrompt\tResponse\tInstruct&Context\ns0\tSay hi.\t \tSay hi.\n")
    with pytest.raises(ValueError, match=r"data.tsv:2: sample s0 has an empty Response to attribute"):
        attribute_shard(str(tiny_model_dir), str(dataset), 0, 1, str(tmp_path / "o.npz"), "tiny")


# --- precision modes and batched backward passes (issue 14) ---------------------------------------


@pytest.mark.parametrize("kind", ARCHITECTURES)
@pytest.mark.parametrize("chunk_size, backward_batch", [(0, 2), (0, 9), (4, 3), (64, 5)])
def test_batched_backward_passes_equal_the_per_token_path(kind, chunk_size, backward_batch):
    """Several response tokens per body backward (stacked cotangents) give the per-token columns."""
    model = tiny_model(kind)
    ids = torch.randint(3, 300, (24,), generator=torch.Generator().manual_seed(1))
    per_token = attribute_ids(model, ids, n_prompt=15, chunk_size=chunk_size, backward_batch=1)
    batched = attribute_ids(model, ids, n_prompt=15, chunk_size=chunk_size, backward_batch=backward_batch)
    np.testing.assert_allclose(batched, per_token, rtol=1e-5, atol=FLOAT32_SPREAD * np.abs(per_token).max())
    np.testing.assert_allclose(batched, attribute_ids_reference(model, ids, n_prompt=15), rtol=1e-5,
                               atol=FLOAT32_SPREAD * np.abs(per_token).max())


def test_batched_backward_in_bfloat16_equals_its_per_token_path_to_bf16_rounding():
    model = tiny_model("llama").to(torch.bfloat16)
    ids = torch.randint(3, 300, (40,), generator=torch.Generator().manual_seed(3))
    per_token = attribute_ids(model, ids, n_prompt=25, backward_batch=1)
    batched = attribute_ids(model, ids, n_prompt=25, backward_batch=8)
    assert np.abs(batched - per_token).max() <= 2e-2 * np.abs(per_token).max()


def test_a_batch_that_runs_out_of_memory_is_halved_down_to_the_per_token_path(monkeypatch, caplog):
    """Fault injection: a batched backward over 2 cotangents raises CUDA's out-of-memory error."""
    model = tiny_model("llama")
    ids = torch.randint(3, 300, (24,), generator=torch.Generator().manual_seed(1))
    expected = attribute_ids(model, ids, n_prompt=15, backward_batch=1)
    real_grad, sizes = torch.autograd.grad, []

    def grad(outputs, inputs, grad_outputs=None, **kwargs):
        if grad_outputs is None:  # the output head's backward
            return real_grad(outputs, inputs, **kwargs)
        size = grad_outputs.shape[0] if kwargs.get("is_grads_batched") else 1
        sizes.append(size)
        if size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real_grad(outputs, inputs, grad_outputs, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", grad)
    got = attribute_ids(model, ids, n_prompt=15, backward_batch=8)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=FLOAT32_SPREAD * np.abs(expected).max())
    assert sizes[:3] == [8, 4, 2] and max(sizes[3:]) == 2
    assert "retrying 4 at a time" in caplog.text
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="not a memory error"):  # other errors are not swallowed
        monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: (_ for _ in ()).throw(
            RuntimeError("not a memory error")))
        attribute_ids(model, ids, n_prompt=15, backward_batch=8)


def test_an_out_of_memory_error_sizes_the_jobs_later_batches_for_less_memory(monkeypatch):
    """The batch chosen from free GPU memory is an estimate: where it runs high, halving only the failing
    pass's batch made every later chunk and sample fail the same way first (a wasted pass each)."""
    model = tiny_model("llama")
    ids = torch.randint(3, 300, (40,), generator=torch.Generator().manual_seed(3))
    expected = attribute_ids(model, ids, n_prompt=20, chunk_size=8, backward_batch=1)
    free, asked, sizes = 2**30, [], []
    real_grad = torch.autograd.grad

    def fits(config, sequence, element_bytes, free_bytes, limit, attention_bytes=None):
        # this GPU fits 8 cotangents when all is free
        asked.append(free_bytes)
        return max(1, min(limit, 8 * free_bytes // free))

    def grad(outputs, inputs, grad_outputs=None, **kwargs):
        if grad_outputs is not None:  # not the output head's backward
            sizes.append(grad_outputs.shape[0] if kwargs.get("is_grads_batched") else 1)
            if sizes[-1] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real_grad(outputs, inputs, grad_outputs, **kwargs)

    monkeypatch.setattr(attribution_batches, "input_device", lambda model: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(attribution_batches, "cuda_free_bytes", lambda device: free)
    monkeypatch.setattr(attribution_batches, "auto_backward_batch", fits)
    monkeypatch.setattr(torch.autograd, "grad", grad)
    attributor = Attributor(model, chunk_size=8, autodiff="reverse")
    got = attributor.matrix(ids, 20, np.arange(20))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=FLOAT32_SPREAD * np.abs(expected).max())
    assert sizes[:3] == [8, 4, 2] and set(sizes[3:]) == {2}  # the later chunks start at 2
    assert asked[0] == free and set(asked[1:]) == {free // 4}
    attributor.matrix(ids, 20, np.arange(20))  # and so does the next sample
    assert set(sizes[3:]) == {2}


def test_the_automatic_backward_batch_follows_free_memory_and_sequence_length():
    """LLaMA-7B shape in bf16, 500 positions: 6*4096 + 4*11008 + 2*32*500 = 100,608 values per position
    and cotangent, x 500 positions x 2 bytes x 2 slack = 201 MB per cotangent; half the free memory."""
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32)
    per_cotangent = 100_608 * 500 * 2 * 2
    auto = auto_backward_batch(config, 500, 2, free_bytes=60 * 2**30, limit=500)
    assert auto == int(30 * 2**30 // per_cotangent) == 160
    assert auto_backward_batch(config, 500, 2, free_bytes=2**40, limit=32) == 32  # never more than the chunk
    assert auto_backward_batch(config, 500, 2, free_bytes=2**20, limit=32) == 1  # the per-token path
    assert auto_backward_batch(config, 1000, 2, free_bytes=60 * 2**30, limit=200) < \
        auto_backward_batch(config, 500, 2, free_bytes=60 * 2**30, limit=200) / 2  # longer: fewer
    assert auto_backward_batch(config, 500, 4, free_bytes=60 * 2**30, limit=200) == \
        auto_backward_batch(config, 500, 2, free_bytes=30 * 2**30, limit=200)  # float32 holds half as many


def test_automatic_batches_are_sized_for_the_gpu_with_the_least_free_memory(monkeypatch):
    """A model spread over GPUs holds a batch's gradients on each: sized for the freest one (8 GiB here, 230
    cotangents), the pass ran out of memory on the fullest (1 GiB: 28)."""
    model = tiny_model("llama")  # float32: 4 bytes
    free = {0: 8 * 2**30, 1: 2**30}
    monkeypatch.setattr(attribution_batches, "input_device", lambda model: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(attribution_batches, "cuda_free_bytes", lambda device: free[device])
    assert auto_backward_batch(model.config, 512, 4, free_bytes=2**30, limit=10**6) == 28
    assert attribution_batches.batch_size(model, 512, 10**6, 0, 1, attribution_batches.MemoryShare()) == 28


def test_a_runtime_error_saying_out_of_memory_is_a_memory_error_as_torchs_own_class_is():
    """cuBLAS and cuDNN report an exhausted GPU as a plain RuntimeError: it too halves the batch."""
    is_out_of_memory = attribution_batches.is_out_of_memory
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape '[2, 3]' is invalid for input of size 5"))


def test_forward_mode_sizes_its_batches_for_float32_attention_scores_in_the_half_modes(monkeypatch):
    """Forward mode runs attention as the math kernel, which computes a float16/bfloat16 model's T x T scores in
    float32 (torch's default): sized at 2 bytes, a long sample's first batch ran out of memory every job."""
    model = tiny_model("llama").to(torch.bfloat16)
    monkeypatch.setattr(attribution_batches, "input_device", lambda model: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(attribution_batches, "cuda_free_bytes", lambda device: 2**30)
    sizes = {}
    monkeypatch.setattr(attribution_batches, "auto_backward_batch",
                        lambda config, sequence, element, free, limit, attention_bytes=None:
                        sizes.setdefault(len(sizes), (element, attention_bytes or element)) and 1)
    memory = attribution_batches.MemoryShare()
    attribution_batches.batch_size(model, 2048, 100, 0, 1, memory)
    attribution_batches.batch_size(model, 2048, 100, 0, 1, memory, float32_attention=True)
    assert sizes == {0: (2, 2), 1: (2, 4)}
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32)
    reverse = auto_backward_batch(config, 2048, 2, free_bytes=60 * 2**30, limit=2048)
    forward = auto_backward_batch(config, 2048, 2, free_bytes=60 * 2**30, limit=2048, attention_bytes=4)
    assert forward < 0.6 * reverse  # at T = 2048 the scores are most of what a tangent holds
    asked, real = [], attribution.batch_size
    monkeypatch.setattr(attribution, "batch_size",
                        lambda *args, **kwargs: asked.append(kwargs) or real(*args, **kwargs))
    ids = torch.randint(3, 300, (24,), generator=torch.Generator().manual_seed(1))
    attribute_ids_forward(tiny_model("llama"), ids, n_prompt=15)
    attribute_ids(tiny_model("llama"), ids, n_prompt=15)
    assert asked == [{"float32_attention": True}, {}]


def shard_dataset(tmp_path):
    dataset = tmp_path / "data.tsv"
    rows = [f"s{i}\tRewrite the sentence {i}./nInput: The meeting was moved.\tThe meeting was moved to Monday {i}.\t"
            f"Rewrite the sentence {i}.&&&The meeting was moved." for i in range(3)]
    dataset.write_text("ID\tPrompt\tResponse\tInstruct&Context\n" + "\n".join(rows) + "\n")
    return dataset


@pytest.fixture(scope="module")
def precision_model(tmp_path_factory, tokenizer_dir):
    tmp_path = tmp_path_factory.mktemp("precision")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model", shard_dataset(tmp_path)


def precision_run(model_dir, dataset, autodiff: str) -> dict:
    """One shard of the same samples per precision mode, from the same saved float32 model."""
    shards = {}
    for precision in PRECISIONS:
        out = model_dir.parent / f"{precision}-{autodiff}.npz"
        attribute_shard(str(model_dir), str(dataset), 0, 3, str(out), "tiny", precision=precision,
                        backward_batch=2, autodiff=autodiff)
        shards[precision] = load_shard(out)
    return shards


@pytest.fixture(scope="module", params=["reverse", "forward"])
def precision_shards(request, precision_model):
    shards = precision_run(*precision_model, request.param)
    assert [shard.meta["autodiff_samples"] for shard in shards.values()] == [{request.param: 3}] * len(PRECISIONS)
    return shards


def test_each_precision_mode_records_the_arithmetic_it_actually_used(precision_shards):
    """Read back from the loaded model and torch: a mode that fell back to another shows here."""
    meta = {precision: shard.meta for precision, shard in precision_shards.items()}
    assert {p: (m["precision"], m["weights_dtype"], m["activations_dtype"]) for p, m in meta.items()} == {
        "float32": ("float32", "float32", "float32"),
        "tf32": ("tf32", "float32", "float32"),
        "bfloat16": ("bfloat16", "bfloat16", "bfloat16"),
        "float16": ("float16", "float16", "float16"),
    }
    assert meta["float32"]["matmul"] == meta["tf32"]["matmul"] == \
        "float32 (CPU: TF32 is a CUDA mode; tf32 runs as float32)"
    assert meta["bfloat16"]["matmul"] == "bfloat16" and meta["float16"]["matmul"] == "float16"
    assert all(m["accumulation"].startswith("float32") for m in meta.values())
    assert not torch.backends.cuda.matmul.allow_tf32  # the last job (float16) left TF32 off


def test_tf32_on_a_cpu_is_float32_bit_for_bit(precision_shards):
    for a, b in zip(precision_shards["float32"].samples, precision_shards["tf32"].samples):
        assert np.array_equal(a.matrix, b.matrix)


@pytest.mark.parametrize("half", ["bfloat16", "float16"])
def test_a_half_mode_agrees_with_float32_within_a_loose_bound(precision_shards, half):
    """Measured on this tiny random model (AMD EPYC, torch 2.13): bfloat16 max relative difference
    0.002-0.010, 99.6-100% of binned cells equal, correlation 0.99998; float16 0.0004-0.002, 99.9-100%,
    correlation 1.000000 to six digits (bench/attribution_precision.py measures a real checkpoint)."""
    for a, b in zip(precision_shards["float32"].samples, precision_shards[half].samples):
        assert a.matrix.dtype == b.matrix.dtype == np.float32 and a.matrix.shape == b.matrix.shape
        assert not np.array_equal(a.matrix, b.matrix)  # it did run in another precision
        assert np.abs(a.matrix - b.matrix).max() <= 0.1 * np.abs(a.matrix).max()
        assert (bin_attributions(a.matrix) == bin_attributions(b.matrix)).mean() >= 0.9
        assert np.corrcoef(a.matrix.ravel(), b.matrix.ravel())[0, 1] > 0.999


def test_a_model_is_loaded_straight_onto_its_gpus():
    """One GPU: a single-device map, so that transformers puts each tensor on the GPU as it loads it (the
    whole float32 model in host memory first needed 27 GiB of the job's host memory for 7B); several:
    spread by accelerate; a CPU: no map. (bench/gpu_bench.py loads a checkpoint this way on a GPU.)"""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert load_kwargs("float32", cuda, 1) == {"dtype": torch.float32, "device_map": {"": 0}}
    assert load_kwargs("bfloat16", cuda, 2) == {"dtype": torch.bfloat16, "device_map": "auto"}
    assert load_kwargs("tf32", cpu, 0) == {"dtype": torch.float32}


def test_float16_on_a_cpu_warns_that_it_is_a_gpu_mode(tiny_model_dir, caplog):
    load_model(str(tiny_model_dir), "float32")
    assert "on a CPU" not in caplog.text
    model, _ = load_model(str(tiny_model_dir), "float16")
    assert model.dtype == torch.float16 and "float16 on a CPU: a GPU mode" in caplog.text


def test_a_model_that_reworks_its_logits_after_the_head_is_refused(tmp_path, tokenizer_dir):
    """The objectives come from the output head alone: Gemma-2 soft-caps its logits after it, so its
    probabilities are not the head's; before the check it was attributed for the head's, without a word."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, final_logit_softcapping=0.5))
    model.save_pretrained(tmp_path / "gemma2")
    tokenizer.save_pretrained(tmp_path / "gemma2")
    with pytest.raises(ValueError, match=r"gemma2: its logits are not its output head's \(Gemma2ForCausalLM"):
        load_model(str(tmp_path / "gemma2"))
    model.config.final_logit_softcapping = None  # the same weights without the cap: attributed
    model.save_pretrained(tmp_path / "gemma2")
    assert load_model(str(tmp_path / "gemma2"))[0].config.final_logit_softcapping is None


def test_a_model_that_scales_its_logits_by_one_percent_after_the_head_is_refused(tmp_path, tokenizer_dir):
    """Cohere multiplies the head's logits by its logit_scale: 1% off is already other probabilities."""
    from transformers import CohereConfig, CohereForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = CohereForCausalLM(CohereConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, logit_scale=0.99))
    model.save_pretrained(tmp_path / "cohere")
    tokenizer.save_pretrained(tmp_path / "cohere")
    with pytest.raises(ValueError, match=r"cohere: its logits are not its output head's \(CohereForCausalLM"):
        load_model(str(tmp_path / "cohere"))
    model.config.logit_scale = 1.0  # the head's own logits: attributed
    model.save_pretrained(tmp_path / "cohere")
    assert load_model(str(tmp_path / "cohere"))[0].config.logit_scale == 1.0


def test_a_cpu_shard_records_the_float32_its_onednn_setting_gives():
    """oneDNN's "ieee" (its explicit default) is plain float32; another setting is named in the record."""
    onednn = getattr(torch.backends.mkldnn, "matmul", None)
    if not hasattr(onednn, "fp32_precision"):
        pytest.skip("this torch has no oneDNN float32 precision setting")
    model, before = tiny_model("llama"), onednn.fp32_precision
    try:
        onednn.fp32_precision = "ieee"
        assert attribution_model.precision_record(model, "tf32")["matmul"] == \
            "float32 (CPU: TF32 is a CUDA mode; tf32 runs as float32)"
        onednn.fp32_precision = "bf16"
        assert attribution_model.precision_record(model, "float32")["matmul"] == "float32 as oneDNN bf16"
    finally:
        onednn.fp32_precision = before


def test_an_unknown_precision_is_refused_naming_the_known_ones(tiny_model_dir):
    with pytest.raises(ValueError, match=r"unknown precision 'float64' \(known: float32, tf32, bfloat16, float16\)"):
        load_model(str(tiny_model_dir), "float64")


def test_float16_backward_passes_start_from_scaled_cotangents_so_unlikely_tokens_do_not_underflow():
    """A sharp output head (x100) gives most response tokens a tiny probability, and d p_j / d h_j, about
    p_j times a weight, then starts the backward pass under float16's subnormal range (6e-8 to 6e-5).
    Unscaled, 90% of the cells underflowed to 0 (correlation 0.9996); scaled by a power of two into
    [0.5, 1) and divided back in float32, none does (measured: RMS difference 1.6%, correlation 0.999997;
    bfloat16, whose range is float32's, 8.7% and 0.9995)."""
    def sharp(dtype):
        model = tiny_model("llama")
        model.lm_head.weight.data.mul_(100)
        return model.to(dtype)

    ids = torch.randint(3, 300, (30,), generator=torch.Generator().manual_seed(5))
    float32 = attribute_ids(sharp(torch.float32), ids, n_prompt=20)
    half = attribute_ids(sharp(torch.float16), ids, n_prompt=20, backward_batch=1)
    assert half.dtype == np.float32 and np.all(float32 != 0)
    assert np.all(half != 0)
    assert np.sqrt(((half - float32) ** 2).mean() / (float32**2).mean()) < 0.03
    assert np.corrcoef(half.ravel(), float32.ravel())[0, 1] > 0.99999


def test_unit_scale_is_a_power_of_two_per_row_that_brings_its_largest_magnitude_into_half_to_one():
    rows = torch.tensor([[3e-7, -1e-6], [0.75, 0.1], [0.0, 0.0], [-5e4, 2.0]])
    scale = unit_scale(rows)
    assert scale.shape == (4, 1)
    largest = (rows * scale).abs().amax(dim=-1)[[0, 1, 3]]
    assert torch.all((largest >= 0.5) & (largest < 1))
    assert torch.equal(torch.log2(scale), torch.round(torch.log2(scale)))  # exact: only the exponent moves
    assert scale[2] == 1  # a zero row is left alone


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scaling_the_cotangents_changes_no_bit_where_the_exponent_range_is_float32s(monkeypatch, dtype):
    model = tiny_model("llama").to(dtype)
    ids = torch.randint(3, 300, (30,), generator=torch.Generator().manual_seed(5))
    scaled = attribute_ids(model, ids, n_prompt=20, chunk_size=4, backward_batch=3)
    monkeypatch.setattr(attribution, "unit_scale", lambda cotangents: torch.ones_like(cotangents[:, :1]))
    assert np.array_equal(attribute_ids(model, ids, n_prompt=20, chunk_size=4, backward_batch=3), scaled)


def test_a_matrix_that_overflowed_float16_is_an_error_naming_the_sample(tmp_path, tokenizer_dir):
    """Activations past 65504 become inf in float16 (here layer 0's MLP writes ~1e5 into the residual
    stream, from weights below 500); the matrix must never reach a table."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_model("llama", vocab_size=len(tokenizer))
    with torch.no_grad():
        for weight in (model.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.down_proj.weight):
            weight.mul_(6000)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    dataset = shard_dataset(tmp_path)
    attribute_shard(str(tmp_path / "model"), str(dataset), 0, 3, str(tmp_path / "f32.npz"), "tiny")  # float32 runs
    with pytest.raises(FloatingPointError, match=r"sample \S+: its gradient x input matrix holds inf or nan "
                                                 r"\(float16 arithmetic\); float16 ends at 65504"):
        attribute_shard(str(tmp_path / "model"), str(dataset), 0, 3, str(tmp_path / "f16.npz"), "tiny",
                        precision="float16")
    assert not (tmp_path / "f16.npz").exists()


def test_tf32_switches_cuda_matmuls_to_tf32_and_the_other_modes_back_off():
    """The switch itself (a CUDA flag, settable without a GPU); the shard's record reads it back. Half-precision
    products reduce in float32 in every mode: cuBLAS's default lets split-K partial sums round to float16 or
    bfloat16 (and overflow float16's 65504), which the modes' measured agreement does not cover."""
    matmul = torch.backends.cuda.matmul
    try:
        for precision, expected in (("tf32", True), ("float32", False), ("tf32", True), ("bfloat16", False),
                                    ("float16", False)):
            matmul.allow_fp16_reduced_precision_reduction = matmul.allow_bf16_reduced_precision_reduction = True
            torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
            set_matmul_precision(precision)
            assert matmul.allow_tf32 is expected
            assert not matmul.allow_fp16_reduced_precision_reduction
            assert not matmul.allow_bf16_reduced_precision_reduction
            assert not torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    finally:
        set_matmul_precision("float32")


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_forward_mode_attention_computes_in_float32_in_a_half_mode_whatever_the_process_allowed(precision_model,
                                                                                                  precision):
    """Forward mode's attention runs on SDPA's math kernel, which from torch 2.5 computes half-precision inputs in
    float32 (its batch sizing counts float32 score matrices too) unless `allow_fp16_bf16_reduction_math_sdp(True)`
    was called in the process (an imported library or the user's code may, for speed): the job turns it off."""
    model_dir, dataset = precision_model
    shards = {}
    try:
        for allowed in (False, True):
            torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(allowed)
            out = model_dir.parent / f"sdp-{precision}-{allowed}.npz"
            attribute_shard(str(model_dir), str(dataset), 0, 3, str(out), "tiny", precision=precision,
                            autodiff="forward")
            shards[allowed] = load_shard(out)
    finally:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(False)
    for a, b in zip(shards[False].samples, shards[True].samples, strict=True):
        assert np.array_equal(a.matrix, b.matrix), a.id


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_the_output_head_runs_in_ieee_float32_in_tf32_mode_too(mode, monkeypatch):
    """The design and every shard's record say the head, softmax and sums are float32 in every mode; the tf32
    switch is process-wide, so the head's products ran in TF32 on a GPU. (The flag is readable without one.)"""
    model = tiny_model("llama")
    head = model.get_output_embeddings().weight
    linear, seen = torch.nn.functional.linear, []

    def spy(x, weight, bias=None):
        if weight.shape == head.shape:
            seen.append(torch.backends.cuda.matmul.allow_tf32)
        return linear(x, weight, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    ids = torch.randint(3, 300, (24,), generator=torch.Generator().manual_seed(1))
    try:
        set_matmul_precision("tf32")
        if mode == "reverse":
            attribute_ids(model, ids, n_prompt=15, chunk_size=4, backward_batch=1)
        else:
            attribute_ids_forward(model, ids, n_prompt=15, batch=4)
        assert seen and not any(seen)
        assert torch.backends.cuda.matmul.allow_tf32  # the body's products stay in TF32
    finally:
        set_matmul_precision("float32")


# --- forward mode (a tangent per prompt token) ------------------------------------------------------


@pytest.mark.parametrize("kind", ARCHITECTURES)
@pytest.mark.parametrize("batch", [1, 4, 15])
def test_forward_mode_equals_one_backward_per_response_token(kind, batch):
    """Row i is the Jacobian-vector product along e_i at position i, contracted with the head's gradient."""
    model = tiny_model(kind)
    ids = torch.randint(3, 300, (24,), generator=torch.Generator().manual_seed(1))
    reference = attribute_ids_reference(model, ids, n_prompt=15)
    forward = attribute_ids_forward(model, ids, n_prompt=15, batch=batch)
    assert forward.shape == (15, 9) and forward.dtype == np.float32
    np.testing.assert_allclose(forward, reference, rtol=1e-5, atol=FLOAT32_SPREAD * np.abs(reference).max())
    rows = np.array([2, 5, 14])  # the rows asked for, in their order
    np.testing.assert_allclose(attribute_ids_forward(model, ids, 15, rows, batch), forward[rows],
                               rtol=1e-6, atol=1e-9)


def test_forward_mode_in_bfloat16_runs_bf16_tangents_and_agrees_with_float32_as_reverse_mode_does():
    model = tiny_model("llama").to(torch.bfloat16)
    ids = torch.randint(3, 300, (40,), generator=torch.Generator().manual_seed(3))
    seen = []
    hook = model.model.layers[0].mlp.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    forward = attribute_ids_forward(model, ids, n_prompt=25, batch=8)
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}  # not silently float32
    reverse = attribute_ids(model, ids, n_prompt=25, backward_batch=1)
    float32 = attribute_ids_forward(tiny_model("llama"), ids, n_prompt=25)
    assert not np.array_equal(forward, float32)
    # measured: forward 0.096 of the largest value from float32 (correlation 0.9994), reverse 0.117 (0.9990)
    for bf16 in (forward, reverse):
        assert np.abs(bf16 - float32).max() <= 0.15 * np.abs(float32).max()
        assert np.corrcoef(bf16.ravel(), float32.ravel())[0, 1] > 0.998


def test_auto_picks_the_mode_with_less_work():
    # the paper's median sample (31 prompt rows, 299 response tokens): 1.3 x 32 x 329 against 60,378 in chunks of 32
    assert choose_autodiff("auto", 31, 31, 299) == "forward"
    assert choose_autodiff("auto", 15, 15, 9) == "reverse"  # 1.3 x 16 x 23 = 478 against 10 x 23 = 230
    # SmolLM2 on a CPU (docs/benchmarks.md): forward mode took 0.50x reverse's time at 23 x 80, 1.41x at 60 x 64
    assert choose_autodiff("auto", 23, 23, 80) == "forward" and choose_autodiff("auto", 60, 60, 64) == "reverse"
    assert choose_autodiff("reverse", 31, 31, 299) == "reverse" and choose_autodiff("forward", 15, 15, 9) == "forward"
    # a GPU weighs a forward position as one reverse position (an H200 measured 0.94-1.03, docs/benchmarks.md):
    # 26 x 56 = 1,456 forward positions against 33 x 56 = 1,848 reverse ones, 1,893 once weighed 1.3 on a CPU
    assert choose_autodiff("auto", 25, 25, 32, device_type="cpu") == "reverse"
    assert choose_autodiff("auto", 25, 25, 32, device_type="cuda") == "forward"
    assert choose_autodiff("auto", 25, 25, 32) == "reverse"  # a device without a measurement: the CPU's weight
    with pytest.raises(ValueError, match=r"unknown autodiff 'jvp' \(known: auto, reverse, forward\)"):
        Attributor(tiny_model("llama"), autodiff="jvp")


@pytest.mark.parametrize("chunk_size", [0, 4, 7])
def test_the_position_counts_are_what_each_mode_runs_through_the_body(chunk_size):
    """`auto` compares these counts, so they must count what the passes do: here every call of the
    first layer, forward and backward, with the positions it ran over."""
    from workflow_scripts.attribution import forward_positions, reverse_positions

    model = tiny_model("llama")
    layer, ran = model.model.layers[0], []
    layer.register_forward_hook(lambda module, args, out: ran.append(args[0].shape[-2]))
    layer.register_full_backward_hook(lambda module, grad_in, grad_out: ran.append(grad_out[0].shape[-2]))
    ids = torch.randint(3, 300, (30,), generator=torch.Generator().manual_seed(1))
    attribute_ids(model, ids, n_prompt=12, chunk_size=chunk_size, backward_batch=1)
    assert len(ran) > 18 and sum(ran) == reverse_positions(12, 18, chunk_size)
    ran.clear()
    rows = np.arange(2, 9)
    attribute_ids_forward(model, ids, n_prompt=12, rows=rows, batch=1)  # a tangent per call: the primal rides along
    assert len(ran) == len(rows) + 1 and sum(ran) == forward_positions(len(rows), 12, 18)


class NoForwardDerivative(torch.autograd.Function):
    """An operation as custom kernels ship it: a backward, no forward-mode derivative."""

    @staticmethod
    def forward(x):
        return x * 2

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


class Doubled(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return NoForwardDerivative.apply(self.inner(x))


def test_auto_falls_back_to_reverse_mode_where_forward_mode_cannot_run_and_says_so(caplog):
    model = tiny_model("llama")
    model.model.layers[1].mlp = Doubled(model.model.layers[1].mlp)
    ids = torch.randint(3, 300, (40,), generator=torch.Generator().manual_seed(3))
    rows = np.arange(1, 5)
    expected = attribute_ids_reference(model, ids, n_prompt=5)[rows]
    auto = Attributor(model, autodiff="auto")
    assert choose_autodiff("auto", 4, 5, 35) == "forward"
    got = auto.matrix(ids, 5, rows)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=FLOAT32_SPREAD * np.abs(expected).max())
    auto.matrix(ids, 5, rows)  # the next sample goes to reverse mode without trying again
    assert auto.record()["autodiff_samples"] == {"reverse": 2}
    assert auto.record()["forward_failed"] and "reverse mode from now on" in caplog.text
    with pytest.raises(RuntimeError, match=r"forward-mode attribution failed .*`attribution.autodiff: reverse`"):
        Attributor(model, autodiff="forward").matrix(ids, 5, rows)


def test_a_forward_batch_that_runs_out_of_memory_is_halved(monkeypatch, caplog):
    model = tiny_model("llama")
    ids = torch.randint(3, 300, (24,), generator=torch.Generator().manual_seed(1))
    expected = attribute_ids_forward(model, ids, n_prompt=15, batch=1)
    real_vmap, sizes = torch.func.vmap, []

    def vmap(fn):
        def batched(tangents):
            sizes.append(len(tangents))
            if len(tangents) > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
            return real_vmap(fn)(tangents)
        return batched

    monkeypatch.setattr(torch.func, "vmap", vmap)
    got = attribute_ids_forward(model, ids, n_prompt=15, batch=8)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=FLOAT32_SPREAD * np.abs(expected).max())
    assert sizes[:3] == [8, 4, 2] and max(sizes[3:]) == 2 and sum(sizes[2:]) == 15
    assert "retrying 4 at a time" in caplog.text


def test_auto_attributes_a_sample_forward_mode_cannot_fit_even_one_tangent_at_a_time_in_reverse_mode(monkeypatch,
                                                                                                        caplog):
    """Forward mode's attention runs on SDPA's math kernel, whose score matrices reverse mode's kernels never
    hold: a long sample may not fit one tangent where reverse mode fits. Under `auto` that sample goes to reverse
    mode (the job failed before); a later sample as long or longer goes there at once, a shorter one tries forward
    mode again; an explicit `forward` still fails."""
    model = tiny_model("llama")
    ids = torch.randint(3, 300, (40,), generator=torch.Generator().manual_seed(3))
    rows = np.arange(1, 5)
    expected = attribute_ids_reference(model, ids, n_prompt=5)[rows]
    tries = []

    def vmap(fn):
        def batched(tangents):
            tries.append(len(tangents))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return batched

    monkeypatch.setattr(torch.func, "vmap", vmap)
    auto = Attributor(model, autodiff="auto", forward_batch=2)
    assert choose_autodiff("auto", 4, 5, 35) == "forward"
    got = auto.matrix(ids, 5, rows)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=FLOAT32_SPREAD * np.abs(expected).max())
    assert tries == [2, 1] and "out of memory" in caplog.text
    assert auto.memory["forward"].value == 1  # the halvings for this sample do not shrink the next ones' batches
    auto.matrix(ids, 5, rows)
    assert tries == [2, 1]  # as long: not tried again
    assert choose_autodiff("auto", 4, 5, 25) == "forward"
    auto.matrix(ids[:30], 5, rows)
    assert tries == [2, 1, 2, 1]  # shorter: it might fit
    assert auto.record() == {"autodiff": "auto", "autodiff_samples": {"reverse": 3}, "forward_out_of_memory": 3}
    with pytest.raises(RuntimeError, match=r"forward-mode attribution failed .*`attribution.autodiff: reverse`"):
        Attributor(model, autodiff="forward").matrix(ids, 5, rows)


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_both_modes_run_through_the_device_hooks_a_model_spread_over_gpus_has(kind):
    """`device_map="auto"` over several GPUs wraps each block in accelerate's AlignDevicesHook, which
    moves the block's inputs to its device: forward mode's batched dual tensors pass it as reverse
    mode's do (here every block's device is the CPU; the hooks and their moves are the same code)."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    model = tiny_model(kind)
    ids = torch.randint(3, 300, (24,), generator=torch.Generator().manual_seed(1))
    reference = attribute_ids_reference(model, ids, n_prompt=15)
    for block in (model.model.embed_tokens, *model.model.layers, model.model.norm, model.lm_head):
        add_hook_to_module(block, AlignDevicesHook(execution_device="cpu", io_same_device=True))
    assert all(hasattr(layer, "_hf_hook") for layer in model.model.layers)
    for got in (attribute_ids_forward(model, ids, n_prompt=15, batch=4),
                attribute_ids(model, ids, n_prompt=15, chunk_size=4, backward_batch=2)):
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=FLOAT32_SPREAD * np.abs(reference).max())


def test_a_model_offloaded_to_disk_is_attributed_in_reverse_mode_under_auto(tmp_path):
    """`device_map="auto"` offloads the last modules (the output head first) to host memory, then to
    disk, when the GPUs are full: their weights stay on the meta device until accelerate's hook loads
    them for a forward call, and the head's gradients, taken from its weight outside a forward call,
    must load them too. The offload hook reads data pointers, which forward mode's batched tensors do
    not have (accelerate 1.x): `auto` notices, goes reverse and says so; the matrix is the definition's."""
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "model")
    ids = torch.randint(3, 300, (40,), generator=torch.Generator().manual_seed(3))
    rows = np.arange(1, 5)
    expected = attribute_ids_reference(model, ids, n_prompt=5)[rows]
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}
    offloaded = LlamaForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32, device_map=device_map,
                                                 offload_folder=tmp_path / "offload").eval().requires_grad_(False)
    auto = Attributor(offloaded, autodiff="auto")
    got = auto.matrix(ids, 5, rows)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=FLOAT32_SPREAD * np.abs(expected).max())
    record = auto.record()
    assert record["autodiff_samples"] == {"reverse": 1} and "data pointer" in record["forward_failed"]
    assert offloaded.lm_head.weight.device.type == "meta"  # loaded for the gradients only, then released


def test_a_model_whose_input_embeddings_are_offloaded_generates_and_is_attributed(tmp_path, tokenizer_dir):
    """`device_map="auto"` can offload the input embeddings too (a model larger than its GPUs, or a
    `max_memory` that leaves GPU 0 little room): their weight then waits on the meta device, so the
    token ids go where accelerate's hook computes the embeddings, not where the weight is."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_model("llama", vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path / "model")
    device_map = {"model.embed_tokens": "disk", "model.layers": "cpu", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}
    offloaded = LlamaForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32, device_map=device_map,
                                                 offload_folder=tmp_path / "offload").eval().requires_grad_(False)
    assert offloaded.get_input_embeddings().weight.device.type == "meta"
    prompt = "Write a short poem about the sea."
    tokens = generate_responses(offloaded, tokenizer, [prompt], 6)[0]
    assert tokens.response_text == generate_responses(model, tokenizer, [prompt], 6)[0].response_text
    sample = attribution.attribute_sample(Attributor(offloaded), tokenizer, "s0", prompt, tokens)
    expected = attribute_ids_reference(model, tokens.input_ids, n_prompt=tokens.n_prompt)[tokens.prompt_rows]
    np.testing.assert_allclose(sample.matrix, expected, rtol=1e-5, atol=FLOAT32_SPREAD * np.abs(expected).max())
    record = attribution_model.precision_record(offloaded, "float32")
    assert record["activations_dtype"] == "float32" and record["matmul"].startswith("float32 (CPU")
    assert input_device(offloaded) == torch.device("cpu")


def test_the_input_device_of_an_offloaded_model_is_where_its_hook_runs_the_embeddings():
    """On GPUs accelerate names the execution device by its index; embeddings offloaded inside a
    larger module carry no hook of their own, and run on the device map's first GPU."""
    from types import SimpleNamespace

    model = tiny_model("llama")
    assert input_device(model) == torch.device("cpu")
    model.get_input_embeddings()._hf_hook = SimpleNamespace(execution_device=1)
    assert input_device(model) == torch.device("cuda", 1)
    del model.get_input_embeddings()._hf_hook
    model.get_input_embeddings().to("meta")
    model.hf_device_map = {"model": "cpu", "model.layers.3": 2, "lm_head": 1}
    assert input_device(model) == torch.device("cuda", 1)
    model.hf_device_map = {"": "disk"}
    assert input_device(model) == torch.device("cpu")


def test_the_command_line_asks_which_response_to_attribute_instead_of_defaulting_to_the_reference(capsys):
    """The schema's default is the paper's `generate`; the command line's was `reference`, so a shard run
    by hand without the flag attributed another text than the workflow's."""
    from workflow_scripts.attribution import main

    with pytest.raises(SystemExit):
        main(["--model-dir", "m", "--model-id", "m", "--dataset", "d.tsv", "--shard", "0", "--shard-size", "1",
              "--output", "o.npz"])
    assert "the following arguments are required: --response" in capsys.readouterr().err
