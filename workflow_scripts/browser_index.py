"""The static explanation browser of a pair: data files, word index and page (docs/design.md#explanation-browsers).

The page must open from disk (file://, where fetch() of JSON is blocked) and stay fast at the paper's size
(32 layers x 32 heads x 128 dimensions x 2 models, plus the FFN components), so everything is cut at build
time into small `.js` files that the page loads with <script src> only when it needs them:

- `data/manifest.js`: the pair, its two models, the seeds, and per kind (`attention`, `ffn`) and model the
  row groups `[layer, head, count]` in row order: a row's id is its position in the model's rows (sorted
  by layer, head, rank), so the page turns a layer or head filter into id ranges without any row data;
- `data/{kind}-{model}-{chunk}.js`: `chunk_rows` consecutive rows of one model (model 0 pre-trained, 1
  tuned), about `chunk_bytes` of JSON: row `id` is in chunk `id // chunk_rows`. Small chunks, not one file
  a layer: a search's page of 100 rows can sit in 100 places, and the page loads only their chunks;
- `data/index-{kind}-{bucket}.js`: the word index, `{word: [ids of model 0, ids of model 1]}`, each id list
  sorted and delta-encoded; a lower-cased word goes to bucket `fnv1a(word) % buckets` (FNV-1a over its
  code points, computed alike by browser.js), the bucket count set so a bucket holds about
  `postings_per_bucket` ids;
- `data/words-{kind}.js`: every indexed word with its row count, sorted, for the search box's suggestions.

Every file assigns its JSON to `window.SHIFTLENS_DATA[name]`; `<` and the JS line separators are written
as `\\u` escapes, and the page inserts every string from data as text, never as HTML.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from collections import defaultdict
from pathlib import Path

from .atomic import atomic_dir
from .browser_data import Component, HeadRow, attach_annotations, components, head_rows
from .cli import positive_int, setup_logging

log = logging.getLogger(__name__)

FORMAT = "shiftlens-browser/1"
ASSETS = Path(__file__).with_name("browser_assets")  # index.html, browser.js, browser.css
KINDS = ("attention", "ffn")
ROLES = ("pre-trained", "tuned")
POSTINGS_PER_BUCKET = 20_000
CHUNK_BYTES = 16_000
PAGE_SIZE = 100


def word_key(word: str) -> str:
    """What the search matches: the word lower-cased (the page lower-cases the query alike)."""
    return word.lower()


def fnv1a(text: str) -> int:
    """32-bit FNV-1a over the code points (browser.js has the same function)."""
    value = 0x811C9DC5
    for char in text:
        value = ((value ^ ord(char)) * 0x01000193) & 0xFFFFFFFF
    return value


def bucket_count(postings: int, per_bucket: int = POSTINGS_PER_BUCKET) -> int:
    return max(1, math.ceil(postings / per_bucket))


def deltas(ids: list[int]) -> list[int]:
    """Sorted ids as their first value and successive differences (smaller files)."""
    return [b - a for a, b in zip([0, *ids], ids)]


def row_groups(keys: list[tuple[int, int]]) -> list[list[int]]:
    """[layer, head, count] runs of consecutive equal (layer, head) keys, in order."""
    groups: list[list[int]] = []
    for layer, head in keys:
        if groups and groups[-1][:2] == [layer, head]:
            groups[-1][2] += 1
        else:
            groups.append([layer, head, 1])
    return groups


def postings(row_words: list[list[str]]) -> dict[str, list[int]]:
    """word key -> sorted ids of the rows holding it (each row once)."""
    index: dict[str, list[int]] = defaultdict(list)
    for row_id, words in enumerate(row_words):
        for key in dict.fromkeys(map(word_key, words)):
            index[key].append(row_id)
    return index


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def head_record(row: HeadRow) -> list:
    return [row.head, row.dim, row.rank, _number(row.score), row.pairs]


def component_record(component: Component, seeds: list[int]) -> list:
    """[rank, score, words, notes]: notes one [seed, described 0/1, summary, task, level] per seed that
    annotated the component."""
    notes = [[seed, int(n.described), n.summary, n.task, n.level]
             for seed in seeds if (n := component.seeds.get(seed)) is not None]
    return [component.rank, _number(component.score), component.words, notes]


def chunk_rows(records: list, chunk_bytes: int = CHUNK_BYTES, sample: int = 2000) -> int:
    """Rows per chunk file: about `chunk_bytes` of JSON, from the mean size of (up to `sample`) rows."""
    step = max(1, len(records) // sample)
    sizes = [len(json.dumps(r, ensure_ascii=False, separators=(",", ":"))) for r in records[::step]]
    return max(1, round(chunk_bytes / (sum(sizes) / len(sizes)))) if sizes else 1


def kind_files(kind: str, per_model: list[list], keys: list[list[tuple[int, int]]], words: list[list[list[str]]],
               per_bucket: int, chunk_bytes: int = CHUNK_BYTES) -> tuple[dict, dict[str, object]]:
    """The manifest entry and the data files of one kind. per_model[m]: the model's row records in row
    order; keys[m]: their (layer, head); words[m]: the words each row is found by."""
    files: dict[str, object] = {}
    groups = [row_groups(k) for k in keys]
    size = chunk_rows([r for records in per_model for r in records], chunk_bytes)
    for m, records in enumerate(per_model):
        for c in range(0, len(records), size):
            files[f"{kind}-{m}-{c // size}"] = records[c:c + size]
    indexes = [postings(w) for w in words]
    total = sum(len(ids) for index in indexes for ids in index.values())
    buckets = bucket_count(total, per_bucket)
    merged: list[dict[str, list]] = [{} for _ in range(buckets)]
    counts: dict[str, int] = defaultdict(int)
    for m, index in enumerate(indexes):
        for key, ids in index.items():
            entry = merged[fnv1a(key) % buckets].setdefault(key, [[] for _ in indexes])
            entry[m] = deltas(ids)
            counts[key] += len(ids)
    for b, bucket in enumerate(merged):
        files[f"index-{kind}-{b}"] = bucket
    files[f"words-{kind}"] = sorted([key, n] for key, n in counts.items())
    manifest = {"groups": groups, "rows": [len(r) for r in per_model], "chunk_rows": size, "buckets": buckets,
                "postings": total}
    return manifest, files


def browser_files(pair: str, models: list[str], heads: list[list[HeadRow]], ffn: list[list[Component]],
                  seeds: list[int], per_bucket: int = POSTINGS_PER_BUCKET, page_size: int = PAGE_SIZE,
                  chunk_bytes: int = CHUNK_BYTES) -> dict:
    """{file name without `.js`: its data} of a pair's browser; models, heads and ffn: pre-trained, tuned."""
    attention, attention_files = kind_files(
        "attention", [[head_record(r) for r in rows] for rows in heads],
        [[(r.layer, r.head) for r in rows] for rows in heads],
        [[[w for pair in r.pairs for w in pair] for r in rows] for rows in heads], per_bucket, chunk_bytes)
    concepts, ffn_files = kind_files(
        "ffn", [[component_record(c, seeds) for c in rows] for rows in ffn],
        [[(c.layer, 0) for c in rows] for rows in ffn], [[c.words for c in rows] for rows in ffn], per_bucket,
        chunk_bytes)
    manifest = {"format": FORMAT, "pair": pair, "models": [{"id": m, "role": r} for m, r in zip(models, ROLES)],
                "seeds": seeds, "page_size": page_size, "kinds": {"attention": attention, "ffn": concepts}}
    return {"manifest": manifest, **attention_files, **ffn_files}


def js_file(name: str, data) -> str:
    """A script that stores `data` as SHIFTLENS_DATA[name], parsed by JSON.parse from a single-quoted
    literal: faster than an object literal, and a word such as `__proto__` stays a plain key. No `<`
    (no `</script>`) and no raw line terminator reaches the file."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    literal = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"(window.SHIFTLENS_DATA = window.SHIFTLENS_DATA || {{}})[{json.dumps(name)}] = JSON.parse({literal});\n"


def write_browser(files: dict, output: str | Path) -> None:
    """The page (static assets) and its data files; the folder appears whole or not at all."""
    with atomic_dir(output) as tmp:
        for asset in ("index.html", "browser.js", "browser.css"):
            shutil.copy(ASSETS / asset, tmp / asset)
        (tmp / "data").mkdir()
        for name, data in files.items():
            (tmp / "data" / f"{name}.js").write_text(js_file(name, data), encoding="utf8")


def build(pair: str, models: list[str], bilinear_names: list[str], attention: list[str], ffn: list[str],
          seeds: list[int], describe: list[str], task: list[str], level: list[str], output: str,
          per_bucket: int = POSTINGS_PER_BUCKET, chunk_bytes: int = CHUNK_BYTES) -> dict:
    for name, paths in (("--describe", describe), ("--task", task), ("--level", level)):
        if len(paths) != len(seeds):
            raise ValueError(f"{name}: {len(paths)} files for {len(seeds)} seeds ({seeds})")
    heads = head_rows(attention, bilinear_names)
    concepts = components(ffn, models)
    attach_annotations(dict(zip(models, concepts)), dict(zip(seeds, describe)), dict(zip(seeds, task)),
                       dict(zip(seeds, level)))
    files = browser_files(pair, models, heads, concepts, seeds, per_bucket, chunk_bytes=chunk_bytes)
    write_browser(files, output)
    for kind in KINDS:
        entry = files["manifest"]["kinds"][kind]
        log.info("%s: %s rows in chunks of %d, %d word postings in %d index files", kind,
                 " + ".join(map(str, entry["rows"])), entry["chunk_rows"], entry["postings"], entry["buckets"])
    size = sum(p.stat().st_size for p in Path(output).rglob("*") if p.is_file())
    log.info("%s: %d files, %.1f MB -> %s", pair, len(files) + 3, size / 1e6, output)
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", required=True)
    parser.add_argument("--models", nargs=2, required=True, metavar=("PRETRAINED", "TUNED"))
    parser.add_argument("--bilinear-names", nargs=2, required=True, metavar=("PRETRAINED", "TUNED"),
                        help="the two models' Model values in the head files (renamed in a released file)")
    parser.add_argument("--attention", nargs="+", required=True, help="lossless shards or a bilinear_words.tsv")
    parser.add_argument("--ffn", nargs="+", required=True, help="lossless FFN shards")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], required=True,
                        help="comma-separated, in the order of the annotation files")
    parser.add_argument("--describe", nargs="+", required=True)
    parser.add_argument("--task", nargs="+", required=True)
    parser.add_argument("--level", nargs="+", required=True)
    parser.add_argument("--postings-per-bucket", type=positive_int, default=POSTINGS_PER_BUCKET)
    parser.add_argument("--chunk-bytes", type=positive_int, default=CHUNK_BYTES)
    parser.add_argument("--output", required=True, help="the browser's folder (index.html inside)")
    args = parser.parse_args(argv)
    setup_logging()
    build(args.pair, args.models, args.bilinear_names, args.attention, args.ffn, args.seeds, args.describe,
          args.task, args.level, args.output, args.postings_per_bucket, args.chunk_bytes)


if __name__ == "__main__":
    main()
