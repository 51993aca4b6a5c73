"""A real local HTTP server answering file requests as the Hugging Face hub does, for tests.

huggingface_hub talks to it over TCP on 127.0.0.1 (`HF_ENDPOINT=server.url` in a process started after it, or
`HfApi(endpoint=server.url)` in-process: patching `constants.ENDPOINT` after import does not reach the file URLs):
`HEAD`/`GET /{owner}/{name}/resolve/{revision}/{file}`.

    with HubServer({"org/model": {"config.json": b"{}"}}, gated={"org/gated"}) as hub:
        HfApi(endpoint=hub.url).file_exists("org/model", "config.json")   # True

A known repository's file: 200 with the headers the client reads (`X-Repo-Commit`, `ETag`, the size); a
file it lacks: 404 `X-Error-Code: EntryNotFound`; an unknown repository: 401 `X-Error-Code:
RepoNotFound` (what the hub answers a client without a token, also for a private one); a gated one:
403 `X-Error-Code: GatedRepo`. Every request's path is kept in `requests`.
"""
from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")


class HubServer:
    def __init__(self, repos: dict[str, dict[str, bytes]], gated: set[str] = frozenset()):
        self.repos, self.gated = repos, set(gated)
        self.requests: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: pytest shows what matters
                pass

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body: bool) -> None:
                hub.requests.append(self.path)
                match = RESOLVE.match(self.path.split("?")[0])
                repo = match and match["repo"]
                if repo in hub.gated:
                    return self.error(403, "GatedRepo", f"Access to model {repo} is restricted.", body)
                if repo not in hub.repos:
                    return self.error(401, "RepoNotFound", "Repository not found", body)
                content = hub.repos[repo].get(match["file"])
                if content is None:
                    return self.error(404, "EntryNotFound", "Entry not found", body)
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha1(content).hexdigest()}"')
                self.send_header("Content-Length", str(len(content)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    self.wfile.write(content)

            def error(self, status: int, code: str, message: str, body: bool) -> None:
                text = f'{{"error": "{message}"}}'.encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                if body:
                    self.wfile.write(text)

        return Handler
