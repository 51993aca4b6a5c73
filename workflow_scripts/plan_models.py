"""The models as the plan sees them: their settings, the files a job reads of them, their shape, and
the hub models a run needs from the local cache, and whether a pair's twins cut words one way. No weight is
loaded here."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

from .config_checks import ConfigError
from .model_paths import SENTENCEPIECE_FILE, ModelShape, cached_config, hub_offline, looks_local, model_file_paths
from .model_paths import model_shape as shape_of
from .word_pieces import sentencepiece_file


def model_config(config: dict, model: str) -> dict:
    try:
        return config["models"][model]
    except KeyError:
        raise ConfigError(f"models: no model {model!r} (known: {', '.join(config['models'])})") from None


def pair_members(config: dict, pair: str) -> list[str]:
    """The pair's pre-trained model, then its tuned one."""
    members = config["pairs"][pair]
    return [members["pretrained"], members["tuned"]]


def pair_models(config: dict) -> list[str]:
    """Models that belong to a pair, in config order, each once."""
    return list(dict.fromkeys(m for pair in config["pairs"].values() for m in (pair["pretrained"], pair["tuned"])))


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


@functools.lru_cache(maxsize=None)
def model_files(path: str) -> tuple[str, ...]:
    """The files of a model directory that make the model (model_paths.MODEL_FILE_PATTERNS), each an input
    of the jobs reading it: a folder's date changes only when an entry is added or removed, so weights
    written over a model's own (a new download into the same folder) would leave those jobs "up to date".
    Once per planning process and directory."""
    return tuple(str(Path(path) / file.name) for file in model_file_paths(path))


def model_shape(config: dict, model: str) -> ModelShape:
    """Layers and heads of a model, known before its weights are (config.json, else the config)."""
    try:
        return shape_of(model, model_config(config, model))
    except ValueError as error:
        raise ConfigError(str(error)) from None


WORD_CUT_RULES = ("word_pieces",)  # the jobs that cut words into the model's pieces
WEIGHT_RULES = ("attribute_shard", "explain_attention_layer", "explain_ffn_layer", *WORD_CUT_RULES)


def require_hub_models(config: dict, scheduled: list[tuple[str, dict]]) -> None:
    """Called once the DAG is built and a real run is about to start, for each hub model id that a scheduled
    job loads and the local cache lacks. Offline, it fails here, once, before any job (else every shard job
    would fail on its own after minutes of retries, saying only "couldn't connect"). Online, the hub is asked
    for the model: a mistyped or gated id failed only in its first job, after Snakemake had deleted the results
    of every job whose `path` param changed (hours of GPU time for a paper model's shards and layers)."""
    offline = hub_offline()
    needed = sorted({w["model"] for rule, w in scheduled if rule in WEIGHT_RULES and "model" in w})
    for model in needed:
        path = model_config(config, model)["path"]
        if looks_local(path) or cached_config(path) is not None:
            continue
        if offline:
            raise ConfigError(
                f"models.{model}.path: {path} is not in the local cache, and {offline} is set; download it "
                f"once where there is network (`hf download {path}`) and copy the cache, or set models.{model}.path "
                "to a local directory (a mistyped id shows here too)"
            )
        problem = hub_problem(path)
        if problem:
            raise ConfigError(f"models.{model}.path: {path} {problem}")


def hub_problem(path: str, endpoint: str | None = None) -> str | None:
    """Why the hub (HF_ENDPOINT, with this machine's token) cannot give the model's config.json; None when it
    can, or when the hub cannot be asked (no network, a proxy: said on stderr, and the jobs try themselves)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError

    try:
        if HfApi(endpoint=endpoint).file_exists(path, "config.json"):
            return None
    except GatedRepoError:
        return ("is gated on the hub, and this machine's token has no access to it: ask for access on the "
                "model's page, then `hf auth login` or set HF_TOKEN")
    except Exception as error:  # any failure to ask: httpx's or requests' errors, by the hub library's version
        print(f"shiftlens: could not ask the hub about {path} ({type(error).__name__}: {error}); its jobs will try "
              "to download it (on a machine without network, set HF_HUB_OFFLINE=1)", file=sys.stderr)
        return None
    return ("is not on the hub: a mistyped id, a private model without a token for it (`hf auth login` or "
            "HF_TOKEN), or a repository without config.json")


def require_one_word_cut_per_pair(config: dict, scheduled: list[tuple[str, dict]], piece_rule: str,
                                  endpoint: str | None = None) -> None:
    """Under the paper's word-piece rule a model with a SentencePiece tokenizer.model has its words cut by it (as
    the paper's slow tokenizer), a model without by its tokenizer. Twins that would take different routes (a
    LLaMA tuned and saved under transformers 5, which writes no tokenizer.model) give ~5% of the words (1,382 of
    the paper's 26,473 under LLaMA's vocabulary) vectors cut one way in one model and the other way in its twin,
    and Tables 3 and 5 would count the difference as the tuning's. Checked once the DAG is built, for the pairs
    with a word-cutting job (`word_pieces`) to run."""
    if piece_rule != "paper":
        return
    to_run = {w["model"] for rule, w in scheduled if rule in WORD_CUT_RULES and "model" in w}
    for pair, members in config["pairs"].items():
        twins = (members["pretrained"], members["tuned"])
        if not to_run.intersection(twins):
            continue
        cut = {model: cuts_with_sentencepiece(model_config(config, model)["path"], endpoint) for model in twins}
        if None in cut.values() or cut[twins[0]] == cut[twins[1]]:
            continue
        with_file, without = twins if cut[twins[0]] else twins[::-1]
        path = model_config(config, without)["path"]
        fix = (f"fetch it where there is network (`hf download {path} {SENTENCEPIECE_FILE}`) if its repository has "
               "it, else copy the twin's into a local folder of the model" if not looks_local(path) else
               f"copy models.{with_file}'s {SENTENCEPIECE_FILE} into that folder (twins share the vocabulary)")
        raise ConfigError(
            f"pairs.{pair}: under fidelity: paper, models.{with_file} has its words cut by its SentencePiece "
            f"{SENTENCEPIECE_FILE}, as the paper's slow tokenizer cut them, but models.{without}.path ({path}) has no "
            f"SentencePiece {SENTENCEPIECE_FILE}, so its words would be cut by its tokenizer (transformers 5 saves "
            "a LLaMA tokenizer without the file): about 5% of the words would get other vectors in one twin than "
            f"in the other, and Tables 3 and 5 would count that as the tuning's. {fix[0].upper()}{fix[1:]}; or set "
            "fidelity: canonical (both cut by their tokenizers)"
        )


def cuts_with_sentencepiece(path: str, endpoint: str | None = None) -> bool | None:
    """Whether the layer jobs of the model at `path` will cut words with a SentencePiece tokenizer.model: from
    its folder, or its cached snapshot where the jobs read the cache as it is (offline, or the file there);
    else asked of the hub, as the jobs' snapshot fetches the file where the repository has it. None when it
    cannot be known yet (a folder a rule builds, an uncached model offline, a hub out of reach)."""
    config_json = cached_config(path)
    if config_json is not None and (looks_local(path) or hub_offline()
                                    or (config_json.parent / SENTENCEPIECE_FILE).is_file()):
        return sentencepiece_file(config_json.parent) is not None
    if looks_local(path) or hub_offline():
        return None
    from huggingface_hub import HfApi

    try:
        return HfApi(endpoint=endpoint).file_exists(path, SENTENCEPIECE_FILE)
    except Exception:  # a hub out of reach: require_hub_models has said so, and the jobs try themselves
        return None
