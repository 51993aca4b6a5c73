"""The local annotator's cached answers follow its decoding code: raising `local_chat`'s method version
(code_versions.json) asks the model again instead of reading the answers the old decoder wrote."""
from __future__ import annotations

import json

import pytest
import torch
from test_local_chat import byte_tokenizer, tiny_model

from workflow_scripts import annotate, code_version
from workflow_scripts.tsv import WORDS_COLUMNS, encode_words


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices; the machine is shared
    yield tiny_model(tmp_path_factory.mktemp("versioned-chat"), byte_tokenizer(), taught=False, initializer_range=0.2)
    torch.set_num_threads(threads)


def set_local_chat_version(monkeypatch, version: int) -> None:
    recorded = json.loads(code_version.VERSIONS_FILE.read_text())
    patched = {**recorded, "versions": {**recorded["versions"], "local_chat": version}}
    monkeypatch.setattr(code_version, "_versions_file", lambda: patched)


def test_a_new_local_decoder_version_is_not_answered_from_the_old_versions_cache(model_dir, tmp_path, monkeypatch):
    shard = tmp_path / "base-0.tsv"
    rows = [f"base\tNA\t0\tFFN\t0\t{r}\t0.1\t{encode_words([f'w{r}', 'x', 'y'])}" for r in (1, 2)]
    shard.write_text("\n".join(["\t".join(WORDS_COLUMNS), *rows]) + "\n")
    cache = tmp_path / "cache.sqlite"

    def run(version: int) -> tuple[int, int]:
        set_local_chat_version(monkeypatch, version)
        stats = tmp_path / "stats.json"
        annotate.run_step("describe", 0, [str(shard)], str(tmp_path / "out.tsv"), str(stats),
                          {"kind": "local", "path": str(model_dir)}, str(cache), max_tokens=4,
                          runtime={"batch_size": 2})
        report = json.loads(stats.read_text())
        return report["requests"], report["cache_hits"]

    assert run(1) == (2, 0)
    assert run(1) == (0, 2)  # the same decoder: its answers stay cached
    assert run(2) == (2, 0)  # a new decoder on the same model files and messages asks again
    assert run(2) == (0, 2)
    assert run(1) == (0, 2)  # the old version's entries are kept, under their own key
