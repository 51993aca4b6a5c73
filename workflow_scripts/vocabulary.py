"""The vocabulary the global explanations describe heads and components with.

The paper uses `SingleShareGPT_Vocab.tsv`: `word<TAB>frequency` lines from ShareGPT, most
frequent first, read with case variants merged. The offline demo builds a file of the same
layout from its own corpus (`build`).
"""
from __future__ import annotations

import argparse
import gzip
import logging
import math
import re
import unicodedata
from collections import Counter
from pathlib import Path

from .atomic import atomic_write_text
from .cli import positive_int
from .text_files import utf8_lines

log = logging.getLogger(__name__)

WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
DEFAULT_MAX_WORDS = 3000
DEFAULT_MIN_COUNT = 2


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf8") if path.suffix == ".gz" else open(path, encoding="utf8")


def read_vocabulary_frequencies(path: str | Path) -> dict[str, float]:
    """Word -> frequency, in order of first appearance, with case variants merged as the paper
    does (utils.load_wiki_words): a word whose lower(), upper() or capitalize() form (checked in
    that order) was already seen adds its frequency to that earlier form; otherwise it is a new
    word. Blank lines are skipped; any other line that is not exactly two whitespace-separated
    fields with a finite, non-negative number second raises ValueError naming file and line
    (the paper skipped such lines silently), and so does a word more frequent than the one before
    (the heads' baseline is the first words of the file, as in the paper). `.gz` files are read
    decompressed. Words holding control characters are kept, as the paper keeps them (its own file
    has `\x0f` and `high\x02risk`), and named in a warning; a file without any word is an error."""
    path = Path(path)
    words: dict[str, float] = {}
    control: list[str] = []
    previous = ("", math.inf)
    for number, line in utf8_lines(path):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(
                f"{path}:{number}: expected `word<TAB>frequency`, got {len(fields)} fields: {line[:80]!r}"
            )
        word, text = fields
        try:
            frequency = float(text)
        except ValueError:
            frequency = math.nan
        if not math.isfinite(frequency) or frequency < 0:
            raise ValueError(f"{path}:{number}: frequency {text!r} of {word!r} is not a non-negative number")
        if frequency > previous[1]:
            raise ValueError(f"{path}:{number}: {word!r} ({text}) is more frequent than {previous[0]!r} on the line "
                             "before: list the words most frequent first (the first `attention.baseline_words` "
                             "are the heads' baseline)")
        previous = (word, frequency)
        if any(unicodedata.category(c) == "Cc" for c in word):
            control.append(f"{number} {word!r}")
        for variant in (word.lower(), word.upper(), word.capitalize()):
            if variant in words:
                word = variant
                break
        words[word] = words.get(word, 0.0) + frequency
    if not words:
        raise ValueError(f"{path}: the vocabulary has no words")
    if control:
        log.warning("%s: %d words hold control characters (kept, as the paper keeps them): line %s",
                    path, len(control), ", line ".join(control[:10]) + (", ..." if len(control) > 10 else ""))
    return words


def read_vocabulary(path: str | Path) -> list[str]:
    """The vocabulary's words in file order (most frequent first), case variants merged; see
    read_vocabulary_frequencies."""
    return list(read_vocabulary_frequencies(path))


def build_vocabulary(
    corpus_txt: str | Path,
    output_tsv: str | Path,
    max_words: int = DEFAULT_MAX_WORDS,
    min_count: int = DEFAULT_MIN_COUNT,
    include: list[str] = (),
) -> int:
    """Write a `word<TAB>relative_frequency` vocabulary of a plain-text corpus (the paper's
    layout) and return the number of words written. Words are `[A-Za-z]+(?:'[a-z]+)?` with their
    case kept (read_vocabulary merges the variants); the frequency is the word's count over all
    word occurrences of the corpus; at most `max_words` words with count >= `min_count`, by count
    descending then word; then every word of `include` the corpus did not give (the demo's
    instruction verbs, so that its Table 3 has an instruction column), at its own frequency, most
    frequent first.
    Written atomically."""
    if max_words < 1 or min_count < 1:
        raise ValueError(f"max_words ({max_words}) and min_count ({min_count}) must be >= 1")
    corpus_txt, output_tsv = Path(corpus_txt), Path(output_tsv)
    counts: Counter[str] = Counter()
    with _open_text(corpus_txt) as f:
        for line in f:
            counts.update(WORD.findall(line))
    total = sum(counts.values())
    kept = sorted((item for item in counts.items() if item[1] >= min_count), key=lambda x: (-x[1], x[0]))[:max_words]
    if not kept:
        raise ValueError(f"{corpus_txt}: no word occurs at least {min_count} times ({total} words in all)")
    have = {word.lower() for word, _ in kept}
    added = [(word, counts.get(word, 0)) for word in dict.fromkeys(include) if word.lower() not in have]
    kept += sorted(added, key=lambda x: -x[1])  # most frequent first, as the corpus words (stable: ties in order)
    atomic_write_text(output_tsv, "".join(f"{word}\t{count / total!r}\n" for word, count in kept))
    log.info(
        "%s: %d of %d distinct words (%d occurrences) -> %s", corpus_txt, len(kept), len(counts), total, output_tsv
    )
    return len(kept)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    p = steps.add_parser("build", help="write a word<TAB>frequency vocabulary of a plain-text corpus")
    p.add_argument("corpus")
    p.add_argument("output")
    p.add_argument("--max-words", type=positive_int, default=DEFAULT_MAX_WORDS)
    p.add_argument("--min-count", type=positive_int, default=DEFAULT_MIN_COUNT)
    p.add_argument("--include", type=Path, help="a file of words (one per line) the vocabulary must hold")
    p.set_defaults(run=lambda a: build_vocabulary(
        a.corpus, a.output, a.max_words, a.min_count,
        a.include.read_text(encoding="utf8").split() if a.include else (),
    ))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args.run(args)


if __name__ == "__main__":
    main()
