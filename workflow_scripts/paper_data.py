"""The paper's released data: copied from a local directory or downloaded, always checksummed.

Files are verified against the project's manifest (`datasets/paper-manifest.sha256`, SHA-256 of
the upstream content) before they are moved into place, so a truncated download or a modified
local copy fails the job with the file named, instead of silently changing a table.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .progress import progress

log = logging.getLogger(__name__)
REPOSITORY = "https://raw.githubusercontent.com/JacksonWuxs/Interpret_Instruction_Tuning_LLMs"


class ChecksumError(ValueError):
    pass


def read_manifest(path: str | Path) -> dict[str, str]:
    """Relative path -> SHA-256, from `sha256sum` output (paths may start with ./)."""
    manifest = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise ValueError(f"{path}:{number}: expected '<sha256>  <path>'")
        manifest[name.removeprefix("./")] = digest
    return manifest


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _from_local(source: Path, name: str, target: Path) -> None:
    if (source / name).is_file():
        shutil.copyfile(source / name, target)
    elif (source / f"{name}.gz").is_file():  # stored compressed; the checksum is of the content
        with gzip.open(source / f"{name}.gz", "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        raise FileNotFoundError(f"{source}: has no {name} (nor {name}.gz)")


def _download(base_url: str, commit: str, name: str, target: Path, retries: int = 4) -> None:
    url = f"{base_url}/{commit}/{name}"
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as dst:
                shutil.copyfileobj(response, dst)
            return
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            code = getattr(error, "code", None)  # HTTP status; 4xx other than 429 will not heal
            if attempt == retries or (code is not None and code < 500 and code != 429):
                raise RuntimeError(f"cannot download {url}: {error}") from error
            wait = 2**attempt
            log.warning("download of %s failed (%s); retrying in %d s", url, error, wait)
            time.sleep(wait)


def fetch(
    names: list[str], destination: str | Path, manifest: dict[str, str], source: str | None, commit: str,
    base_url: str = REPOSITORY,
) -> None:
    """Put each named file under `destination`, verified; existing verified files are kept."""
    destination = Path(destination)
    for name in progress(names, "paper data", "file"):
        if name not in manifest:
            raise KeyError(f"{name}: not in the paper data manifest")
        target = destination / name
        if target.is_file() and sha256(target) == manifest[name]:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.close(fd)
        tmp = Path(tmp)
        try:
            if source:
                _from_local(Path(source), name, tmp)
            else:
                _download(base_url, commit, name, tmp)
            digest = sha256(tmp)
            if digest != manifest[name]:
                origin = Path(source) / name if source else f"{base_url}/{commit}/{name}"
                raise ChecksumError(f"{origin}: SHA-256 {digest} does not match the manifest ({manifest[name]})")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--destination", required=True)
    parser.add_argument("--source", default=None, help="local copy of the paper data (default: download)")
    parser.add_argument("--commit", default="52508a0a")
    parser.add_argument("--base-url", default=REPOSITORY, help="a mirror laid out as <base>/<commit>/<path>")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--files", nargs="+", help="paths relative to the repository root")
    what.add_argument("--folder", help="every manifest file under this folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    manifest = read_manifest(args.manifest)
    names = args.files or sorted(n for n in manifest if n.startswith(args.folder.rstrip("/") + "/"))
    if not names:
        raise SystemExit(f"{args.manifest}: no files under {args.folder}")
    fetch(names, args.destination, manifest, args.source, args.commit, args.base_url)
    log.info("%d files in %s verified", len(names), args.destination)


if __name__ == "__main__":
    main()
