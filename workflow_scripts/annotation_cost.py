"""What the annotation cost, per seed and step, from the jobs' stats files.

`requests` were sent by the job's last run (0 when everything came from the cache), `cache_hits`
were not (rows answered from the cache, a concurrent job's answers included), `shared` rows asked
what another row asked and answered by its request (rows = requests + cache_hits + shared);
`retries` counts the attempts of the last run that failed transiently (429, 5xx, timeouts,
malformed answers) and were sent again; `empty` the answers without text (not described, or naming
no category), refusals aside; the token counts and `cost_usd` cover each distinct answer the step
used once, cached or not (what the annotation cost when it was made), `cost_usd_last_run` only the
requests the last run sent.
Prices are USD per million tokens per model (annotation.prices); a model without a price gets
n/a, never a made-up zero.
"""
from __future__ import annotations

import argparse
import json

import pandas as pd

from .table_files import write_table

COLUMNS = ["seed", "step", "provider", "model", "rows", "requests", "retries", "cache_hits", "shared", "prompt_tokens",
           "completion_tokens", "refused", "truncated", "empty", "cost_usd", "cost_usd_last_run"]
COUNTED = [c for c in COLUMNS[:13] if c not in ("retries", "shared")]
OPTIONAL = ("retries", "shared", "empty")  # stats written before these were counted: n/a
STEP_ORDER = {"describe": 0, "task": 1, "level": 2}


def price(prompt_tokens: int, completion_tokens: int, prices: dict | None) -> float:
    if not prices:
        return float("nan")
    return (prompt_tokens * prices["prompt"] + completion_tokens * prices["completion"]) / 1e6


def cost_table(stats_files: list[str], prices: dict) -> pd.DataFrame:
    rows = []
    for path in stats_files:
        with open(path, encoding="utf8") as handle:
            s = json.load(handle)
        model_prices = prices.get(s["model"]) if s["provider"] == "openai" else {"prompt": 0.0, "completion": 0.0}
        rows.append({
            **{k: s[k] for k in COUNTED},
            **{k: s.get(k, float("nan")) for k in OPTIONAL},
            "cost_usd": price(s["prompt_tokens"], s["completion_tokens"], model_prices),
            "cost_usd_last_run": price(s["new_prompt_tokens"], s["new_completion_tokens"], model_prices),
        })
    table = pd.DataFrame(rows, columns=COLUMNS)
    table = table.sort_values(["seed", "step"], key=lambda c: c.map(STEP_ORDER) if c.name == "step" else c)
    total = {c: table[c].sum(skipna=False) if c not in ("seed", "step", "provider", "model") else "" for c in COLUMNS}
    total["step"] = "total"
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stats", nargs="+", required=True)
    parser.add_argument("--prices", default="{}", help="JSON: {model: {prompt: USD/1M, completion: USD/1M}}")
    parser.add_argument("--title", default="Annotation cost")
    parser.add_argument("--pair", help="title: 'Annotation cost (PAIR)'")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    title = f"Annotation cost ({args.pair})" if args.pair else args.title
    write_table(cost_table(args.stats, json.loads(args.prices)), args.output, title)


if __name__ == "__main__":
    main()
