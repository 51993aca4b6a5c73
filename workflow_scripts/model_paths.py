"""Telling a local model directory from a Hugging Face hub id, without touching the network."""
from __future__ import annotations

from pathlib import Path


def looks_local(path: str) -> bool:
    """A hub id is exactly `owner/name`; anything else (absolute, ./, ~, deeper) is a directory."""
    return path.startswith(("/", ".", "~")) or path.count("/") != 1 or Path(path).expanduser().exists()


def check_model_path(path: str) -> None:
    if looks_local(path) and not (Path(path).expanduser() / "config.json").is_file():
        raise FileNotFoundError(f"model directory not found (no config.json): {path}")
