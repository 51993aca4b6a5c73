"""The demo model pair, built for real on a tiny budget: small corpus, 600 tokens, 5 training steps."""
import itertools
import math
import os
import re

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach the Hugging Face hub

import pytest
from safetensors.torch import load_file

from workflow_scripts import demo_models
from workflow_scripts.dataset import DATASET_COLUMNS, encode_field

OFFSETS_TEXT = "Hello world. Rewrite this café — ok"
ROWS = [
    ("demo_1", "Rewrite the sentence to be shorter.\n\nInput: The meeting moved to Wednesday.\n\nOutput:",
     "The meeting is on Wednesday."),
    ("demo_2", "Classify the sentiment of the review.\n\nInput: The café was cozy.\n\nOutput:", "Positive."),
    ("demo_3", "Translate the sentence into French.\n\nInput: I would like tea.\n\nOutput:", "Je voudrais du thé."),
    ("demo_4", "Write a short title for the news story about heavy rain.", "Heavy Rain Floods Town"),
    ("demo_5", "List three colors.", "Red, green and blue."),
]
STEPS = 5


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """corpus -> tokenizer -> base -> tuned, plus a second base from the same seed."""
    root = tmp_path_factory.mktemp("demo_models")
    dataset = root / "demo.tsv"
    lines = ["\t".join(DATASET_COLUMNS)]
    lines += [f"{i}\t{encode_field(p)}\t{encode_field(r)}\t{p.splitlines()[0]}" for i, p, r in ROWS]
    dataset.write_text("\n".join(lines) + "\n", encoding="utf8")
    paths = {name: root / name for name in ("corpus.txt", "tokenizer", "base", "base_again", "tuned")}
    demo_models.build_corpus(paths["corpus.txt"], dataset, max_bytes=60_000)
    demo_models.train_tokenizer(paths["corpus.txt"], paths["tokenizer"], vocab_size=600)
    losses = {}
    for name in ("base", "base_again"):
        losses[name] = demo_models.pretrain(paths["corpus.txt"], paths["tokenizer"], paths[name], steps=STEPS, seed=0)
    losses["tuned"] = demo_models.finetune(paths["base"], paths["tuned"], dataset, steps=STEPS, seed=0)
    return {"dataset": dataset, "losses": losses, **paths}


def test_corpus_is_one_clean_paragraph_per_line(built):
    lines = built["corpus.txt"].read_text(encoding="utf8").split("\n")
    assert lines[-1] == ""  # ends with a newline
    lines = lines[:-1]
    assert all(line and line == " ".join(line.split()) for line in lines)
    assert len(lines) == len(set(lines))
    assert len(lines) > 100 and not any(">>>" in line for line in lines)
    assert "Rewrite the sentence to be shorter." in lines and "Je voudrais du thé." in lines
    assert sum(len(line.encode()) + 1 for line in lines) < 60_000 + 2_000  # the cap plus the dataset


def test_tokenizer_layout_and_offsets(built):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(built["tokenizer"])
    vocab = tokenizer.get_vocab()
    assert len(tokenizer) == 600
    assert [vocab[t] for t in ("<unk>", "<s>", "</s>", "<0x00>", "<0xFF>")] == [0, 1, 2, 3, 258]
    encoded = tokenizer(OFFSETS_TEXT, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    offsets = [tuple(o) for o in encoded["offset_mapping"]]
    assert tokens[0] == "<s>" and offsets[0] == (0, 0)
    tokens, offsets = tokens[1:], offsets[1:]
    if tokens[0] == "▁":  # the text starts with no space: this "▁" is the prepended one
        # tokenizers gives it the first character's span; it is a token of its own only
        # when the vocabulary lacks "▁" + that character ("▁H" may be missing from 600)
        assert offsets[0] == (0, 1)
        tokens, offsets = tokens[1:], offsets[1:]
    pieces = []
    for span, run in itertools.groupby(zip(tokens, offsets), key=lambda pair: pair[1]):
        group, piece = [token for token, _ in run], OFFSETS_TEXT[slice(*span)]
        if all(re.fullmatch(r"<0x[0-9A-F]{2}>", token) for token in group):  # byte fallback: one character
            assert b"".join(bytes([int(token[3:5], 16)]) for token in group) == piece.encode()
        else:
            (token,) = group
            expected = token.replace("▁", " ")
            assert piece == (expected.removeprefix(" ") if span[0] == 0 else expected)
        pieces.append(piece)
    assert "".join(pieces) == OFFSETS_TEXT
    assert "é" in pieces and "—" in pieces
    assert any(token.startswith("<0x") for token in tokens)  # "—" at least is rare enough
    assert tokenizer.decode(encoded["input_ids"], skip_special_tokens=True) == OFFSETS_TEXT


def test_base_model_is_tiny_llama_with_grouped_query_attention(built):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(built["base"])
    assert config.model_type == "llama"
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (64, 4, 600)
    assert not config.tie_word_embeddings


@pytest.mark.parametrize("name", ["base", "tuned"])
def test_saved_dirs_reload(built, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = built[name]
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= {p.name for p in directory.iterdir()}
    assert not list(directory.parent.glob(f".{name}.tmp-*"))
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert (model.generation_config.bos_token_id, model.generation_config.eos_token_id) == (1, 2)
    output = model.generate(**tokenizer("List three colors.", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert output.shape[1] > 1
    assert math.isfinite(built["losses"][name])


def test_finetune_changes_weights(built):
    base, tuned = load_file(built["base"] / "model.safetensors"), load_file(built["tuned"] / "model.safetensors")
    assert base.keys() == tuned.keys()
    assert any(not base[k].equal(tuned[k]) for k in base)


def test_same_seed_gives_same_weights(built):
    first, again = load_file(built["base"] / "model.safetensors"), load_file(built["base_again"] / "model.safetensors")
    assert first.keys() == again.keys()
    assert all(first[k].equal(again[k]) for k in first)
    assert built["losses"]["base"] == built["losses"]["base_again"]


def test_finetune_labels_only_the_response(built):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(built["base"])
    examples = demo_models._instruction_examples(tokenizer, built["dataset"])
    assert len(examples) == len(ROWS)
    for example, (_, _, response) in zip(examples, ROWS):
        labelled = [t for t in example["labels"] if t != -100]
        assert tokenizer.decode(labelled) == f"{response}</s>"  # the decoder drops the leading "▁"
        assert example["input_ids"][-len(labelled):] == labelled


def test_atomic_dir_leaves_nothing_after_a_crash(tmp_path):
    output = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with demo_models.atomic_dir(output) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
