"""A model's tokenizer: one built without its vocabulary is refused by every job that loads one, and a
SentencePiece model whose only vocabulary file is `tokenizer.model` (LLaMA-1, Vicuna) loads.

transformers 5 builds a `LlamaTokenizer` from tokenizer_config.json alone when the vocabulary file is
missing: three special tokens, and every text split into nothing. Before the check, the head job then
wrote empty heads and the FFN job arbitrary words for every component, without an error.
"""
from __future__ import annotations

import io
import json
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

from workflow_scripts import attention, attribution_model, ffn, word_pieces  # noqa: E402
from workflow_scripts.model_tokenizer import load_tokenizer  # noqa: E402
from workflow_scripts.word_pieces import word_token_ids  # noqa: E402

WORDS = [f"{a}{b}" for a in ("cat", "dog", "sun", "sea", "tree") for b in ("", "s", "ty", "ly")]
LLAMA_TOKENIZER_CONFIG = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                          "unk_token": "<unk>"}


def tiny_llama(directory, vocab_size: int):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False))
    model.save_pretrained(directory)
    (directory / "tokenizer_config.json").write_text(json.dumps(LLAMA_TOKENIZER_CONFIG))
    return directory


def explainer_inputs(tmp_path):
    (tmp_path / "vocab.tsv").write_text("".join(f"{w}\t{100 - i}\n" for i, w in enumerate(WORDS)))
    g = torch.Generator().manual_seed(0)
    with open(tmp_path / "glove.txt", "w") as handle:
        for word in WORDS:
            handle.write(word + " " + " ".join(f"{v:.5f}" for v in torch.randn(6, generator=g).tolist()) + "\n")
    return str(tmp_path / "vocab.tsv"), {"kind": "glove-text", "path": str(tmp_path / "glove.txt")}


def test_a_tokenizer_without_its_vocabulary_is_refused_by_every_job_that_loads_one(tmp_path):
    model_dir = tiny_llama(tmp_path / "model", vocab_size=300)  # tokenizer_config.json, no vocabulary file
    vocabulary, _ = explainer_inputs(tmp_path)
    # transformers 5 builds one that splits text into nothing; transformers 4's SentencePiece loader fails
    refused = rf"tokenizer of {model_dir}.*without its vocabulary.*tokenizer\.json.*tokenizer\.model"
    pieces = tmp_path / "pieces.tsv"
    with pytest.raises(ValueError, match=refused):  # the job that cuts the words for both explainers
        word_pieces.main(["--model-dir", str(model_dir), "--vocabulary", vocabulary, "--output", str(pieces)])
    with pytest.raises(ValueError, match=refused):
        attribution_model.load_model(str(model_dir))
    assert not pieces.exists()


class NoPieces:
    """A tokenizer that knows some words and splits the others into nothing."""

    def tokenize(self, text):
        return {" cat": ["\u2581cat"]}.get(text, [])

    def convert_tokens_to_ids(self, tokens):
        return [7 for _ in tokens]


def test_words_split_into_nothing_are_named_not_given_a_zero_vector():
    with pytest.raises(ValueError, match=r"2 of 3 vocabulary words.*'dog', 'sun'"):
        word_token_ids(NoPieces(), ["cat", "dog", "sun"])


def test_more_than_five_words_split_into_nothing_are_named_five_then_an_ellipsis():
    words = ["cat"] + [f"w{i}" for i in range(6)]
    with pytest.raises(ValueError, match=r"6 of 7 vocabulary words split into no tokens "
                                         r"\('w0', 'w1', 'w2', 'w3', 'w4', \.\.\.\)$"):
        word_token_ids(NoPieces(), words)
    with pytest.raises(ValueError, match=r"\('w0', 'w1', 'w2', 'w3', 'w4'\)$"):
        word_token_ids(NoPieces(), words[:6])


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    """A LLaMA-style directory whose tokenizer is SentencePiece's tokenizer.model alone (no tokenizer.json),
    trained here on the vocabulary's words."""
    sentencepiece = pytest.importorskip("sentencepiece")
    directory = tmp_path_factory.mktemp("spm") / "model"
    directory.mkdir()
    lines = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 5
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=60, model_type="bpe", character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    return tiny_llama(directory, vocab_size=processor.get_piece_size()), processor


def test_a_sentencepiece_model_with_only_tokenizer_model_is_explained(sentencepiece_model, tmp_path):
    model_dir, processor = sentencepiece_model
    vocabulary, vectors = explainer_inputs(tmp_path)
    _, tokenizer = attribution_model.load_model(str(model_dir))
    assert len(tokenizer) == processor.get_piece_size()
    assert word_token_ids(tokenizer, WORDS) == [processor.encode(word) for word in WORDS]  # SentencePiece's own ids
    pieces = tmp_path / "pieces.tsv"
    word_pieces.main(["--model-dir", str(model_dir), "--vocabulary", vocabulary, "--output", str(pieces)])
    ffn.explain_layer(str(model_dir), "m", 1, str(pieces), str(tmp_path / "ffn.tsv"), rank=4, top_k=4)
    attention.explain_layer(str(model_dir), "m", 1, str(pieces), vectors, str(tmp_path / "heads.tsv"),
                            top_k=4, baseline_words=8)
    ffn_rows = (tmp_path / "ffn.tsv").read_text().splitlines()[1:]
    assert len(ffn_rows) == 4 and all(row.split("\t")[-1] for row in ffn_rows)
    assert len((tmp_path / "heads.tsv").read_text().splitlines()) == 1 + 4 * 8


def test_a_tokenizer_class_from_a_newer_transformers_names_both_versions(tmp_path):
    """transformers 5 saves a tokenizer as `TokenizersBackend`, a class transformers 4 does not have; its
    bare "does not exist" said nothing of why (CI's floors job, transformers 4.56, reading a SmolLM2
    folder converted by transformers 5.24). transformers 5 loads tokenizer.json whatever class it names."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    model_dir = tiny_llama(tmp_path / "model", vocab_size=300)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "transformers_version": "99.1.0"}))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "the": 3, "cat": 4}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(json.dumps({**LLAMA_TOKENIZER_CONFIG,
                                                                "tokenizer_class": "TokenizerFromTheFuture"}))
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert load_tokenizer(model_dir)("the cat", add_special_tokens=False)["input_ids"] == [3, 4]
    else:
        named = rf"{model_dir} was saved by transformers 99\.1\.0.*TokenizerFromTheFuture.*this is transformers "
        with pytest.raises(ValueError, match=named + re.escape(transformers.__version__)
                           + r": install transformers >=99, or save the model again with this one"):
            attribution_model.load_model(str(model_dir))


@pytest.mark.parametrize("saved_by, config_text, newer", [
    ("99.1.0", None, "99.1.0"),
    ("same major, later minor", None, None),
    ("not a version", None, None),
    (None, "[1, 2]", None),  # JSON, but not an object
    (None, "{not json", None),
])
def test_only_a_config_json_saved_by_a_later_major_of_transformers_is_reported_newer(tmp_path, saved_by,
                                                                                     config_text, newer):
    """Only a later major names a tokenizer class this transformers may lack; a later minor, a folder without a
    readable version, or a config.json that is no object says nothing (the load's own error stands)."""
    from workflow_scripts.model_tokenizer import saved_by_a_newer_major

    running = transformers.__version__.split(".")[0]
    if saved_by == "same major, later minor":
        saved_by = f"{running}.999.0"
    text = config_text if config_text is not None else json.dumps({"transformers_version": saved_by})
    (tmp_path / "config.json").write_text(text)
    assert saved_by_a_newer_major(tmp_path) == newer
    assert saved_by_a_newer_major(tmp_path / "no-model-here") is None


def test_a_tokenizer_that_adds_its_bos_but_splits_text_into_nothing_is_refused(tmp_path):
    """The probe is the text alone: a BOS the tokenizer adds around it is no piece of a word."""
    from tokenizers import Tokenizer, models, processors

    backend = Tokenizer(models.BPE(vocab={"<s>": 0, "</s>": 1}, merges=[]))  # no unk: unknown text is dropped
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    backend.save(str(tmp_path / "tokenizer.json"))
    # the class named: transformers 4 finds none in a folder without config.json
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                                "bos_token": "<s>", "eos_token": "</s>"}))
    with pytest.raises(ValueError, match=r"splits ' the' into no tokens: it was built without its vocabulary"):
        load_tokenizer(tmp_path)


def test_a_tokenizer_that_fails_to_load_from_a_folder_of_this_transformers_keeps_its_own_error(tmp_path):
    model_dir = tiny_llama(tmp_path / "model", vocab_size=300)
    (model_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "NoSuchTokenizer"}))
    with pytest.raises(ValueError) as error:
        load_tokenizer(model_dir)
    assert "was saved by transformers" not in str(error.value)
