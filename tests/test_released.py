"""The paper's released attributions: restricted unpickling, SentencePiece alignment, conversion."""
from __future__ import annotations

import codecs
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workflow_scripts.dataset import read_dataset
from workflow_scripts.released import (
    UnsafePickleError,
    align_pieces,
    detokenize,
    released_sample,
    safe_load_pickle,
)

REPO = Path(__file__).resolve().parents[1]


def write_pickle(path: Path, value, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps(value, protocol=protocol))
    return path


# --- the restricted unpickler: plain data loads -------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_strings_and_lists_load_under_every_protocol(tmp_path, protocol):
    record = {"ID": "s1", "Input": ["▁The", "▁café", "<0x0A>"], "n": 3, "x": 0.5, "ok": True, "none": None}
    assert safe_load_pickle(write_pickle(tmp_path / "a.pkl", record, protocol)) == record


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_dict_of_strings_and_a_float32_array_loads(tmp_path, protocol):
    explain = np.array([[0, 10, 7.5], [10, 0, 1]], dtype=np.float32)
    record = {"ID": "user_oriented_task_0", "Input": ["▁The", "▁sentence", "."], "Explain": explain}
    loaded = safe_load_pickle(write_pickle(tmp_path / "a.pkl", record, protocol))
    assert loaded["ID"] == "user_oriented_task_0"
    assert loaded["Input"] == ["▁The", "▁sentence", "."]
    assert loaded["Explain"].dtype == np.float32
    assert loaded["Explain"].tolist() == [[0, 10, 7.5], [10, 0, 1]]


# --- the restricted unpickler: anything else is refused -------------------------------------------


class RunsShell:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


class CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


class StartsProcess:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.target)],))


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


def assert_refused(path: Path, *fragments: str):
    with pytest.raises(UnsafePickleError) as error:
        safe_load_pickle(path)
    assert str(path) in str(error.value)
    for fragment in fragments:
        assert fragment in str(error.value)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_pickle_calling_os_system_is_refused_and_runs_nothing(tmp_path, protocol):
    target = tmp_path / "pwned.txt"
    path = write_pickle(tmp_path / "evil.pkl", {"ID": "x", "Explain": RunsShell(target)}, protocol)
    assert_refused(path, "system")
    assert not target.exists()
    # control: the same kind of payload is live under the ordinary unpickler
    control = tmp_path / "control.txt"
    pickle.loads(pickle.dumps(RunsShell(control), protocol=protocol))
    assert control.read_text().strip() == "pwned"


def test_a_pickle_referencing_builtins_eval_is_refused(tmp_path):
    assert_refused(write_pickle(tmp_path / "eval.pkl", [CallsEval()]), "builtins.eval")


def test_a_pickle_starting_a_subprocess_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "touched.txt"
    assert_refused(write_pickle(tmp_path / "popen.pkl", StartsProcess(target)), "subprocess.Popen")
    assert not target.exists()


def test_a_pickled_instance_of_a_user_class_is_refused(tmp_path):
    assert_refused(write_pickle(tmp_path / "point.pkl", {"p": Point(1, 2)}), "Point")


def test_an_object_dtype_array_is_refused_even_when_nested(tmp_path):
    array = np.array([1, "a"], dtype=object)
    assert_refused(write_pickle(tmp_path / "obj.pkl", array), "object-dtype")
    assert_refused(write_pickle(tmp_path / "nested.pkl", {"Explain": [array]}), "object-dtype")


# set(numpy.ndarray((1,), 'O', b'AAAAAAAA')) in raw protocol 2 opcodes: it names only allowed globals
# (builtins set, numpy ndarray), but numpy.ndarray called with an object dtype and a bytes buffer
# makes an object array whose element "pointers" are the attacker's bytes; iterating it (set(...))
# dereferences 0x4141414141414141.
FORGED_OBJECT_ARRAY = (
    b"\x80\x02"
    b"c__builtin__\nset\n"
    b"cnumpy\nndarray\n"
    b"K\x01\x85" b"X\x01\x00\x00\x00O" b"C\x08AAAAAAAA" b"\x87R"
    b"\x85R."
)


LOAD_IN_CHILD = (  # a child interpreter: a crash or an allocation failure cannot take pytest down
    "import sys\n"
    "from workflow_scripts.released import safe_load_pickle, UnsafePickleError\n"
    "try:\n"
    "    safe_load_pickle(sys.argv[1])\n"
    "except UnsafePickleError as error:\n"
    "    print('refused:', error)\n"
)


def load_in_child(path: Path, script: str = LOAD_IN_CHILD, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_a_pickle_forging_an_object_array_from_bytes_is_refused_without_crashing(tmp_path):
    path = tmp_path / "forged.pkl"
    path.write_bytes(FORGED_OBJECT_ARRAY)
    result = load_in_child(path)
    assert result.returncode == 0, f"the interpreter died with {result.returncode}: {result.stderr[-500:]}"
    assert result.stdout.startswith("refused:")
    assert str(path) in result.stdout


# --- align_pieces / detokenize ---------------------------------------------------------------


def test_align_pieces_gives_character_offsets_with_the_marker_space_in_the_token():
    text = "The sentence.\nInput: café"
    pieces = ["▁The", "▁sentence", ".", "<0x0A>", "Input", ":", "▁café"]
    # "▁The": the dummy-prefix space is absent from the text -> (0, 3); "▁sentence" takes the
    # space before it -> (3, 12), as a Hugging Face Metaspace tokenizer reports; "." (12, 13);
    # the byte piece <0x0A> is the newline (13, 14); "Input" (14, 19); ":" (19, 20); "▁café" (20, 25).
    offsets = align_pieces(pieces, text)
    assert offsets.dtype == np.int64
    assert offsets.tolist() == [[0, 3], [3, 12], [12, 13], [13, 14], [14, 19], [19, 20], [20, 25]]
    assert [text[s:e] for s, e in offsets] == ["The", " sentence", ".", "\n", "Input", ":", " café"]


def test_align_pieces_gives_every_byte_piece_of_a_character_its_span():
    # "—" is U+2014, UTF-8 E2 80 94: all three byte pieces span the character, as Hugging Face
    # fast tokenizers report byte-fallback pieces, so none is lost from an instruction mask.
    offsets = align_pieces(["▁a", "<0xE2>", "<0x80>", "<0x94>", "b"], "a—b")
    assert offsets.tolist() == [[0, 1], [1, 2], [1, 2], [1, 2], [2, 3]]


def test_align_pieces_gives_special_tokens_zero_width():
    offsets = align_pieces(["<s>", "▁Hi", "</s>"], "Hi")
    assert offsets.tolist() == [[0, 0], [0, 2], [2, 2]]


def test_align_pieces_skips_white_space_the_tokenizer_normalised_away():
    # "a \t b": "▁b" matches the space at 1, then skips the tab and the second space to reach "b"
    assert align_pieces(["▁a", "▁b"], "a \t b").tolist() == [[0, 1], [1, 5]]
    # a space after a newline may be present in the text or not
    assert align_pieces(["<0x0A>", "▁x"], "\n x").tolist() == [[0, 1], [1, 3]]
    assert align_pieces(["<0x0A>", "▁x"], "\nx").tolist() == [[0, 1], [1, 2]]


def test_align_pieces_raises_naming_the_context_and_token_on_a_mismatch():
    with pytest.raises(ValueError) as error:
        align_pieces(["▁The", "▁dog"], "The cat", "sample.pkl (Input)")
    message = str(error.value)
    assert message.startswith("sample.pkl (Input): token 1 '▁dog'")
    assert "character 4" in message


def test_align_pieces_raises_when_the_tokens_run_past_the_text():
    with pytest.raises(ValueError, match=r"sample.pkl \(Output\): token 2 '▁sat'"):
        align_pieces(["▁The", "▁cat", "▁sat"], "The cat", "sample.pkl (Output)")


def test_align_pieces_stops_skipping_white_space_at_the_character_the_token_spells():
    """A newline byte piece after a space the tokenizer dropped: the skip stops at the newline and the
    piece takes it, instead of skipping it too and running past the text."""
    assert align_pieces(["▁a", "<0x0A>", "b"], "a \nb").tolist() == [[0, 1], [1, 3], [3, 4]]


def test_align_pieces_gives_unk_and_pad_zero_width_like_the_other_special_tokens():
    assert align_pieces(["<unk>", "▁Hi", "<pad>"], "Hi").tolist() == [[0, 0], [0, 2], [2, 2]]
    assert detokenize(["<unk>", "▁Hi", "<pad>"]) == "Hi"


def test_bytes_that_are_not_utf8_spell_nothing_and_the_next_character_starts_afresh():
    """A byte that cannot start a character (0xFF), or a started character cut by another one's first
    byte, is dropped; the bytes after it still spell their character (`é` was swallowed with them)."""
    assert detokenize(["<0xFF>"] * 4 + ["<0xC3>", "<0xA9>"]) == "é"
    assert detokenize(["<0xE2>", "<0x80>", "<0xC3>", "<0xA9>"]) == "é"
    assert detokenize(["▁a", "<0xE2>", "<0x41>"]) == "aA"


def test_an_unfinished_character_ends_at_the_next_text_piece():
    """A character's bytes are consecutive pieces: the unfinished `—` before `▁ok` is dropped, not finished
    by a byte after `▁ok` and written before it, with that later byte's span reaching back over `▁ok`."""
    pieces = ["▁a", "<0xE2>", "<0x80>", "▁ok", "<0x94>"]
    assert detokenize(pieces) == "a ok"
    assert align_pieces(pieces, "a ok").tolist() == [[0, 1], [1, 1], [1, 1], [1, 4], [4, 4]]


def test_detokenize_joins_pieces_decodes_bytes_and_drops_the_leading_space():
    assert detokenize(["▁The", "▁sentence", ".", "<0x0A>", "Input", ":", "▁café"]) == "The sentence.\nInput: café"
    assert detokenize(["<s>", "▁a", "<0xE2>", "<0x80>", "<0x94>", "b", "</s>"]) == "a—b"
    assert detokenize([]) == ""


# --- the released files -------------------------------------------------------------------------


@pytest.mark.paper
def test_released_sample_aligns_every_token_of_user_oriented_task_0(paper_dir):
    samples = {s.id: s for s in read_dataset(paper_dir / "datasets" / "FinalDataset.tsv")}
    prompt = samples["user_oriented_task_0"].prompt
    path = paper_dir / "results" / "attribution_interpret" / "ifa_vicuna_7b" / "user_oriented_task_0.pkl"
    a = released_sample(path, prompt, "user_oriented_task_0")

    assert a.id == "user_oriented_task_0"
    assert a.prompt == prompt
    assert a.matrix.shape == (82, 23)
    assert a.matrix.dtype == np.float32
    assert set(np.unique(a.matrix)) <= set(range(11))
    assert len(a.prompt_tokens) == len(a.prompt_offsets) == 82
    assert len(a.response_tokens) == len(a.response_offsets) == 23
    assert a.response.startswith("Do you have any questions about my rate")

    for token, (start, end) in zip(a.prompt_tokens, a.prompt_offsets.tolist()):
        piece = prompt[start:end]
        if token.startswith("<0x"):
            assert piece == bytes([int(token[3:5], 16)]).decode("utf8")
        else:
            # the token text without its "▁"; the space the marker stands for is in the span
            # whenever the prompt has it (all but the first token here)
            assert piece.removeprefix(" ") == token.removeprefix("▁")
            assert piece == token.replace("▁", " ") or (start == 0 and piece == token[1:])
    # the tokens tile the prompt
    offsets = a.prompt_offsets
    assert offsets[0, 0] == 0 and offsets[-1, 1] == len(prompt)
    assert (offsets[1:, 0] == offsets[:-1, 1]).all()
    assert "".join(a.response[s:e] for s, e in a.response_offsets.tolist()) == a.response


@pytest.mark.paper
def test_released_sample_refuses_a_pickle_of_another_sample(paper_dir):
    path = paper_dir / "results" / "attribution_interpret" / "ifa_vicuna_7b" / "user_oriented_task_0.pkl"
    with pytest.raises(ValueError, match="expected 'user_oriented_task_1'"):
        released_sample(path, "irrelevant", "user_oriented_task_1")



@pytest.mark.parametrize("edit, reason", [
    ({"Input": 5}, "Input must be a list of token strings, not int"),
    ({"Output": "abc"}, "Output must be a list of token strings, not str"),
    ({"Explain": [[1.0, 2.0], [3.0]]}, "Explain is not a numeric matrix"),
    ({"Explain": "high"}, "Explain is not a numeric matrix"),
    ({"Explain": []}, r"Explain of shape \(0,\), expected \(Input, Output\) = \(2, 1\)"),
])
def test_a_released_record_of_the_wrong_shape_names_its_file(tmp_path, edit, reason):
    """These raised bare numpy errors (`cannot reshape array of size 0`) that named no file."""
    record = {"ID": "s1", "Input": ["▁Hi", "."], "Reference": "", "Output": ["▁ok"],
              "Explain": np.ones((2, 1), np.float32), **edit}
    path = write_pickle(tmp_path / "s1.pkl", record)
    with pytest.raises(ValueError, match=rf"s1.pkl: {reason}"):
        released_sample(path, "Hi.", "s1")


def test_a_released_record_missing_a_key_names_its_file_and_the_keys(tmp_path):
    """A dict without Explain is refused up front with the file's name, not with a bare KeyError."""
    record = {"ID": "s1", "Input": ["▁Hi", "."], "Output": ["▁ok"]}
    with pytest.raises(ValueError, match=r"s1.pkl: expected a dict with the keys ID, Input, Output, Explain"):
        released_sample(write_pickle(tmp_path / "s1.pkl", record), "Hi.", "s1")


def test_a_released_record_without_a_response_holds_an_empty_matrix(tmp_path):
    record = {"ID": "s1", "Input": ["▁Hi", "."], "Reference": "", "Output": [], "Explain": []}
    assert released_sample(write_pickle(tmp_path / "s1.pkl", record), "Hi.", "s1").matrix.shape == (2, 0)


def test_released_sample_refuses_a_transposed_matrix_instead_of_reshaping_it(paper_dir, tmp_path):
    """Explain is (Input x Output): a (Output x Input) array of the same size was reshaped into a scrambled one."""
    import numpy as np

    from workflow_scripts.released import safe_load_pickle

    folder = paper_dir / "results" / "attribution_interpret" / "ifa_vicuna_7b"
    record = safe_load_pickle(folder / "user_oriented_task_0.pkl")
    matrix = np.asarray(record["Explain"], dtype=np.float32)
    assert matrix.shape == (len(record["Input"]), len(record["Output"])) and matrix.shape[0] != matrix.shape[1]
    transposed = write_pickle(tmp_path / "user_oriented_task_0.pkl", {**record, "Explain": matrix.T.copy()})
    with pytest.raises(ValueError, match=rf"Explain of shape \({matrix.shape[1]}, {matrix.shape[0]}\), expected"):
        released_sample(transposed, "irrelevant", "user_oriented_task_0")

# --- bounded before allocation (issue 10) ---------------------------------------------------------

# the child limited to 2 GiB of address space: an 8 GiB ask cannot succeed
RUN_LIMITED = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))\n" + LOAD_IN_CHILD
# 8 GiB of float64 asked for in 69 bytes: numpy's own array reduce with a forged shape
HUGE_ARRAY = (
    b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    b"J\x00\x00\x00\x40\x85X\x02\x00\x00\x00f8\x87R."
)
HUGE_DTYPE = b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f8J\x00\x00\x00\x08\x85\x86\x85R."  # 1 GiB itemsize
DEEP = b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."  # a list nested 100,000 deep


@pytest.mark.parametrize("name, data, reason", [
    ("huge_array", HUGE_ARRAY, "refused an array of 8,589,934,592 bytes from a 69-byte pickle"),
    ("huge_dtype", HUGE_DTYPE, "refused an array of 1,073,741,824 bytes"),
    ("deep", DEEP, "refused data nested deeper than 64 levels"),
], ids=["huge_array", "huge_dtype", "deep"])  # pytest < 9.2 puts a value into the test id: 200 KB in the env
def test_a_small_pickle_asking_for_much_is_refused_before_allocating(tmp_path, name, data, reason):
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(data)
    result = load_in_child(path, RUN_LIMITED)
    assert result.returncode == 0, result.stderr[-800:]
    assert result.stdout.startswith(f"refused: {path}: ") and reason in result.stdout, result.stdout


def nested_list(levels: int):
    value = 1
    for _ in range(levels):
        value = [value]
    return value


def test_data_nested_exactly_64_levels_loads_and_65_is_refused(tmp_path):
    """MAX_DEPTH is the deepest nesting admitted, not the first one refused."""
    assert safe_load_pickle(write_pickle(tmp_path / "d64.pkl", nested_list(64))) == nested_list(64)
    assert_refused(write_pickle(tmp_path / "d65.pkl", nested_list(65)), "refused data nested deeper than 64 levels")


def test_a_protocol_2_array_filling_most_of_its_pickle_loads(tmp_path):
    """Protocol 2 charges an array twice (its allocation, then the latin1 bytes that fill it): a genuine
    40 KB array in a 40 KB pickle must fit the budget of twice the file's size."""
    explain = np.arange(10_000, dtype=np.float32).reshape(100, 100)
    path = write_pickle(tmp_path / "big.pkl", {"Explain": explain}, protocol=2)
    assert path.stat().st_size < 2 * explain.nbytes
    assert np.array_equal(safe_load_pickle(path)["Explain"], explain)


def test_lists_sharing_their_children_are_checked_once_each_not_once_per_path(tmp_path):
    """60 levels of [L, L] are 61 list objects in 377 bytes but 2**60 paths: a walk along every path
    never ends (before: 16 s at 22 levels)."""
    shared = [1]
    for _ in range(60):
        shared = [shared, shared]
    path = write_pickle(tmp_path / "shared.pkl", shared, protocol=2)
    result = load_in_child(path, timeout=60)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr[-500:]


class _Encoded:
    """Pickles as `_codecs.encode(text, encoding)`, as protocol 2 writes bytes (with latin1)."""

    def __init__(self, text: str, encoding: str = "latin1"):
        self.text, self.encoding = text, encoding

    def __reduce__(self):
        return codecs.encode, (self.text, self.encoding)


def test_one_string_encoded_many_times_is_refused_past_the_pickles_own_size(tmp_path):
    """The pickle's memo lets a few bytes name a stored string again: 400 encodings of one 256 KiB string
    would allocate 100 MiB from a 262 KB file."""
    text = "a" * 2**18
    path = write_pickle(tmp_path / "amplified.pkl", [_Encoded(text) for _ in range(400)], protocol=2)
    assert path.stat().st_size < 2**18 + 10_000
    with pytest.raises(UnsafePickleError, match=r"amplified.pkl: refused .* bytes of arrays and encoded strings"):
        safe_load_pickle(path)
    assert safe_load_pickle(write_pickle(tmp_path / "once.pkl", [_Encoded(text)], protocol=2)) == [text.encode()]


def test_an_encoding_other_than_latin1_is_refused(tmp_path):
    path = write_pickle(tmp_path / "escape.pkl", [_Encoded("\\x00" * 10, "unicode_escape")], protocol=2)
    with pytest.raises(UnsafePickleError, match=r"escape.pkl: refused .*'unicode_escape'"):
        safe_load_pickle(path)


def test_a_truncated_released_pickle_names_the_file(paper_dir, tmp_path):
    source = paper_dir / "results/attribution_interpret/ifa_vicuna_7b/user_oriented_task_0.pkl"
    path = tmp_path / "user_oriented_task_0.pkl"
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(UnsafePickleError, match=f"{path}: not a readable pickle"):
        safe_load_pickle(path)
