"""Make the Table 3 verb lists: datasets/verbs/instruction_verbs.txt and general_verbs.txt.

Table 3 of Wu et al. (NAACL 2024; docs/design.md#table-3) compares how instruction tuning changes the
self-attention knowledge about two lists of verbs:

- instruction verbs: the union of the paper's two hand-made lists (INSTRUCT1, INSTRUCT2 below),
  sorted, one per line;
- general verbs: for every WordNet verb synset with at least one example sentence, the name of
  its first lemma, lower-cased; minus NLTK's English stop words and the instruction verbs; the
  distinct words ranked by `wordfreq.word_frequency(word, "en")`, most frequent first, ties in
  alphabetical order (the paper sorted a set, so its ties fell in arbitrary order); the top 3000,
  one per line in rank order.

The lists are data files of the project; the analysis (workflow_scripts/table3.py) reads them and
needs neither WordNet nor wordfreq. This script is the record of how they were made, and the way
to remake them. It is a tool, not a project dependency: run it by hand.

Setup (offline; nltk.download() and NLTK's data server are not reachable):

    apt-get update && apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index
    .venv/bin/pip install nltk wordfreq
    .venv/bin/python scripts/make_verb_lists.py --setup-wordnet --nltk-data resources/nltk_data

`--setup-wordnet` copies Debian's WordNet 3.0 (/usr/share/wordnet, the same WordNet 3.0 that NLTK
distributes) into <nltk-data>/corpora/wordnet and writes the `lexnames` file that NLTK needs and
Debian omits. The files are copied, not symlinked: NLTK 3.10's path checks reject symlinked
files and directories. `wordnet-sense-index` provides `index.sense`, which NLTK also needs.
NLTK's stop-word corpus is not obtainable offline, so the classic 179-word English list is
vendored below (STOPWORDS_EN). wordfreq ships its data in its wheel.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

INSTRUCT1 = [
    "translate", "explain", "summarize", "retrieve", "revise", "generate", "describe", "classify",
    "create", "evaluate", "correct", "develop", "identify", "analyze", "compose", "demonstrate",
    "interpret", "design", "solve", "follow", "clarify", "say", "help", "act", "recommend",
    "estimate", "edit", "format", "repeat",
]
INSTRUCT2 = [
    "write", "give", "find", "create", "make", "describe", "design", "generate", "classify", "have",
    "explain", "tell", "identify", "output", "predict", "detect",
]

# NLTK's English stop words (nltk_data corpora/stopwords/english), the long-standing 179-word list.
STOPWORDS_EN = """
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself
yourselves he him his himself she she's her hers herself it it's its itself they them their
theirs themselves what which who whom this that that'll these those am is are was were be been
being have has had having do does did doing a an the and but if or because as until while of at
by for with about against between into through during before after above below to from up down
in out on off over under again further then once here there when where why how all any both
each few more most other some such no nor not only own same so than too very s t can will just
don don't should should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't
doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't
needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't
""".split()
assert len(STOPWORDS_EN) == len(set(STOPWORDS_EN)) == 179

# The lexicographer files in WordNet 3.0's numbering (lexnames(5WN)); NLTK reads this file.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
LEX_POS = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

N_GENERAL = 3000


def setup_wordnet(nltk_data: Path, source: Path = Path("/usr/share/wordnet")) -> Path:
    """Copy Debian's WordNet 3.0 into an NLTK data folder and add the `lexnames` file."""
    if not (source / "data.verb").is_file():
        sys.exit(f"{source}/data.verb not found: apt-get install wordnet-base wordnet-sense-index")
    if not (source / "index.sense").is_file():
        sys.exit(f"{source}/index.sense not found: apt-get install wordnet-sense-index")
    dest = nltk_data / "corpora" / "wordnet"
    dest.mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(source)):
        if (source / name).is_file():
            shutil.copyfile(source / name, dest / name)  # a copy: NLTK refuses symlinks
    with open(dest / "lexnames", "w", encoding="utf8") as fh:
        for i, name in enumerate(LEXNAMES):
            fh.write(f"{i:02d}\t{name}\t{LEX_POS[name.split('.')[0]]}\n")
    return dest


def instruction_verbs() -> list[str]:
    return sorted(set(INSTRUCT1) | set(INSTRUCT2))


def general_verbs(wordnet, word_frequency, excludes: set[str], n: int = N_GENERAL) -> list[str]:
    """The n most frequent first-lemma names of WordNet verb synsets that have examples."""
    excludes = set(excludes) | set(STOPWORDS_EN)
    words = {
        synset.lemmas()[0].name().lower()
        for synset in wordnet.all_synsets(pos=wordnet.VERB)
        if synset.examples()
    }
    ranked = sorted((w for w in words if w not in excludes), key=lambda w: (-word_frequency(w, "en"), w))
    if len(ranked) < n:
        sys.exit(f"only {len(ranked)} candidate verbs, fewer than {n}")
    return ranked[:n]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nltk-data", type=Path, default=Path("resources/nltk_data"),
                        help="NLTK data folder holding corpora/wordnet (default: %(default)s)")
    parser.add_argument("--setup-wordnet", action="store_true",
                        help="first copy /usr/share/wordnet into --nltk-data and write lexnames")
    parser.add_argument("--wordnet-source", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--output-dir", type=Path, default=Path("datasets/verbs"))
    parser.add_argument("-n", type=int, default=N_GENERAL, help="number of general verbs (default: %(default)s)")
    args = parser.parse_args(argv)

    if args.setup_wordnet:
        print(f"WordNet copied to {setup_wordnet(args.nltk_data, args.wordnet_source)}")
    import nltk
    nltk.data.path.insert(0, str(args.nltk_data.resolve()))
    from nltk.corpus import wordnet
    from wordfreq import word_frequency

    instruct = instruction_verbs()
    general = general_verbs(wordnet, word_frequency, set(instruct), args.n)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "instruction_verbs.txt").write_text("\n".join(instruct) + "\n", encoding="utf8")
    (args.output_dir / "general_verbs.txt").write_text("\n".join(general) + "\n", encoding="utf8")
    print(f"WordNet {wordnet.get_version()}, nltk {version('nltk')}, wordfreq {version('wordfreq')}")
    print(f"{len(instruct)} instruction verbs, {len(general)} general verbs -> {args.output_dir}")
    print("top general verbs:", " ".join(general[:20]))


if __name__ == "__main__":
    main()
