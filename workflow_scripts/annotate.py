"""One annotation job: one step (describe, task or level) of one seed for one pair (docs/design.md#annotation).

describe: every FFN component of the pair's two models (its first `words` words, read from the
          lossless layer shards) -> a concept or 'Cannot Tell'; writes linear_seed{s}.tsv
          (Explainable Words Summary + linear_words columns, TopK exported as tsv.join_words)
task:     every described concept -> the assistant tasks it serves; linear_task_seed{s}.tsv
level:    every described concept -> its linguistic level; linear_concept_seed{s}.tsv

Answers come from the response cache first; the rest from the provider, each cached the moment
it arrives, so a killed job resumes where it stopped. The cache is the one truth: a job asks only
the requests it has claimed there (concurrent jobs asking the same send each once) and writes the
answer the cache holds, which is the first one stored. A job either writes every row or fails:
a request that failed for good raises, it is never a missing row. Refusals and truncated answers
are written as such and counted in the job's stats (the cost report's input).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from pathlib import Path

from .annotation_files import DESCRIBED_COLUMNS, ORIGIN_COLUMNS, REFUSED, one_line, question_field, step_columns
from .annotation_prompts import STEPS, concept_message, words_message
from .atomic import atomic_write_text
from .chat import ChatError, ChatRequest, ChatResponse
from .chat_cache import ResponseCache
from .cli import non_negative_int, positive_int, setup_logging
from .code_version import method_version
from .model_paths import model_fingerprint
from .progress import Progress
from .tsv import LINEAR_COLUMNS, WORDS_COLUMNS, decode_words, join_words, read_tsv, write_tsv

log = logging.getLogger(__name__)


def label_of(response: ChatResponse) -> str:
    if response.finish_reason == "refusal":
        return REFUSED + one_line(response.refusal or "")
    return one_line(response.text)


def is_empty(response: ChatResponse) -> bool:
    """An answer without text (a refusal aside): not described, or naming no category."""
    return response.finish_reason != "refusal" and not response.text.strip()


def is_described(summary: str, response: ChatResponse) -> bool:
    """The paper's test ('cannot tell' absent), plus: a refusal or an empty answer describes nothing."""
    return response.finish_reason != "refusal" and bool(summary) and "cannot tell" not in summary.lower()


class Batched:
    """A provider answering whole batches (the local model) as a stream of (index, response)."""

    def __init__(self, provider, batch_size: int):
        self.inner, self.batch_size = provider, batch_size
        self.provider, self.model = provider.provider, provider.model

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    def stream(self, requests):
        for start in range(0, len(requests), self.batch_size):
            for offset, response in enumerate(self.inner.complete(requests[start:start + self.batch_size])):
                yield start + offset, response


class LazyLocal:
    """The local chat model, loaded only when a request misses the cache (a rerun loads nothing)."""

    provider = "local"

    def __init__(self, path: str, model: str, batch_size: int):
        self.path, self.model, self.batch_size = path, model, batch_size
        self.fingerprint = model_fingerprint(path)
        # the name alone would let another model in a directory of the same name (or new weights in
        # this one) be answered from this model's cached answers, and without the decoder's method
        # version a decoding fix (local_chat raised) would read the old decoder's answers back
        self.cache_model = f"{model} {self.fingerprint} {method_version('local_chat')}"
        self.chunk = 4 * batch_size  # requests claimed at a time: whole batches
        self._loaded = None

    def stream(self, requests):
        if self._loaded is None:
            from .local_chat import LocalChat

            self._loaded = LocalChat(self.path, model=self.model, batch_size=self.batch_size)
        yield from Batched(self._loaded, self.batch_size).stream(requests)


def local_model_name(settings: dict) -> str:
    """A local model the config leaves unnamed (`model: null`) is named after its directory."""
    return settings.get("model") or Path(settings["path"]).name


def make_provider(settings: dict, step: str, seed: int, runtime: dict):
    """settings: annotation.provider of the config; runtime: speed-only options (not cache keys)."""
    kind = settings["kind"]
    if kind == "openai":
        from .openai_chat import OpenAIChat

        return OpenAIChat(settings["model"], settings.get("base_url"), settings.get("api_key_env"),
                          concurrency=runtime.get("concurrency", 8), max_retries=runtime.get("max_retries", 6),
                          timeout_s=runtime.get("timeout_s", 60.0), backoff_s=runtime.get("backoff_s", 1.0))
    if kind == "local":
        return LazyLocal(settings["path"], local_model_name(settings), runtime.get("batch_size", 16))
    if kind == "replay":
        from .replay import Replay

        return Replay(settings["path"], step, seed)
    raise ValueError(f"annotation.provider.kind: unknown provider {kind!r} (openai, local or replay)")


def answer_all(requests: list[ChatRequest], provider, cache: ResponseCache | None, label: str,
               chunk: int = 64, poll_s: float = 0.5) -> tuple[list[ChatResponse], Counter]:
    """Every request's response, in order, each the answer the cache holds.

    Cached answers first; then, `chunk` at a time, the requests this job could claim are asked
    (each answer cached, and the cache's answer used, as it arrives); requests other live jobs
    have claimed are waited for, and taken over if their claimant dies. Identical requests are
    asked once. Without a cache every request is asked."""
    answers = _Answers(requests, label)
    billed = answers.ask_all(provider) if cache is None else answers.through_cache(provider, cache, chunk, poll_s)
    return answers.finish(billed, provider)


class _Answers:
    """One job's responses as they arrive, by request index, and what it counted on the way (answer_all)."""

    def __init__(self, requests: list[ChatRequest], label: str):
        self.requests, self.label = requests, label
        self.responses: list[ChatResponse | None] = [None] * len(requests)
        self.counts = Counter()

    def ask_all(self, provider) -> range:
        """Without a cache: every request asked, and every row paid for."""
        log.info("%s: %d requests to ask %s %s (no cache)", self.label, len(self.requests), provider.provider,
                 provider.model)
        with Progress(len(self.requests), self.label, "request") as bar:
            for index, response in provider.stream(self.requests):
                self.responses[index] = response
                _paid(self.counts, response)
                bar.update()
        return range(len(self.requests))

    def through_cache(self, provider, cache: ResponseCache, chunk: int, poll_s: float) -> list[int]:
        """Each distinct request answered once, through the cache; returns the rows whose answers were paid
        for (one per distinct request)."""
        asking: dict[str, list[int]] = {}  # key -> indices asking it
        for index, request in enumerate(self.requests):
            asking.setdefault(cache.key(request), []).append(index)
        billed = [indices[0] for indices in asking.values()]
        counts = self.counts
        self._settle(asking, cache.answered(asking), "cache_hits")
        log.info("%s: %d requests, %d answered from the cache, %d to ask %s %s", self.label, len(self.requests),
                 counts["cache_hits"], len(asking), provider.provider, provider.model)
        try:
            self._claim_and_ask(provider, cache, asking, chunk, poll_s)
        finally:
            cache.release()
        counts["cache_hits"] += counts["from_other_jobs"]
        counts["shared"] = counts["asked"] - counts["requests"]  # rows answered by another row's request
        if counts["from_other_jobs"] or counts["superseded"]:
            log.info("%s: %d answers came from concurrent jobs; %d of this job's answers were superseded by "
                     "an earlier one in the cache (the cache's answer is written)", self.label,
                     counts["from_other_jobs"], counts["superseded"])
        return billed

    def _settle(self, asking: dict[str, list[int]], found: dict[str, ChatResponse], counter: str) -> None:
        for key, response in found.items():
            for index in asking.pop(key):
                self.responses[index] = response
                self.counts[counter] += 1

    def _claim_and_ask(self, provider, cache: ResponseCache, asking: dict[str, list[int]], chunk: int,
                       poll_s: float) -> None:
        """Until every request has its answer: ask those this job can claim, `chunk` at a time, and wait for
        those other live jobs have claimed (`cache.claim` takes over a claim whose job died)."""
        waiting = False
        with Progress(len(asking), self.label, "request") as bar:
            while asking:
                mine = cache.claim(list(asking), chunk)
                if mine:
                    waiting = False
                    self._ask_claimed(provider, cache, asking, mine, bar)
                elif not waiting:
                    waiting = True
                    log.info("%s: waiting for %d requests claimed by other jobs", self.label, len(asking))
                else:
                    time.sleep(poll_s)
                found = cache.answered(asking)
                self._settle(asking, found, "from_other_jobs")
                bar.update(len(found))

    def _ask_claimed(self, provider, cache: ResponseCache, asking: dict[str, list[int]], mine: list[str],
                     bar: Progress) -> None:
        first = [self.requests[asking[key][0]] for key in mine]
        answers = provider.stream(first)
        try:
            for position, response in answers:
                stored = cache.put(first[position], response)  # the cache's answer wins
                _paid(self.counts, response)
                self.counts["superseded"] += stored != response
                self._settle(asking, {mine[position]: stored}, "asked")
                bar.update()
        except BaseException:  # Ctrl-C or a failure: keep what was paid for and still arrives
            answers.close()
            for position, response in getattr(provider, "unyielded", ()):
                cache.put(first[position], response)
            raise

    def finish(self, billed, provider) -> tuple[list[ChatResponse], Counter]:
        """Every row answered (else an error), and the costs: the billed rows' tokens, each once."""
        missing = [i for i, r in enumerate(self.responses) if r is None]
        if missing:
            raise ChatError(f"{self.label}: {len(missing)} requests got no answer (first: request {missing[0]})")
        counts = self.counts
        counts["retries"] = getattr(provider, "retries", 0)
        for index in billed:  # what the answers cost when they were made, each once
            counts["prompt_tokens"] += self.responses[index].prompt_tokens
            counts["completion_tokens"] += self.responses[index].completion_tokens
        for response in self.responses:
            counts["refused"] += response.finish_reason == "refusal"
            counts["truncated"] += response.finish_reason == "length"
            counts["empty"] += is_empty(response)
        return self.responses, counts


def _paid(counts: Counter, response: ChatResponse) -> None:
    """A request this job sent and got an answer to (what it paid for)."""
    counts["requests"] += 1
    counts["new_prompt_tokens"] += response.prompt_tokens
    counts["new_completion_tokens"] += response.completion_tokens


def component_rows(path: str | Path, max_rank: int | None = None) -> list[dict]:
    """The components of a lossless FFN layer shard (tsv.WORDS_COLUMNS), each with its `words`
    list and, for the output's paper layout, `TopK` (the escaped export of the words)."""
    rows = []
    for number, fields in read_tsv(path, WORDS_COLUMNS):
        row = dict(zip(WORDS_COLUMNS, fields))
        if max_rank is None or int(row["Rank"]) <= max_rank:
            row["words"] = decode_words(row.pop("Words"), f"{path}: line {number}")
            row["TopK"] = join_words(row["words"])
            rows.append(row)
    return rows


def origin(row: dict) -> tuple[str, ...]:
    """The component a request is about (replay tells repeated questions apart by it)."""
    return tuple(row[column] for column in ORIGIN_COLUMNS)


def describe_requests(rows: list[dict], seed: int, words: int, max_tokens: int) -> list[ChatRequest]:
    return [STEPS["describe"].request(words_message(row["words"], words), seed, max_tokens, origin(row))
            for row in rows]


def concept_requests(rows: list[dict], step: str, seed: int, max_tokens: int) -> list[ChatRequest]:
    return [STEPS[step].request(concept_message(row["Summary"], step), seed, max_tokens, origin(row))
            for row in rows]


def run_step(step: str, seed: int, inputs: list[str], output: str, stats: str, provider_settings: dict,
             cache_path: str | None, words: int = 15, max_rank: int | None = None, max_tokens: int = 64,
             runtime: dict | None = None, pair: str = "") -> None:
    started = time.perf_counter()
    provider = make_provider(provider_settings, step, seed, runtime or {})
    if step == "describe":
        rows = [row for path in inputs for row in component_rows(path, max_rank)]
        requests = describe_requests(rows, seed, words, max_tokens)
    else:
        (path,) = inputs
        rows = [dict(zip(DESCRIBED_COLUMNS, fields)) for _, fields in read_tsv(path, DESCRIBED_COLUMNS)]
        rows = [row for row in rows if row["Explainable"] == "1"]
        requests = concept_requests(rows, step, seed, max_tokens)
    cacheable = getattr(provider, "cacheable", True) and cache_path
    scope = getattr(provider, "cache_scope", provider.provider)
    cache = ResponseCache(cache_path, scope, getattr(provider, "cache_model", provider.model)) if cacheable else None
    try:
        responses, counts = answer_all(requests, provider, cache, f"{pair} {step} seed {seed}".strip(),
                                       chunk=getattr(provider, "chunk", 64))
    finally:
        if cache is not None:
            cache.close()
    not_asked = getattr(provider, "not_asked", lambda: None)()
    if not_asked:
        log.info("%s", not_asked)

    if step == "describe":
        out = []
        for row, request, response in zip(rows, requests, responses):
            summary = label_of(response)
            question = question_field(request.messages[-1]["content"])
            out.append([str(int(is_described(summary, response))), question, summary,
                        *(row[c] for c in LINEAR_COLUMNS)])
        counts["described"] = sum(r[0] == "1" for r in out)
    else:
        out = [[label_of(response), *(row[c] for c in DESCRIBED_COLUMNS)] for row, response in zip(rows, responses)]
    for row, response in zip(rows, responses):
        if response.finish_reason in ("refusal", "length"):
            log.warning("%s answer for %s layer %s rank %s: %r", response.finish_reason, row["Model"], row["Layer"],
                        row["Rank"], response.refusal or response.text)
        if is_empty(response):
            log.warning("empty answer for %s layer %s rank %s (%s): %s", row["Model"], row["Layer"], row["Rank"],
                        response.finish_reason, "not described" if step == "describe" else "names no category")
    write_tsv(out, step_columns(step), output)
    fingerprints = sorted({r.fingerprint for r in responses if r.fingerprint})
    report = {"pair": pair, "step": step, "seed": seed, "provider": provider.provider, "model": provider.model,
              "fingerprints": fingerprints, "rows": len(rows), **{k: counts[k] for k in (
                  "requests", "cache_hits", "prompt_tokens", "completion_tokens", "new_prompt_tokens",
                  "new_completion_tokens", "refused", "truncated", "empty", "retries", "from_other_jobs", "shared")},
              "seconds": round(time.perf_counter() - started, 3)}
    if step == "describe":
        report["described"] = counts["described"]
    atomic_write_text(stats, json.dumps(report, indent=1) + "\n")
    log.info("%s", json.dumps(report))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--pair", default="")
    parser.add_argument("--inputs", nargs="+", required=True,
                        help="describe: the pair's lossless FFN layer shards; task/level: that seed's linear_seed file")
    parser.add_argument("--output", required=True)
    parser.add_argument("--stats", required=True, help="JSON: requests, cache hits, tokens (the cost report's input)")
    parser.add_argument("--provider", required=True, help="JSON: the config's annotation.provider")
    parser.add_argument("--api-key-env", help="openai: the name of the environment variable holding the API key "
                        "(the key itself is read from the environment, never passed); empty: a server without keys")
    parser.add_argument("--cache", help="SQLite response cache (omit: no cache)")
    parser.add_argument("--words", type=positive_int, default=15)
    parser.add_argument("--max-rank", type=non_negative_int, default=0,
                        help="annotate components of rank <= this only (0: all)")
    parser.add_argument("--max-tokens", type=positive_int, default=64)
    parser.add_argument("--runtime", default="{}", help="JSON: concurrency, max_retries, timeout_s, batch_size")
    args = parser.parse_args(argv)
    setup_logging()
    settings = json.loads(args.provider)
    if args.api_key_env is not None:
        settings["api_key_env"] = args.api_key_env or None
    try:
        run_step(args.step, args.seed, args.inputs, args.output, args.stats, settings, args.cache,
                 args.words, args.max_rank or None, args.max_tokens, json.loads(args.runtime), args.pair)
    except ChatError as error:
        log.error("%s", error)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
