"""Benchmark: the explanation browser at the paper's size, built and opened in headless Chromium.

    python bench/browser_scale.py                       # 2 models x 32 layers x 32 heads x 128 dims, FFN 32 x 300
    python bench/browser_scale.py --layers 4 --heads 4  # a quick look

Writes synthetic lossless shards and five seeds' annotation files as the workflow does (word pairs per
dimension drawn 0..2x --pairs around the demo's mean of ~25, words Zipf-distributed over --vocabulary
made-up words, so that common words have long postings), builds the browser with the workflow's command
code (browser_index.build), then opens index.html from disk in headless Chromium (tests/browser.py) and
times: the first page of rows, a layer filter, the next page, a search for the most common word and for
a rare one, and the FFN tab. Prints the sizes (all files, what the first page loads, the largest file)
and the times, and writes them as JSON next to the browser. Not a test: times depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import chromium  # noqa: E402

from workflow_scripts.annotate import DESCRIBED_COLUMNS  # noqa: E402
from workflow_scripts.browser_index import build  # noqa: E402
from workflow_scripts.tsv import PAIRS_COLUMNS, WORDS_COLUMNS, encode_pairs, encode_words, write_tsv  # noqa: E402

MODELS = ("llama-7b", "vicuna-7b")


def vocabulary(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = {"".join(rng.choice(letters, rng.integers(3, 11))) for _ in range(int(n * 1.1))}
    words = np.array(sorted(words)[:n], dtype=object)
    rng.shuffle(words)
    p = 1.0 / (np.arange(len(words)) + 10)
    return words, p / p.sum()


def write_inputs(folder: Path, args, rng) -> dict:
    words, p = vocabulary(args.vocabulary, rng)
    paths = {"attention": [], "ffn": [], "describe": [], "task": [], "level": []}
    described = []
    for model in MODELS:
        for layer in range(args.layers):
            rows = []
            for head in range(args.heads):
                counts = rng.integers(0, 2 * args.pairs + 1, args.dims)
                drawn = rng.choice(words, (int(counts.sum()), 2), p=p)
                start = 0
                for rank, (dim, n) in enumerate(zip(rng.permutation(args.dims), counts), start=1):
                    pairs = drawn[start:start + n].tolist()
                    start += n
                    rows.append((model, "7B", layer, "QK", head, int(dim), rank, f"{1e3 / rank:.4f}",
                                 encode_pairs(pairs)))
            path = folder / f"attention/{model}/layer-{layer}.tsv"
            write_tsv(rows, PAIRS_COLUMNS, path)
            paths["attention"].append(path)
            top = rng.choice(words, (args.ranks, 50), p=p).tolist()
            rows = [(model, "7B", layer, "FFN", 0, r, f"{1 / (r + 9):.4f}", encode_words(t))
                    for r, t in enumerate(top, start=1)]
            write_tsv(rows, WORDS_COLUMNS, folder / f"ffn/{model}/layer-{layer}.tsv")
            paths["ffn"].append(folder / f"ffn/{model}/layer-{layer}.tsv")
            described += [(model, layer, r, t) for r, t in enumerate(top, start=1)]
    for seed in range(5):
        rows = [[1, "Words: " + ", ".join(t[:15]), f"concept {seed} of {m} {layer} {r}", m, "7B", layer, "FFN", 0,
                 r, "0.1", "|||".join(t)] for m, layer, r, t in described]
        for step, name, label in (("describe", "linear_seed{}.tsv", None), ("task", "linear_task_seed{}.tsv", "Task"),
                                  ("level", "linear_concept_seed{}.tsv", "Concept")):
            path = folder / "annotation" / name.format(seed)
            if label:
                write_tsv([["daily writing" if label == "Task" else "semantic", *r] for r in rows],
                          (label, *DESCRIBED_COLUMNS), path)
            else:
                write_tsv(rows, DESCRIBED_COLUMNS, path)
            paths[step].append(path)
    return paths


def timed(driver, action: str) -> float:
    """Milliseconds from dispatching `action` (JS) in the page to the page saying it is ready."""
    from selenium.webdriver.support.ui import WebDriverWait

    start = driver.execute_script(f"document.body.dataset.state = 'loading'; const t = performance.now(); "
                                  f"{action}; return t;")
    WebDriverWait(driver, 120).until(lambda d: d.execute_script("return document.body.dataset.state") != "loading")
    assert driver.execute_script("return document.body.dataset.state") == "ready", driver.find_element(
        "id", "status").text
    return float(driver.execute_script("return document.body.dataset.readyAt")) - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--dims", type=int, default=128)
    parser.add_argument("--ranks", type=int, default=300, help="FFN components per layer")
    parser.add_argument("--pairs", type=int, default=25, help="mean word pairs per head dimension")
    parser.add_argument("--vocabulary", type=int, default=30000)
    parser.add_argument("--out", type=Path, default=None, help="where to build (default: a temporary folder)")
    args = parser.parse_args(argv)
    folder = args.out or Path(tempfile.mkdtemp(prefix="browser-bench-"))
    rng = np.random.default_rng(0)

    started = time.perf_counter()
    paths = write_inputs(folder, args, rng)
    inputs_s = time.perf_counter() - started
    started = time.perf_counter()
    out = folder / "browse"
    files = build("paper", list(MODELS), list(MODELS), paths["attention"], paths["ffn"], list(range(5)),
                  paths["describe"], paths["task"], paths["level"], str(out))
    build_s = time.perf_counter() - started

    sizes = {p.name: p.stat().st_size for p in (out / "data").glob("*.js")}
    per_chunk = files["manifest"]["kinds"]["attention"]["chunk_rows"]
    first = ["manifest.js", *(f"attention-{m}-{c}.js" for m in (0, 1) for c in range(-(-100 // per_chunk)))]
    assets = sum(p.stat().st_size for p in out.glob("*.*"))
    counts = sorted(files["words-attention"], key=lambda wn: -wn[1])
    common, rare = counts[0], counts[len(counts) // 2]
    kinds = files["manifest"]["kinds"]
    result = {
        "rows": {k: kinds[k]["rows"] for k in kinds}, "postings": {k: kinds[k]["postings"] for k in kinds},
        "index_files": {k: kinds[k]["buckets"] for k in kinds},
        "chunk_rows": {k: kinds[k]["chunk_rows"] for k in kinds}, "files": len(sizes) + 3,
        "total_mb": round((sum(sizes.values()) + assets) / 1e6, 1),
        "first_page_mb": round((sum(sizes[n] for n in first) + assets) / 1e6, 2),
        "largest_file": max(sizes, key=sizes.get), "largest_file_mb": round(max(sizes.values()) / 1e6, 2),
        "inputs_s": round(inputs_s, 1), "build_s": round(build_s, 1),
        "common_word": common, "rare_word": rare,
    }
    with chromium(folder) as driver:
        started = time.perf_counter()
        driver.get((out / "index.html").as_uri())
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 120).until(lambda d: d.execute_script("return document.body.dataset.state") == "ready")
        result["open_ms"] = round(float(driver.execute_script("return document.body.dataset.readyAt")), 1)
        result["open_wall_ms"] = round((time.perf_counter() - started) * 1e3, 1)
        select = "const s = document.getElementById('{0}'); s.value = '{1}'; s.dispatchEvent(new Event('change'))"
        search = ("const w = document.getElementById('word'); w.value = {0}; "
                  "w.dispatchEvent(new KeyboardEvent('keydown', {{key: 'Enter'}}))")
        result["layer_filter_ms"] = round(timed(driver, select.format("layer", str(args.layers // 2))), 1)
        result["next_page_ms"] = round(timed(driver, "document.getElementById('next').click()"), 1)
        result["clear_ms"] = round(timed(driver, "document.getElementById('clear').click()"), 1)
        result["search_common_ms"] = round(timed(driver, search.format(json.dumps(common[0]))), 1)
        result["search_common_rows"] = driver.execute_script("return document.querySelectorAll('tr.row').length")
        pages = []  # up to 20 pages on: the median
        while len(pages) < 20 and driver.execute_script("return !document.getElementById('next').disabled"):
            pages.append(timed(driver, "document.getElementById('next').click()"))
        result["search_common_next_page_ms"] = round(float(np.median(pages)), 1)
        result["search_rare_ms"] = round(timed(driver, search.format(json.dumps(rare[0]))), 1)
        result["ffn_tab_ms"] = round(timed(driver, "document.getElementById('tab-ffn').click()"), 1)
        result["js_heap_mb"] = round(driver.execute_script("return performance.memory.usedJSHeapSize") / 1e6, 1)
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        result["console_errors"] = errors
    (folder / "bench.json").write_text(json.dumps(result, indent=1))
    for key, value in result.items():
        print(f"{key:>28}: {value}")
    print(f"(built under {folder})")


if __name__ == "__main__":
    main()
