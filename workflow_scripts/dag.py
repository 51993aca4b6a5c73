"""What the Snakemake rules need to know before any job runs: shards, model sources, pairs.

Kept out of the .smk files so it is unit-tested without Snakemake. Everything here is cheap:
the dataset is read once per process and cached, and no model is touched.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from .annotation_files import FILES
from .code_version import method_version
from .config_checks import ConfigError
from .dataset import Sample, read_dataset, shard_samples
from .model_paths import ModelShape, cached_config, hub_offline, looks_local
from .model_paths import model_shape as shape_of
from .paper_data import read_manifest, sha256
from .plan_annotation import PROVIDER_SPEED_KEYS, check_annotation_provider, check_endpoint

PAPER_MANIFEST = "datasets/paper-manifest.sha256"
FETCHED = "resources/paper/"


@functools.lru_cache(maxsize=8)
def _samples(path: str, mtime_ns: int) -> tuple[Sample, ...]:
    """Read and check once (`read_dataset`: an annotation that misses its prompt fails the plan, not a table job)."""
    return tuple(read_dataset(path))


def dataset_samples(config: dict) -> tuple[Sample, ...]:
    """The dataset's samples, read from the fetched copy or, before the fetch, from its source."""
    return _samples(*_dataset_file(config))


def _dataset_file(config: dict) -> tuple[str, int]:
    """(path, mtime) of the dataset file the plan reads: the key of everything cached from it."""
    found = _existing_dataset(config)
    if found is None:
        raise _missing_dataset(config)
    return found


def _existing_dataset(config: dict) -> tuple[str, int] | None:
    """(path, mtime) of the fetched copy or, before the fetch, its source; None before both."""
    for path in dataset_candidates(config):
        if Path(path).is_file():
            return str(path), Path(path).stat().st_mtime_ns
    return None


def _missing_dataset(config: dict) -> ConfigError:
    samples = config["dataset"]["samples"]
    if not samples.startswith(FETCHED):  # the user's own file (the demo's): not something to fetch
        return ConfigError(
            f"dataset.samples: {samples} not found in the working directory {os.getcwd()}; run snakemake in "
            "the project's folder (or give it `--directory` there), or set dataset.samples to the file"
        )
    return ConfigError(
        f"dataset.samples: {samples} does not exist yet and its shards are needed to "
        "plan the attribution jobs; run `snakemake --cores 1 paper_datasets` first (it downloads the "
        "paper data), or set paper_data to a local copy of it"
    )


def dataset_candidates(config: dict) -> list[str]:
    path = config["dataset"]["samples"]
    candidates = [path]
    if config.get("paper_data") and path.startswith(FETCHED):
        candidates.append(str(Path(config["paper_data"]) / path[len(FETCHED) :]))
    return candidates


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, mtime_ns: int) -> str:
    """paper_data.sha256, once per file version (the mtime is the cache key's second half)."""
    return sha256(path)


@functools.lru_cache(maxsize=2)
def _manifest(path: str, mtime_ns: int) -> dict[str, str]:
    return read_manifest(path)


def paper_checksums(names: list[str] | None = None, folder: str | None = None) -> str:
    """The paper-data fetch rules' one param: 16 hex digits of the manifest's checksums of the files a job
    fetches (`names`, or every file under `folder`), which change exactly when one's content does. Where
    the files are read from is no param: the fetch checks each against the manifest, and moving the
    local copy must not rerun the 128 head and FFN layer jobs that read the vocabulary."""
    manifest = _manifest(PAPER_MANIFEST, Path(PAPER_MANIFEST).stat().st_mtime_ns)
    chosen = sorted(names if names is not None else [n for n in manifest if n.startswith(f"{folder}/")])
    return hashlib.sha256("".join(f"{manifest.get(n)}  {n}\n" for n in chosen).encode()).hexdigest()[:16]


def dataset_digest(config: dict) -> str:
    """SHA-256 of the dataset file, checked row by row on the way (a bad row fails the plan).

    Before the paper data are fetched, the manifest's checksum stands for the file: the fetch
    verifies against it, so the digest is the same before and after the fetch (nothing reruns).
    """
    found = _existing_dataset(config)
    if found is not None:
        _samples(*found)
        return _file_sha256(*found)
    samples = config["dataset"]["samples"]
    if samples.startswith(FETCHED) and Path(PAPER_MANIFEST).is_file():
        checksum = _manifest(PAPER_MANIFEST, Path(PAPER_MANIFEST).stat().st_mtime_ns).get(samples[len(FETCHED) :])
        if checksum:
            return checksum
    raise _missing_dataset(config)


def attribution_source(config: dict, model: str) -> str:
    return model_config(config, model).get("attribution", "computed")


def attribution_file(config: dict, model: str) -> str:
    """What the tables read. Released and computed attributions never share a path, so that one
    can never stand in for the other after a config switch."""
    name = "released.npz" if attribution_source(config, model) == "released" else "attributions.npz"
    return f"results/attribution/{model}/{name}"


def attribution_precision(config: dict, model: str) -> str:
    """The model's own `precision`, else `attribution.precision`, else the paper's float32."""
    return model_config(config, model).get("precision") or (config.get("attribution") or {}).get("precision", "float32")


def attribution_inputs(config: dict, model: str) -> dict:
    """Everything that decides a model's attributions (chunk_size, backward_batch and autodiff trade speed
    only: not in it)."""
    settings = model_config(config, model)
    record = {"model": model, "source": attribution_source(config, model), "dataset": dataset_digest(config)}
    if record["source"] == "released":
        record["released"] = released_dir(config, model)
        return record
    attribution = config.get("attribution") or {}
    record.update(
        method=method_version("attribution"),
        path=settings["path"],
        precision=attribution_precision(config, model),
        response=attribution.get("response", "generate"),
        max_new_tokens=attribution.get("max_new_tokens", 300),
        shard_size=attribution.get("shard_size", 16),
    )
    return record


def attribution_provenance(config: dict, models: list[str]) -> str:
    """A short digest of what went into these models' attributions: a rule param of the merge and
    the table jobs. A table whose inputs were planned from other settings reruns, and with it any
    missing intermediate (a merge killed after its shards were redone is never passed over)."""
    text = json.dumps([attribution_inputs(config, m) for m in models], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def shard_ids(config: dict) -> list[int]:
    return list(range(len(_shard_digests(*_dataset_file(config), config["attribution"]["shard_size"]))))


@functools.lru_cache(maxsize=8)
def _shard_digests(path: str, mtime_ns: int, shard_size: int) -> tuple[str, ...]:
    """Every shard's digest, computed once per dataset file and shard size: the plan asks for one
    per attribution job, and rebuilding the shard lists each time made planning quadratic."""
    shards = shard_samples(list(_samples(path, mtime_ns)), shard_size)
    return tuple(hashlib.sha256("".join(s.digest() for s in samples).encode()).hexdigest()[:16] for samples in shards)


def shard_digests(config: dict) -> tuple[str, ...]:
    """Every shard's digest, in shard order: each changes exactly when a sample of its shard changes."""
    return _shard_digests(*_dataset_file(config), config["attribution"]["shard_size"])


def shard_digest(config: dict, shard: int) -> str:
    """Changes exactly when a sample of this shard changes (a rule param: Snakemake reruns on it)."""
    return shard_digests(config)[int(shard)]


# Keys that change only speed or placement (docs/design.md#configuration-and-incrementality): no result depends on
# them, so neither a job's params nor the provenance page, which says what the tables were computed from.
SPEED_KEYS = {
    "attribution": ("chunk_size", "backward_batch", "autodiff"),
    "model": ("gpus",),
    "attention": ("gpus",),
    "ffn": ("gpus",),
    "provider": PROVIDER_SPEED_KEYS,
}


def without_speed(settings: dict | None, kind: str) -> dict | None:
    """A config section without its speed and placement keys (SPEED_KEYS[kind])."""
    return None if settings is None else {k: v for k, v in settings.items() if k not in SPEED_KEYS[kind]}


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
    analysis = config.get("analysis") or {}
    if analysis.get("threshold", 7) >= analysis.get("levels", 10):
        raise ConfigError(
            f"analysis.threshold ({analysis.get('threshold', 7)}) must be below analysis.levels "
            f"({analysis.get('levels', 10)}): bins <= threshold are set to 0, so every score would be 0"
        )
    for key, path in built_paths(config):
        check_inside_workdir(key, path)
    cache = (config.get("annotation") or {}).get("cache")
    if cache:
        check_inside_workdir("annotation.cache", cache, follow_links=False, hint="; to share one cache between "
                             "working directories, link each one's resources/annotation to one folder")
    check_built_paths(config)
    check_endpoint(((config.get("annotation") or {}).get("provider") or {}).get("base_url"))
    for model, settings in config["models"].items():
        if settings.get("attribution") == "released":
            released_dir(config, model)  # sample ids as file names, when the dataset is readable


def check_dataset(config: dict) -> None:
    """Read and check the dataset now, when it is there (before the paper data are fetched it is not).

    An error raised inside an input function or param is dropped by Snakemake when the file that
    job would make exists, so a row that lost a column would pass unseen in a folder with results.
    """
    found = _existing_dataset(config)
    if found is not None:
        _samples(*found)


def built_paths(config: dict) -> list[tuple[str, str]]:
    """Configured paths this workflow writes (a rule's output): key -> path."""
    paths = [(f"models.{m}.path", s["path"]) for m, s in config["models"].items() if s.get("build")]
    provider = (config.get("annotation") or {}).get("provider") or {}
    if provider.get("build") and provider.get("path"):
        paths.append(("annotation.provider.path", provider["path"]))
    return paths


BUILT_MODEL_DIR = "resources/models/{build}"  # where rules/data.smk's demo rules write each built model


def check_built_paths(config: dict) -> None:
    """A built model must be where its demo rule writes it, and no built folder may hold another: else
    planning fails later, as a missing input or two rules claiming one folder, without naming the keys."""
    for model, settings in config["models"].items():
        if settings.get("build"):
            fixed = BUILT_MODEL_DIR.format(build=settings["build"])
            if os.path.normpath(settings["path"]) != fixed:
                raise ConfigError(f"models.{model}.path: {settings['path']}: `build: {settings['build']}` writes the "
                                  f"model to {fixed}; give that path, or drop `build:` to read a model of your own")
    paths = [(key, Path(os.path.normpath(path))) for key, path in built_paths(config)]
    for key, path in paths:
        for other, where in paths:
            shared = path == where and "annotation.provider.path" in (key, other)  # models of one build share one
            if key != other and (shared or where in path.parents):
                raise ConfigError(f"{key} ({path}) lies in {other} ({where}): each is a folder this workflow writes "
                                  "as a whole; give them separate folders")


def check_inside_workdir(key: str, path: str, follow_links: bool = True, hint: str = "") -> None:
    """A path the workflow writes must stay inside the working directory (no absolute, no `..` out). With
    `follow_links` False it is checked as written, so a link inside may lead elsewhere: the answer cache,
    which working directories share through a linked `resources/annotation` (Snakemake never deletes it,
    as it is no rule's output)."""
    workdir = Path.cwd().resolve()
    given = Path(path).expanduser()
    resolved = (workdir / given).resolve() if follow_links else Path(os.path.normpath(workdir / given))
    if given.is_absolute() or not resolved.is_relative_to(workdir) or resolved == workdir:
        raise ConfigError(f"{key}: {path} is written by this workflow, so it must lie inside the "
                          f"working directory {workdir} (a relative path without `..` out of it{hint})")


def released_dir(config: dict, model: str) -> str:
    """The model's released attribution folder; the conversion reads `<id>.pkl` there, and the dataset
    is read first (`read_dataset` takes only ids that are plain file names), so no id reads outside
    the checksummed folder."""
    name = model_config(config, model)["released"]
    found = _existing_dataset(config)
    if found is not None:
        _samples(*found)
    return f"resources/paper/results/attribution_interpret/{name}"


def annotator_input(provider: dict, step: str | None = None, seed: int | str | None = None) -> list[str]:
    """What an annotation step reads besides its rows: the local model's directory when there is one
    (to be built by demo_annotator, or on disk with its model_files), so that the steps wait for it and
    rerun when it changes; for `replay`, the step's answers file of the seed, so that a file replaced
    reruns the step that read it."""
    check_annotation_provider(provider)
    if provider["kind"] == "local":
        return model_input(provider["path"], bool(provider.get("build")))
    if provider["kind"] == "replay" and step is not None:
        return [str(Path(provider["path"]) / FILES[step].format(seed=seed))]
    return []


def word_vectors_input(config: dict) -> list[str]:
    """The word-vectors file or folder the head jobs read (none for the packaged default): vectors
    replaced in place change which word pairs every head keeps."""
    path = config["attention"]["word_vectors"].get("path")
    return [path] if path else []


WEIGHT_RULES = ("attribute_shard", "explain_attention_layer", "explain_ffn_layer")
def require_cached_models(config: dict, scheduled: list[tuple[str, dict]]) -> None:
    """Called once the DAG is built and a real run is about to start: offline, a hub model id that
    a scheduled job needs and the local cache lacks fails here, once, before any job (else every
    shard job would fail on its own after minutes of retries, saying only "couldn't connect")."""
    offline = hub_offline()
    if not offline:
        return
    needed = sorted({w["model"] for rule, w in scheduled if rule in WEIGHT_RULES and "model" in w})
    for model in needed:
        path = model_config(config, model)["path"]
        if not looks_local(path) and cached_config(path) is None:
            raise ConfigError(
                f"models.{model}.path: {path} is not in the local cache, and {offline} is set; download it "
                f"once where there is network (`hf download {path}`) and copy the cache, or set models.{model}.path "
                "to a local directory (a mistyped id shows here too)"
            )


def table1_pairs(config: dict) -> list[str]:
    """Pairs whose tuned model's responses have human ratings (Table 1 needs them)."""
    rated = (config.get("ratings") or {}).get("model")
    return [p for p, m in config["pairs"].items() if m["tuned"] == rated]


def model_dir_input(config: dict, model: str) -> list[str]:
    """What a job reads of a model, as its inputs: the directory the workflow builds (its output), or a
    local directory with the files in it that make the model (model_files)."""
    settings = model_config(config, model)
    return model_input(settings["path"], bool(settings.get("build")))


def model_input(path: str, built: bool) -> list[str]:
    """A model directory as job inputs: the folder a rule builds (its output, so the job waits for it),
    else a local folder and its model_files, else nothing (a hub id)."""
    if built:
        return [path]
    if Path(path).exists():
        return [path, *model_files(path)]
    return []


# The files of a model directory that a job reads: config, weights, tokenizer, chat template.
MODEL_FILE_PATTERNS = ("*.json", "*.safetensors", "*.model", "merges.txt", "vocab.txt", "*.jinja")


@functools.lru_cache(maxsize=None)
def model_files(path: str) -> tuple[str, ...]:
    """The files of a model directory that make the model (MODEL_FILE_PATTERNS), each an input of the
    jobs reading it: a folder's date changes only when an entry is added or removed, so weights written
    over a model's own (a new download into the same folder) would leave those jobs "up to date". Once
    per planning process and directory."""
    root = Path(path)
    found = {file for pattern in MODEL_FILE_PATTERNS for file in root.glob(pattern) if file.is_file()}
    return tuple(str(Path(path) / file.name) for file in sorted(found))


def model_shape(config: dict, model: str) -> ModelShape:
    """Layers and heads of a model, known before its weights are (config.json, else the config)."""
    try:
        return shape_of(model, model_config(config, model))
    except ValueError as error:
        raise ConfigError(str(error)) from None


def layer_shards(config: dict, kind: str, models: list[str]) -> list[str]:
    """The per-layer explanation files (kind: attention or ffn) of `models`, model by model, layer by
    layer: what a merge or an annotation step reads."""
    return [
        f"results/{kind}/{model}/layer-{layer}.tsv"
        for model in models
        for layer in range(model_shape(config, model).layers)
    ]


def pair_members(config: dict, pair: str) -> list[str]:
    """The pair's pre-trained model, then its tuned one."""
    members = config["pairs"][pair]
    return [members["pretrained"], members["tuned"]]


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


def pair_head_files(config: dict, pair: str) -> list[str]:
    """What a pair's explanation browser reads for its heads: the released bilinear_words.tsv, or the
    members' lossless attention shards (a change to another pair's models rebuilds nothing here)."""
    released = config["attention"].get("released")
    return [released["path"]] if released else layer_shards(config, "attention", pair_members(config, pair))
