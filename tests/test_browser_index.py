"""The explanation browser's data: rows per layer, row groups, the word index and the escaping of its files."""
from __future__ import annotations

import ast
import json
import re

import pytest
from synthetic_browser import MODELS, XSS, write_inputs

from workflow_scripts import browser_index
from workflow_scripts.browser_data import Component, HeadRow, components, head_rows
from workflow_scripts.browser_index import build, deltas, fnv1a, js_file, row_groups
from workflow_scripts.tsv import BILINEAR_COLUMNS, WORDS_COLUMNS, write_tsv

PREFIX = re.compile(re.escape("(window.SHIFTLENS_DATA = window.SHIFTLENS_DATA || {})[")
                    + r'("[^"]*")\] = JSON\.parse\((.*)\);\n$', re.S)


def read_js(path):
    """(name, data) of a data file, decoded as the browser does: the JS literal, then JSON.parse."""
    match = PREFIX.match(path.read_text(encoding="utf8"))
    assert match, path
    return json.loads(match[1]), json.loads(ast.literal_eval(match[2]))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    inputs = write_inputs(folder)
    out = folder / "browse"
    files = build("demo", list(MODELS), list(MODELS), inputs["attention"], inputs["ffn"], inputs["seeds"],
                  inputs["describe"], inputs["task"], inputs["level"], str(out), per_bucket=50, chunk_bytes=2000)
    return inputs, files, out


def model_rows(files, kind, m):
    """A model's rows in row-id order: its chunk files, concatenated."""
    count = -(-files["manifest"]["kinds"][kind]["rows"][m] // files["manifest"]["kinds"][kind]["chunk_rows"])
    return [row for c in range(count) for row in files[f"{kind}-{m}-{c}"]]


def test_fnv1a_matches_the_published_test_vectors():
    # FNV-1a 32 bit: the reference values of the algorithm (browser.js computes the same function)
    assert [fnv1a(s) for s in ("", "a", "foobar")] == [0x811C9DC5, 0xE40C292C, 0xBF9CF968]


def test_row_groups_and_deltas():
    assert row_groups([(0, 0), (0, 0), (0, 1), (1, 0), (1, 0), (1, 0)]) == [[0, 0, 2], [0, 1, 1], [1, 0, 3]]
    assert deltas([3, 4, 10]) == [3, 1, 6]


def test_rows_are_cut_by_model_and_layer_in_layer_head_rank_order(built):
    inputs, files, out = built
    manifest = files["manifest"]
    attention, ffn = manifest["kinds"]["attention"], manifest["kinds"]["ffn"]
    assert attention["rows"] == [3 * 4 * 10] * 2 and ffn["rows"] == [3 * 40] * 2
    assert attention["groups"][0] == [[layer, head, 10] for layer in range(3) for head in range(4)]
    assert ffn["groups"][1] == [[layer, 0, 40] for layer in range(3)]
    assert [m["id"] for m in manifest["models"]] == list(MODELS) and manifest["seeds"] == [0, 1]
    layer1 = model_rows(files, "attention", 1)[40:80]
    assert [(r[0], r[2]) for r in layer1] == [(h, rank) for h in range(4) for rank in range(1, 11)]
    layer2 = model_rows(files, "ffn", 0)[80:]
    assert [r[1] for r in layer2] == pytest.approx([1 / (rank + 1) for rank in range(1, 41)], abs=1e-4)
    # every file written, each decodes to what was built
    written = {p.stem for p in (out / "data").glob("*.js")}
    assert written == set(files)
    assert {p.name for p in out.iterdir()} == {"index.html", "browser.js", "browser.css", "data"}
    for name in ("manifest", "attention-0-0", "ffn-1-2", "words-attention", "index-attention-3"):
        assert read_js(out / "data" / f"{name}.js") == (name, json.loads(json.dumps(files[name])))


def test_rows_are_chunked_by_size_each_chunk_holding_chunk_rows_consecutive_rows(built):
    inputs, files, _ = built
    for kind, expected in (("attention", inputs["expected"]["heads"]), ("ffn", inputs["expected"]["ffn"])):
        size = files["manifest"]["kinds"][kind]["chunk_rows"]
        chunks = sorted((int(n.rsplit("-", 1)[1]), len(rows)) for n, rows in files.items()
                        if n.startswith(f"{kind}-0-"))
        assert 1 < size < 120 and chunks == [(c, min(size, 120 - c * size)) for c in range(-(-120 // size))]
        for m, model in enumerate(MODELS):  # the rows, in id order, hold the words the shards hold
            rows = model_rows(files, kind, m)
            got = [[w for p in r[4] for w in p] if kind == "attention" else r[2] for r in rows]
            assert got == expected[model]
        sizes = [len(json.dumps(files[f"{kind}-0-{c}"])) for c, _ in chunks[:-1]]
        assert all(1000 < n < 4000 for n in sizes), sizes  # about chunk_bytes=2000 each


def _lookup(files, kind, word):
    key = word.lower()
    bucket = files[f"index-{kind}-{fnv1a(key) % files['manifest']['kinds'][kind]['buckets']}"]
    return [list(_undelta(ids)) for ids in bucket.get(key, [[], []])]


def _undelta(values):
    total = 0
    for d in values:
        total += d
        yield total


@pytest.mark.parametrize("kind,word", [("attention", "translate"), ("attention", XSS), ("attention", "__proto__"),
                                       ("ffn", "w07"), ("ffn", "TRANSLATE"), ("ffn", "a\u2028b")])
def test_the_word_index_finds_exactly_the_rows_holding_the_word(built, kind, word):
    inputs, files, _ = built
    expected = inputs["expected"]["heads" if kind == "attention" else "ffn"]
    found = _lookup(files, kind, word)
    for m, model in enumerate(MODELS):
        truth = [i for i, words in enumerate(expected[model]) if word.lower() in (w.lower() for w in words)]
        assert truth and found[m] == truth


def test_the_index_is_split_into_buckets_by_hash_and_lists_every_word(built):
    _, files, _ = built
    kind = files["manifest"]["kinds"]["attention"]
    assert kind["buckets"] == -(-kind["postings"] // 50) > 1
    buckets = [files[f"index-attention-{b}"] for b in range(kind["buckets"])]
    assert all(fnv1a(key) % kind["buckets"] == b for b, bucket in enumerate(buckets) for key in bucket)
    assert sum(len(ids) for bucket in buckets for entry in bucket.values() for ids in entry) == kind["postings"]
    words = files["words-attention"]
    assert words == sorted(words) and {w for w, _ in words} == {k for bucket in buckets for k in bucket}
    assert dict(words)["translate"] == sum(len(ids) for ids in _lookup(files, "attention", "translate"))


def test_every_seed_annotation_reaches_its_component(built):
    _, files, _ = built
    rank, score, words, notes = model_rows(files, "ffn", 1)[80]  # tuned, layer 2, rank 1
    assert rank == 1 and len(words) == 20
    # seed 0: (1 + 0) % 3 != 0, described; seed 1: (1 + 1) % 3 != 0, described
    assert notes == [[0, 1, f"{XSS} concept tuned 2 1 seed 0", "translation; coding", "semantic"],
                     [1, 1, f"{XSS} concept tuned 2 1 seed 1", "translation; coding", "semantic"]]
    base = model_rows(files, "ffn", 0)
    assert base[2][3] == [[0, 0, "Cannot Tell", "", ""], [1, 1, f"{XSS} concept base 0 3 seed 1",
                                                                      "translation; coding", "semantic"]]
    assert base[5][3] == []  # rank 6: beyond annotation.max_rank


def test_data_files_hold_no_markup_and_no_raw_line_separator(built):
    _, _, out = built
    for path in (out / "data").glob("*.js"):
        text = path.read_text(encoding="utf8")
        assert "<" not in text and "\u2028" not in text and "\u2029" not in text and text.count("\n") == 1, path
    awkward = {"w": [XSS, "it's", 'say "hi"', "back\\slash", "</script>", "a\u2028b", "__proto__"]}
    assert read_js_text(js_file("x", awkward)) == awkward


def read_js_text(text):
    return json.loads(ast.literal_eval(PREFIX.match(text)[2]))


def build_seed0(inputs, out):
    """The browser of write_inputs' files, seed 0 only."""
    return build("demo", list(MODELS), list(MODELS), inputs["attention"], inputs["ffn"], [0], inputs["describe"],
                 inputs["task"], inputs["level"], str(out))


def test_an_annotation_of_a_component_not_browsed_is_an_error_naming_its_line(tmp_path):
    inputs = write_inputs(tmp_path, layers=1, heads=1, dims=2, ranks=3, seeds=(0,), annotated=3)
    shard = inputs["ffn"][0]  # base, layer 0: its rank 1 left out
    lines = shard.read_text(encoding="utf8").splitlines(keepends=True)
    shard.write_text(lines[0] + "".join(lines[2:]), encoding="utf8")
    with pytest.raises(ValueError, match=r"linear_seed0\.tsv: line 2: model base layer 0 rank 1 is not an FFN "):
        build_seed0(inputs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_bad_number_in_an_annotation_file_is_named_with_its_line(tmp_path):
    inputs = write_inputs(tmp_path, layers=1, heads=1, dims=2, ranks=3, seeds=(0,), annotated=3)
    path = inputs["task"][0]
    lines = path.read_text(encoding="utf8").splitlines(keepends=True)
    fields = lines[2].split("\t")
    fields[6] = "one"  # Layer (after Task Explainable Words Summary Model Size)
    path.write_text("".join([*lines[:2], "\t".join(fields), *lines[3:]]), encoding="utf8")
    with pytest.raises(ValueError, match=r"linear_task_seed0\.tsv: line 3: Layer and Rank must be integers, found"):
        build_seed0(inputs, tmp_path / "out")


def test_a_model_missing_from_the_head_files_is_named(tmp_path):
    inputs = write_inputs(tmp_path, layers=1, heads=1, dims=2, ranks=3, seeds=(0,))
    with pytest.raises(ValueError, match="no head word pairs of the model 'other'"):
        build("demo", list(MODELS), ["base", "other"], inputs["attention"], inputs["ffn"], [0],
              inputs["describe"], inputs["task"], inputs["level"], str(tmp_path / "out"))


def test_a_paper_layout_file_is_read_as_table3_reads_it(tmp_path):
    path = tmp_path / "bilinear_words.tsv"
    write_tsv([("llama", "7B", 1, "QK", 0, 5, 2, "3.0", "go=went|||alone"),
               ("llama", "7B", 1, "QK", 0, 7, 1, "4.0", ""),
               ("vicuna", "7B", 0, "QK", 0, 1, 1, "1.0", "a=b")], BILINEAR_COLUMNS, path)
    (rows,) = head_rows([path], ["llama"])
    assert [(r.layer, r.head, r.dim, r.rank, r.pairs) for r in rows] == [(1, 0, 7, 1, []),
                                                                        (1, 0, 5, 2, [["go", "went"], ["alone"]])]


def test_the_command_line_checks_one_file_per_seed(tmp_path):
    inputs = write_inputs(tmp_path, layers=1, heads=1, dims=2, ranks=3, seeds=(0, 1))
    args = ["--pair", "demo", "--models", *MODELS, "--bilinear-names", *MODELS,
            "--attention", *map(str, inputs["attention"]), "--ffn", *map(str, inputs["ffn"]), "--seeds", "0,1,2",
            "--describe", *map(str, inputs["describe"]), "--task", *map(str, inputs["task"]),
            "--level", *map(str, inputs["level"]), "--output", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=r"--describe: 2 files for 3 seeds"):
        browser_index.main(args)
    browser_index.main([a if a != "0,1,2" else "0,1" for a in args])
    assert (tmp_path / "out" / "index.html").is_file()


def test_the_manifest_names_the_first_model_pre_trained_and_the_second_tuned(built):
    _, files, _ = built
    assert files["manifest"]["models"] == [{"id": "base", "role": "pre-trained"}, {"id": "tuned", "role": "tuned"}]


def test_a_score_that_is_not_finite_is_written_as_null():
    heads = [[HeadRow(0, 0, 3, 1, float("nan"), [["a", "b"]])], [HeadRow(0, 0, 1, 1, 2.0, [["c", "d"]])]]
    ffn = [[Component(0, 1, float("inf"), ["e"])], [Component(0, 1, 0.5, ["f"])]]
    files = browser_index.browser_files("demo", list(MODELS), heads, ffn, [])
    assert files["attention-0-0"] == [[0, 3, 1, None, [["a", "b"]]]] and files["ffn-0-0"] == [[1, None, ["e"], []]]
    assert read_js_text(js_file("attention-0-0", files["attention-0-0"]))[0][3] is None


def test_a_model_missing_from_the_ffn_files_is_named(tmp_path):
    inputs = write_inputs(tmp_path, layers=1, heads=1, dims=2, ranks=3, seeds=(0,))
    with pytest.raises(ValueError, match="no FFN components of the model 'other'"):
        components(inputs["ffn"], ["base", "other"])


def test_ffn_rows_of_a_model_not_browsed_are_skipped_wherever_they_stand_in_a_file(tmp_path):
    inputs = write_inputs(tmp_path, layers=1, heads=1, dims=2, ranks=3, seeds=(0,))
    path = inputs["ffn"][0]  # base, layer 0: a row of another model before its rows
    header, *lines = path.read_text(encoding="utf8").splitlines(keepends=True)
    path.write_text(header + lines[0].replace("base", "other", 1) + "".join(lines), encoding="utf8")
    (rows,) = components([path], ["base"])
    assert [(c.layer, c.rank) for c in rows] == [(0, 1), (0, 2), (0, 3)]


def test_a_blank_score_in_an_ffn_file_is_an_error_naming_its_line(tmp_path):
    inputs = write_inputs(tmp_path, layers=1, heads=1, dims=2, ranks=3, seeds=(0,))
    path = inputs["ffn"][0]
    header, *lines = path.read_text(encoding="utf8").splitlines(keepends=True)
    fields = lines[1].split("\t")
    fields[WORDS_COLUMNS.index("Score")] = ""
    path.write_text(header + lines[0] + "\t".join(fields) + "".join(lines[2:]), encoding="utf8")
    with pytest.raises(ValueError, match=r"ffn-base-0\.tsv: line 3: Layer, Rank and Score must be numbers"):
        components([path], ["base"])


def test_a_label_of_a_component_the_seeds_describe_file_does_not_hold_is_an_error_naming_its_line(tmp_path):
    inputs = write_inputs(tmp_path, layers=1, heads=1, dims=2, ranks=3, seeds=(0,), annotated=3)
    path = inputs["describe"][0]  # base, layer 0, rank 1 left out: its task and level labels stay
    lines = path.read_text(encoding="utf8").splitlines(keepends=True)
    path.write_text(lines[0] + "".join(lines[2:]), encoding="utf8")
    with pytest.raises(ValueError, match=r"linear_task_seed0\.tsv: line 2: seed 0 labels a component its describe "):
        build_seed0(inputs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_command_line_refuses_more_annotation_files_than_seeds(tmp_path):
    inputs = write_inputs(tmp_path, layers=1, heads=1, dims=2, ranks=3, seeds=(0, 1))
    with pytest.raises(ValueError, match=r"--describe: 2 files for 1 seeds"):
        build_seed0(inputs, tmp_path / "out")
