"""The dataset as the plan sees it: which file, its digest, its shards and each shard's digest.

Read once per planning process and file version (path and mtime key every cache here), so that
planning grows linearly with the job count; a bad row fails the plan, naming file and line.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from .config_checks import ConfigError
from .dataset import Sample, read_dataset, shard_samples
from .paper_data import read_manifest, sha256

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


def _stale_dataset(config: dict) -> str | None:
    """The fetched paper dataset, when it is there but no longer what the manifest names (the manifest
    names new data, or the copy was edited): the plan reads it, so no run may use it (require_fresh_dataset)."""
    path = config["dataset"]["samples"]
    expected = _manifest_checksum(path)
    if expected is None or not Path(path).is_file():
        return None
    return path if _file_sha256(path, Path(path).stat().st_mtime_ns) != expected else None


def _manifest_checksum(samples: str) -> str | None:
    """The manifest's SHA-256 of a fetched paper file (`resources/paper/...`), else None."""
    if not samples.startswith(FETCHED) or not Path(PAPER_MANIFEST).is_file():
        return None
    return _paper_manifest().get(samples[len(FETCHED) :])


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


def _paper_manifest() -> dict[str, str]:
    """The project's manifest of the paper data, read once per version of the file."""
    return _manifest(PAPER_MANIFEST, Path(PAPER_MANIFEST).stat().st_mtime_ns)


def paper_checksums(names: list[str] | None = None, folder: str | None = None) -> str:
    """The paper-data fetch rules' one param: 16 hex digits of the manifest's checksums of the files a job
    fetches (`names`, or every file under `folder`), which change exactly when one's content does. Where
    the files are read from is no param: the fetch checks each against the manifest, and moving the
    local copy must not rerun the 128 head and FFN layer jobs that read the vocabulary."""
    manifest = _paper_manifest()
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
    checksum = _manifest_checksum(config["dataset"]["samples"])
    if checksum:
        return checksum
    raise _missing_dataset(config)


def check_dataset(config: dict) -> None:
    """Read and check the dataset now, when it is there (before the paper data are fetched it is not).

    An error raised inside an input function or param is dropped by Snakemake when the file that
    job would make exists, so a row that lost a column would pass unseen in a folder with results.
    """
    found = _existing_dataset(config)
    if found is not None:
        _samples(*found)


# The rules that fetch the paper data (rules/data.smk): a run of only these needs no shard planned.
FETCH_RULES = ("paper_datasets", "paper_released_attributions")


def stale_dataset_warning(config: dict) -> str | None:
    """What a plan made from a fetched dataset the manifest no longer names must say (dry runs included)."""
    stale = _stale_dataset(config)
    if stale is None:
        return None
    return (f"{stale} does not match {PAPER_MANIFEST} (the manifest names new data, or the file was edited): "
            "its shards are planned from it as it is, and no job but the fetch may run")


def require_fresh_dataset(config: dict, scheduled_rules: list[str]) -> None:
    """Called before a real run's first job: with a stale fetched dataset, only the fetch may run. A run of
    the rest remade Tables 1-2 from attributions of the old samples and said done, as the shards of changed
    samples were planned from the old file; they cannot be planned from the new one before it is there."""
    stale = _stale_dataset(config)
    if stale and not set(scheduled_rules) <= set(FETCH_RULES):
        raise ConfigError(
            f"dataset.samples: {stale} does not match {PAPER_MANIFEST} (the manifest names new data, or the file "
            "was edited); run `snakemake --cores 1 -f paper_datasets` first (it fetches what the manifest names), "
            "then this command again"
        )


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
