"""Paper data arrive verified: from a local copy (plain or gzipped) or over real HTTP."""
import functools
import gzip
import hashlib
import http.server
import threading

import pytest

from workflow_scripts.paper_data import ChecksumError, fetch, read_manifest


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def upstream(tmp_path):
    """A small upstream tree (one file stored gzipped, as in ../shared/paper) and its manifest."""
    root = tmp_path / "upstream"
    (root / "datasets").mkdir(parents=True)
    files = {"datasets/a.tsv": b"ID\tx\n1\t2\n", "datasets/vocab.tsv": b"the\t0.5\n"}
    (root / "datasets/a.tsv").write_bytes(files["datasets/a.tsv"])
    with gzip.open(root / "datasets/vocab.tsv.gz", "wb") as handle:
        handle.write(files["datasets/vocab.tsv"])
    manifest = {name: sha(data) for name, data in files.items()}
    return root, files, manifest


def test_manifest_lines_are_read_with_or_without_a_leading_dot_slash(tmp_path):
    path = tmp_path / "MANIFEST.sha256"
    path.write_text(f"{'a' * 64}  ./datasets/x.tsv\n{'b' * 64}  results/y.pkl\n\n")
    assert read_manifest(path) == {"datasets/x.tsv": "a" * 64, "results/y.pkl": "b" * 64}
    path.write_text("not a checksum line\n")
    with pytest.raises(ValueError, match=r"MANIFEST.sha256:1: expected"):
        read_manifest(path)


def test_local_copy_is_copied_and_gzipped_files_are_decompressed(tmp_path, upstream):
    root, files, manifest = upstream
    fetch(list(files), tmp_path / "out", manifest, str(root), "52508a0a")
    for name, data in files.items():
        assert (tmp_path / "out" / name).read_bytes() == data


def test_a_modified_local_file_fails_with_its_path_and_leaves_nothing_behind(tmp_path, upstream):
    root, files, manifest = upstream
    (root / "datasets/a.tsv").write_bytes(b"tampered\n")
    with pytest.raises(ChecksumError, match=r"upstream/datasets/a.tsv: SHA-256 .* does not match"):
        fetch(["datasets/a.tsv"], tmp_path / "out", manifest, str(root), "52508a0a")
    assert list((tmp_path / "out" / "datasets").iterdir()) == []


def test_a_file_missing_from_the_local_copy_is_named(tmp_path, upstream):
    root, files, manifest = upstream
    (root / "datasets/a.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="has no datasets/a.tsv"):
        fetch(["datasets/a.tsv"], tmp_path / "out", manifest, str(root), "52508a0a")


def test_download_over_http_is_verified(tmp_path, upstream):
    root, files, manifest = upstream
    served = tmp_path / "served" / "52508a0a" / "datasets"
    served.mkdir(parents=True)
    (served / "a.tsv").write_bytes(files["datasets/a.tsv"])
    (served / "vocab.tsv").write_bytes(b"corrupted in transit\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        fetch(["datasets/a.tsv"], tmp_path / "out", manifest, None, "52508a0a", base_url=base)
        assert (tmp_path / "out/datasets/a.tsv").read_bytes() == files["datasets/a.tsv"]
        with pytest.raises(ChecksumError, match=r"/52508a0a/datasets/vocab.tsv: SHA-256"):
            fetch(["datasets/vocab.tsv"], tmp_path / "out", manifest, None, "52508a0a", base_url=base)
        with pytest.raises(RuntimeError, match="cannot download .*/52508a0a/datasets/none.tsv: HTTP Error 404"):
            fetch(["datasets/none.tsv"], tmp_path / "out", {"datasets/none.tsv": "0" * 64}, None, "52508a0a",
                  base_url=base)
    finally:
        server.shutdown()


def test_files_already_in_place_and_verified_are_kept(tmp_path, upstream):
    root, files, manifest = upstream
    fetch(["datasets/a.tsv"], tmp_path / "out", manifest, str(root), "52508a0a")
    (root / "datasets/a.tsv").unlink()  # the source is not read again
    fetch(["datasets/a.tsv"], tmp_path / "out", manifest, str(root), "52508a0a")
    assert (tmp_path / "out/datasets/a.tsv").read_bytes() == files["datasets/a.tsv"]


def test_a_file_in_place_that_fails_its_checksum_is_fetched_again_never_kept(tmp_path, upstream):
    """An edited or half-written copy under resources/paper would otherwise feed Tables 1 and 2 as it is."""
    root, files, manifest = upstream
    target = tmp_path / "out/datasets/a.tsv"
    fetch(["datasets/a.tsv"], tmp_path / "out", manifest, str(root), "52508a0a")
    target.write_bytes(b"tampered\n")
    fetch(["datasets/a.tsv"], tmp_path / "out", manifest, str(root), "52508a0a")
    assert target.read_bytes() == files["datasets/a.tsv"]
    target.write_bytes(b"tampered\n")
    (root / "datasets/a.tsv").unlink()  # nothing to fetch it again from: an error, not the tampered file
    with pytest.raises(FileNotFoundError, match="has no datasets/a.tsv"):
        fetch(["datasets/a.tsv"], tmp_path / "out", manifest, str(root), "52508a0a")


def test_project_manifest_lists_the_paper_files():
    from pathlib import Path

    manifest = read_manifest(Path(__file__).resolve().parents[1] / "datasets/paper-manifest.sha256")
    datasets = {"datasets/FinalDataset.tsv", "datasets/AnnotatedDataset.tsv", "datasets/SingleShareGPT_Vocab.tsv"}
    assert datasets <= set(manifest)
    assert sum(n.startswith("results/attribution_interpret/ifa_vicuna_7b/") for n in manifest) == 632
