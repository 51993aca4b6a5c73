"""The LLM annotation provider as the plan sees it: the endpoint its requests go to, which of its keys
decide the answers (params) and which only the speed (the command line), the code version its answers
follow, and the API key a run needs before any job starts. The key itself never enters the plan.
"""
from __future__ import annotations

import json
import os
import urllib.parse

from .code_version import code_digest, method_version
from .config_checks import ConfigError


def check_endpoint(url: str | None, key: str = "annotation.provider.base_url") -> None:
    """The endpoint goes into the annotation jobs' params and shell lines, the provenance page and every
    cached answer's key, so it must hold no secret; the errors never quote it."""
    if url is None:
        return
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError:
        host = None
    if host is None or parts.scheme not in ("http", "https"):
        raise ConfigError(f"{key}: not an http(s) URL; give the endpoint, e.g. http://localhost:8000/v1")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{key}: holds credentials (user:password@ before the host); give the endpoint alone "
                          "and the key in the environment variable named by annotation.provider.api_key_env")
    if parts.query or parts.fragment:
        raise ConfigError(f"{key}: has a query or fragment (after ? or #); give the endpoint alone, e.g. "
                          "http://localhost:8000/v1, and any key in the variable named by api_key_env")


def resolved_provider(provider: dict) -> dict:
    """The provider with the endpoint its requests go to: with `base_url: null` the openai client sends
    to OPENAI_BASE_URL when set, so that goes into the params (a change reruns the annotation), the
    provenance and the cache's keys; the job gets it explicitly and never reads the variable itself.
    A local model left unnamed gets the name its job gives it, so that writing that name out reruns
    nothing (it reran every annotation job and the provenance page)."""
    if provider.get("kind") == "local" and not provider.get("model") and provider.get("path"):
        from .annotate import local_model_name  # the job's own rule; annotate imports nothing heavy

        provider = {**provider, "model": local_model_name(provider)}
    variable = os.environ.get("OPENAI_BASE_URL", "")
    if provider.get("kind", "openai") != "openai" or provider.get("base_url") or not variable:
        return provider
    check_endpoint(variable, "OPENAI_BASE_URL (the environment variable, used as annotation.provider.base_url is null)")
    return {**provider, "base_url": variable}


# The annotation provider's keys, each in one group (a test checks the schema's against them). Those that
# decide the answers are the annotation steps' `provider` param: a change reruns the annotation. The speed
# keys (also dag.SPEED_KEYS["provider"]) reach the job through a global its shell line names, whose text
# stays the same; `api_key_env` only names the variable the job reads the key from (the key never reaches
# params, shell lines or logs), and `build` how the local model is made (its folder is an input of the steps).
PROVIDER_ANSWER_KEYS = ("kind", "model", "base_url", "path")
PROVIDER_SPEED_KEYS = ("concurrency", "max_retries", "timeout_s", "batch_size", "gpus")
PROVIDER_PLUMBING_KEYS = ("api_key_env", "build")


def provider_param(provider: dict) -> str:
    """What decides the provider's answers, as the annotation steps' param (JSON)."""
    return json.dumps({k: provider.get(k) for k in PROVIDER_ANSWER_KEYS}, sort_keys=True)


def provider_runtime(provider: dict) -> str:
    """The provider's speed keys (JSON), for the job's command line: never a param."""
    return json.dumps({k: provider[k] for k in PROVIDER_SPEED_KEYS if k != "gpus"}, sort_keys=True)


def require_valid_annotation(config: dict, provider: dict, scheduled_rules: list[str],
                              annotation_rules: tuple[str, ...]) -> None:
    """Called once the DAG is built and a real run is about to start, when an annotation step is to run: a
    config that runs no annotation needs no provider (the default openai one names no model). Not in the
    steps' input functions, whose errors Snakemake swallows where the outputs exist (dag.annotator_input)."""
    if set(scheduled_rules) & set(annotation_rules):
        check_annotation_provider(provider)
        check_annotation_words(config)


def check_annotation_words(config: dict) -> None:
    """The describe question shows the first `annotation.words` of a component's `ffn.top_k` words: more
    were silently fewer, while the provenance page stated the larger number."""
    shown, kept = config["annotation"]["words"], config["ffn"]["top_k"]
    if shown > kept:
        raise ConfigError(f"annotation.words: {shown} words shown to the describer, but ffn.top_k gives each "
                          f"component {kept}; lower annotation.words or raise ffn.top_k")


def check_annotation_provider(provider: dict) -> None:
    """The provider's required keys, for a run with annotation steps to do."""
    kind = provider.get("kind", "openai")
    if kind == "openai" and not provider.get("model"):
        raise ConfigError("annotation.provider.model: required for the openai provider (e.g. gpt-3.5-turbo-0613)")
    if kind in ("local", "replay") and not provider.get("path"):
        raise ConfigError(f"annotation.provider.path: required for the {kind} provider")


def used_prices(prices: dict, provider: dict) -> dict:
    """The prices the cost table uses: the asked model's, for the openai provider (the others cost 0), so
    that pricing another model reruns nothing."""
    model = provider.get("model")
    return {model: prices[model]} if provider.get("kind", "openai") == "openai" and model in prices else {}


def annotation_code(provider: dict) -> str:
    """The annotation steps' `code` param. Paid or slow answers rerun only when the method's version is
    raised; a local model's also when its decoder's (local_chat) is, which is in their cache key; replay
    reads files, costs nothing, and follows its code like a table job."""
    if provider["kind"] == "replay":
        return code_digest("annotate")
    if provider["kind"] == "local":
        return f"{method_version('annotate')}, {method_version('local_chat')}"
    return method_version("annotate")


def missing_api_key(provider: dict) -> str | None:
    """The name of the unset environment variable the openai provider needs, else None."""
    variable = provider.get("api_key_env")
    if provider.get("kind", "openai") == "openai" and variable and not os.environ.get(variable):
        return variable
    return None


def require_api_key(provider: dict, scheduled_rules: list[str], annotation_rules: tuple[str, ...]) -> None:
    """Called once the DAG is built and a real run is about to start: if an annotation job is
    scheduled and the openai provider's key is missing, fail before any job (a dry run,
    --summary or --list-changes never gets here, so they never need the key)."""
    missing = missing_api_key(provider)
    planned = sorted(set(scheduled_rules) & set(annotation_rules))
    if missing and planned:
        raise ConfigError(
            f"annotation.provider.api_key_env: the environment variable {missing} is not set, and this run "
            f"has annotation jobs to do ({', '.join(planned)}); export {missing}=... (the key never goes into "
            "the config; the job reads it from the environment) or use another provider"
        )
