"""A model hub on a loopback port, for `huggingface_hub` pointed at it with HF_ENDPOINT.

It answers the few routes that `snapshot_download` and `list_repo_files` use (repository info
at a revision, the file tree, file downloads with the commit and ETag headers), from folders
on disk, with the hub's error codes for an unknown repository or revision. Each revision is
a fixed commit hash, as on the hub.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class FakeHub:
    """repos: {"owner/name": {"main": folder, "v1": other_folder, ...}}."""

    def __init__(self, repos: dict[str, dict[str, Path]]) -> None:
        self.repos = {repo: {rev: (hashlib.sha1(f"{repo}@{rev}".encode()).hexdigest(), Path(folder))
                             for rev, folder in revs.items()} for repo, revs in repos.items()}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub._serve(self, body=False)

            def do_GET(self) -> None:
                hub._serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _revision(self, repo: str, rev: str) -> tuple[str, Path] | str:
        if repo not in self.repos:
            return "RepoNotFound"
        for name, (sha, folder) in self.repos[repo].items():
            if rev in (name, sha):
                return sha, folder
        return "RevisionNotFound"

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append(f"{h.command} {path}")
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(?:/(.*))?", path)
        if m:
            repo, what, rev = m[1], m[2], m[3]
            found = self._revision(repo, rev)
            if isinstance(found, str):
                return self._error(h, found)
            sha, folder = found
            files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            if what == "revision":
                return self._json(h, {"id": repo, "modelId": repo, "sha": sha, "private": False,
                                      "siblings": [{"rfilename": f} for f in files]}, body)
            return self._json(h, [{"type": "file", "path": f, "size": (folder / f).stat().st_size,
                                   "oid": self._oid(folder / f)} for f in files], body)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            found = self._revision(m[1], m[2])
            if isinstance(found, str):
                return self._error(h, found)
            sha, folder = found
            file = folder / m[3]
            if not file.is_file():
                return self._error(h, "EntryNotFound")
            data = file.read_bytes()
            h.send_response(200)
            h.send_header("Content-Type", "application/octet-stream")
            h.send_header("Content-Length", str(len(data)))
            h.send_header("ETag", f'"{self._oid(file)}"')
            h.send_header("X-Repo-Commit", sha)
            h.end_headers()
            if body:
                h.wfile.write(data)
            return None
        return self._error(h, "EntryNotFound")

    @staticmethod
    def _oid(file: Path) -> str:
        return hashlib.sha1(file.read_bytes()).hexdigest()

    @staticmethod
    def _json(h: BaseHTTPRequestHandler, obj: object, body: bool) -> None:
        data = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    @staticmethod
    def _error(h: BaseHTTPRequestHandler, code: str) -> None:
        data = json.dumps({"error": code}).encode()
        h.send_response(404)
        h.send_header("Content-Type", "application/json")
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", code)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
