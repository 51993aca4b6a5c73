"""What the Snakemake rules need to know before any job runs: shards, model sources, pairs.

Kept out of the .smk files so it is unit-tested without Snakemake. Everything here is cheap:
the dataset is read once per process and cached, and no model is touched.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from .dataset import Sample, read_dataset, shard_samples
from .instructions import instruction_spans
from .model_paths import ModelShape, looks_local
from .model_paths import model_shape as shape_of


class ConfigError(ValueError):
    """A config that is valid JSON Schema but inconsistent; the message names the key."""


@functools.lru_cache(maxsize=8)
def _samples(path: str, mtime_ns: int) -> tuple[Sample, ...]:
    """Read and check once: an annotation that misses its prompt fails the plan, not a table job."""
    samples = tuple(read_dataset(path))
    for sample in samples:
        instruction_spans(sample.prompt, sample.annotation, sample.id)
    return samples


def dataset_samples(config: dict) -> tuple[Sample, ...]:
    """The dataset's samples, read from the fetched copy or, before the fetch, from its source."""
    for path in dataset_candidates(config):
        if Path(path).is_file():
            return _samples(str(path), Path(path).stat().st_mtime_ns)
    raise ConfigError(
        f"dataset.samples: {config['dataset']['samples']} does not exist yet and its shards are needed to "
        "plan the attribution jobs; run `snakemake --cores 1 paper_datasets` first (it downloads the "
        "paper data), or set paper_data to a local copy of it"
    )


def dataset_candidates(config: dict) -> list[str]:
    path = config["dataset"]["samples"]
    candidates = [path]
    fetched = "resources/paper/"
    if config.get("paper_data") and path.startswith(fetched):
        candidates.append(str(Path(config["paper_data"]) / path[len(fetched) :]))
    return candidates


def shard_ids(config: dict) -> list[int]:
    return list(range(len(_shards(config))))


def _shards(config: dict) -> list[list[Sample]]:
    return shard_samples(list(dataset_samples(config)), config["attribution"]["shard_size"])


def shard_digest(config: dict, shard: int) -> str:
    """Changes exactly when a sample of this shard changes (a rule param: Snakemake reruns on it)."""
    samples = _shards(config)[int(shard)]
    return hashlib.sha256("".join(s.digest() for s in samples).encode()).hexdigest()[:16]


def model_config(config: dict, model: str) -> dict:
    try:
        return config["models"][model]
    except KeyError:
        raise ConfigError(f"models: no model {model!r} (known: {', '.join(config['models'])})") from None


def check_config(config: dict) -> None:
    """Cross-key checks the schema cannot express."""
    for pair, members in config["pairs"].items():
        for role in ("pretrained", "tuned"):
            if members[role] not in config["models"]:
                raise ConfigError(f"pairs.{pair}.{role}: {members[role]!r} is not a key of models")
    for model, settings in config["models"].items():
        if settings.get("attribution") == "released" and not settings.get("released"):
            raise ConfigError(f"models.{model}.released: required when attribution is 'released'")
        path = settings["path"]
        needs_weights = settings.get("attribution", "computed") == "computed"
        if needs_weights and looks_local(path) and not settings.get("build") and not Path(path).expanduser().exists():
            raise ConfigError(f"models.{model}.path: model directory {path} not found")
    ratings = config.get("ratings")
    if ratings and ratings["model"] not in config["models"]:
        raise ConfigError(f"ratings.model: {ratings['model']!r} is not a key of models")


def check_annotation_provider(provider: dict) -> None:
    """Checked when an annotation job is planned (a config without annotation needs no provider)."""
    kind = provider.get("kind", "openai")
    if kind == "openai" and not provider.get("model"):
        raise ConfigError("annotation.provider.model: required for the openai provider (e.g. gpt-3.5-turbo-0613)")
    if kind in ("local", "replay") and not provider.get("path"):
        raise ConfigError(f"annotation.provider.path: required for the {kind} provider")
    if kind == "replay" and not Path(provider["path"]).is_dir():
        raise ConfigError(f"annotation.provider.path: replay folder {provider['path']} not found")


def missing_api_key(provider: dict) -> str | None:
    """The name of the unset environment variable the openai provider needs, else None."""
    variable = provider.get("api_key_env")
    if provider.get("kind", "openai") == "openai" and variable and not os.environ.get(variable):
        return variable
    return None


def table1_pairs(config: dict) -> list[str]:
    """Pairs whose tuned model's responses have human ratings (Table 1 needs them)."""
    rated = (config.get("ratings") or {}).get("model")
    return [p for p, m in config["pairs"].items() if m["tuned"] == rated]


def model_dir_input(config: dict, model: str) -> list[str]:
    """The model directory as a job input when the workflow builds it or it is local."""
    settings = model_config(config, model)
    path = settings["path"]
    if settings.get("build") or Path(path).exists():
        return [path]
    return []


def model_shape(config: dict, model: str) -> ModelShape:
    """Layers and heads of a model, known before its weights are (config.json, else the config)."""
    try:
        return shape_of(model, model_config(config, model))
    except ValueError as error:
        raise ConfigError(str(error)) from None


def pair_models(config: dict) -> list[str]:
    """Models that belong to a pair, in config order, each once."""
    return list(dict.fromkeys(m for pair in config["pairs"].values() for m in (pair["pretrained"], pair["tuned"])))


def bilinear_model_names(config: dict) -> dict[str, str]:
    """Model id -> the Model column value in bilinear_words.tsv (renamed in a released file)."""
    released = config["attention"].get("released")
    names = {m: m for m in config["models"]}
    if released:
        missing = [m for m in pair_models(config) if m not in released["models"]]
        if missing:
            raise ConfigError(f"attention.released.models: no name for {', '.join(missing)}")
        names.update(released["models"])
    return names


def vocabulary(config: dict) -> str:
    """The word list of the global explanations; required only when one of them is planned."""
    if not config.get("vocabulary"):
        raise ConfigError("vocabulary: a word<TAB>frequency file is needed for the attention and FFN explanations")
    return config["vocabulary"]


# What `fidelity` selects, per rule it reaches: each rule's params carry only its own slice, so a
# value that changes only one of them reruns only that rule's jobs.
FIDELITY_RULES = {
    "paper": {"thresholds": "paper", "counting": "paper"},
    "canonical": {"thresholds": "canonical", "counting": "canonical"},
}


def fidelity_rule(config: dict, part: str) -> str:
    """The rule `fidelity` selects for `part`: `thresholds` (head explanations) or `counting` (Table 3)."""
    value = config.get("fidelity", "paper")
    if value not in FIDELITY_RULES:
        raise ConfigError(f"fidelity: unknown value {value!r}; expected one of {', '.join(FIDELITY_RULES)}")
    return FIDELITY_RULES[value][part]
