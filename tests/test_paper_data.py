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


def test_manifest_lines_of_only_white_space_are_skipped(tmp_path):
    path = tmp_path / "MANIFEST.sha256"
    path.write_text(f"{'a' * 64}  datasets/x.tsv\n   \n\t\n")
    assert read_manifest(path) == {"datasets/x.tsv": "a" * 64}


def test_a_file_not_in_the_manifest_is_refused_by_name_before_it_is_fetched(tmp_path, upstream):
    root, files, manifest = upstream
    del manifest["datasets/a.tsv"]
    with pytest.raises(KeyError, match="datasets/a.tsv: not in the paper data manifest"):
        fetch(["datasets/a.tsv"], tmp_path / "out", manifest, str(root), "52508a0a")
    assert not (tmp_path / "out").exists()


class FlakyServer:
    """Answers the first requests with the given HTTP errors, then serves `body`; counts the requests."""

    def __init__(self, errors: list[int], body: bytes):
        outer = self
        self.errors, self.requests = list(errors), 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                if outer.errors:
                    self.send_error(outer.errors.pop(0))
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()


@pytest.mark.parametrize("status", [500, 429])
def test_a_server_error_or_too_many_requests_is_retried(tmp_path, status):
    """5xx and 429 heal (one retry after 1 s here); the file arrives on the second request."""
    from workflow_scripts.paper_data import _download

    with FlakyServer([status], b"content\n") as server:
        _download(server.base, "52508a0a", "datasets/a.tsv", tmp_path / "a.tsv")
    assert server.requests == 2
    assert (tmp_path / "a.tsv").read_bytes() == b"content\n"


def test_a_download_failing_on_every_attempt_raises_after_the_last_retry(tmp_path):
    """retries=1 means two attempts, the last of which raises: the loop never ends silently with an empty file."""
    from workflow_scripts.paper_data import _download

    with FlakyServer([503, 503, 503], b"never\n") as server:
        with pytest.raises(RuntimeError, match="cannot download .*/52508a0a/datasets/a.tsv: HTTP Error 503"):
            _download(server.base, "52508a0a", "datasets/a.tsv", tmp_path / "a.tsv", retries=1)
    assert server.requests == 2


def test_main_with_a_folder_fetches_only_the_files_inside_that_folder(tmp_path):
    """`--folder results/a` must not take `results/ab/...`, whose name merely starts the same."""
    from workflow_scripts.paper_data import main

    source = tmp_path / "source"
    contents = {"results/a/x.pkl": b"x", "results/ab/y.pkl": b"y", "results/a.txt": b"z"}
    for name, data in contents.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    manifest = tmp_path / "manifest.sha256"
    manifest.write_text("".join(f"{sha(data)}  {name}\n" for name, data in contents.items()))
    main(["--manifest", str(manifest), "--destination", str(tmp_path / "out"), "--source", str(source),
          "--folder", "results/a/"])
    fetched = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert fetched == ["results/a/x.pkl"]
