"""A local, in-memory server speaking enough of the Hugging Face Hub protocol for tests.

The real ``huggingface_hub`` client talks to it over HTTP on 127.0.0.1: repo creation,
regular (non-LFS, base64-inline) commits on branches and pull-request refs, repo info,
tree listings and ``/resolve`` downloads with the headers the client's cache relies on.
Model repos only; no LFS/Xet storage (every file is uploaded in ``regular`` mode).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml
from huggingface_hub import constants, hf_api

_YAML_BLOCK = re.compile(r"^\s*---\r?\n([\s\S]*?)\r?\n---[ \t]*(?:\r?\n|$)")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _blob_oid(content: bytes) -> str:
    """Git blob sha1, the ETag the Hub serves for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _card_metadata(readme: bytes) -> dict[str, Any]:
    """YAML front matter of a model card; ``{}`` when absent. Raises ``ValueError`` if invalid."""
    match = _YAML_BLOCK.match(readme.decode("utf-8", errors="replace"))
    if match is None:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        raise ValueError(f"invalid YAML in README.md metadata: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("README.md metadata must be a YAML mapping")
    return data


@dataclass(frozen=True)
class HubCommit:
    """One commit: a full snapshot of the repo (path -> bytes)."""

    oid: str
    parent: str | None
    message: str
    description: str
    files: Mapping[str, bytes]
    created_at: str


@dataclass
class _Repo:
    private: bool
    created_at: str
    commits: dict[str, HubCommit] = field(default_factory=dict)  # oid -> commit, oldest first
    refs: dict[str, str] = field(default_factory=dict)  # "main" / "refs/pr/1" -> oid
    discussions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Request:
    method: str
    parts: list[str]  # URL path segments, each percent-decoded
    query: dict[str, str]
    authorization: str | None
    body: bytes

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.body or b"{}")
        except json.JSONDecodeError as err:
            raise _HubError(400, f"invalid JSON body: {err}") from err
        if not isinstance(data, dict):
            raise _HubError(400, "JSON body must be an object")
        return data


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class _HubError(Exception):
    """An HTTP error answered with the ``X-Error-Code`` the client maps to its exceptions."""

    def __init__(
        self, status: int, message: str, code: str | None = None, commit: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit

    def response(self) -> _Response:
        header_message = self.message.encode("ascii", "replace").decode()  # headers are latin-1
        headers = {"Content-Type": "application/json", "X-Error-Message": header_message}
        if self.code is not None:
            headers["X-Error-Code"] = self.code
        if self.commit is not None:
            headers["X-Repo-Commit"] = self.commit
        return _Response(self.status, json.dumps({"error": self.message}).encode(), headers)


def _json(data: Any, status: int = 200) -> _Response:
    return _Response(status, json.dumps(data).encode(), {"Content-Type": "application/json"})


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins handler threads (bounded by the socket timeout)

    def __init__(self, hub: LocalHub) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.0 plumbing: one request per connection, so no keep-alive thread outlives stop()."""

    server: _Server
    timeout = 10

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        request = _Request(
            method=self.command,
            parts=[unquote(part) for part in url.path.strip("/").split("/")],
            query={key: values[-1] for key, values in parse_qs(url.query).items()},
            authorization=self.headers.get("Authorization"),
            body=self.rfile.read(length) if length else b"",
        )
        response = self.server.hub.handle(request, raw_path=self.path)
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging."""


class LocalHub:
    """In-memory Hub on 127.0.0.1 (random port); state is kept across start/stop."""

    def __init__(self, token: str = "hf_local_test_token", user: str = "local-user") -> None:
        self.token = token
        self.user = user
        self.requests: list[tuple[str, str]] = []  # (method, raw path) of every request served
        self._repos: dict[str, _Repo] = {}
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._endpoint: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        if self._endpoint is None:
            raise RuntimeError("LocalHub was never started")
        return self._endpoint

    def start(self) -> str:
        """Start serving in a background thread; returns the endpoint URL."""
        if self._server is not None:
            raise RuntimeError("LocalHub is already running")
        self._server = _Server(self)
        self._endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self._endpoint

    def stop(self) -> None:
        """Stop serving and join every server thread; a no-op when not running."""
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self._server = self._thread = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> LocalHub:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- inspection ------------------------------------------------------------------------

    def repo_files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Files of ``repo_id`` at ``revision`` (branch, ``refs/pr/N`` or commit oid)."""
        with self._lock:
            return dict(self._resolve(self._get_repo(repo_id), revision).files)

    def commits(self, repo_id: str) -> list[HubCommit]:
        """Every commit of ``repo_id`` on any ref, oldest first (first: the empty initial one)."""
        with self._lock:
            return list(self._get_repo(repo_id).commits.values())

    def refs(self, repo_id: str) -> dict[str, str]:
        """Branches and PR refs of ``repo_id`` -> commit oid."""
        with self._lock:
            return dict(self._get_repo(repo_id).refs)

    # -- request handling ------------------------------------------------------------------

    def handle(self, req: _Request, raw_path: str) -> _Response:
        """Route one request; every error becomes a Hub-style error response."""
        with self._lock:
            self.requests.append((req.method, raw_path))
            try:
                return self._route(req)
            except _HubError as err:
                return err.response()
            except (KeyError, TypeError, ValueError) as err:
                return _HubError(400, f"malformed request: {err!r}").response()

    def _route(self, req: _Request) -> _Response:
        match (req.method, req.parts):
            case ("GET", ["api", "whoami-v2"]):
                self._require_write(req)
                return _json({"type": "user", "name": self.user, "orgs": [], "auth": {}})
            case ("POST", ["api", "validate-yaml"]):
                return self._validate_yaml(req)
            case ("POST", ["api", "repos", "create"]):
                return self._create_repo(req)
            case (_, ["api", "models", namespace, name, *rest]):
                return self._model_api(req, f"{namespace}/{name}", rest)
            case ("GET" | "HEAD", [namespace, name, "resolve", revision, *path]) if path:
                return self._resolve_file(req, f"{namespace}/{name}", revision, "/".join(path))
        raise _HubError(404, f"no route for {req.method} /{'/'.join(req.parts)}")

    def _model_api(self, req: _Request, repo_id: str, rest: list[str]) -> _Response:
        match (req.method, rest):
            case ("GET", []):
                return self._model_info(req, repo_id, "main")
            case ("GET", ["revision", revision]):
                return self._model_info(req, repo_id, revision)
            case ("GET", ["tree", revision, *path]):
                return self._tree(req, repo_id, revision, "/".join(path))
            case ("GET", ["refs"]):
                return self._list_refs(req, repo_id)
            case ("POST", ["preupload", revision]):
                return self._preupload(req, repo_id, revision)
            case ("POST", ["commit", revision]):
                return self._commit(req, repo_id, revision)
            case ("POST", ["branch", branch]):
                return self._create_branch(req, repo_id, branch)
            case ("POST", ["discussions"]):
                return self._create_discussion(req, repo_id)
            case ("GET", ["discussions", num]) if num.isdigit():
                return self._discussion_details(req, repo_id, int(num))
        raise _HubError(404, f"no route for {req.method} /api/models/{repo_id}/{'/'.join(rest)}")

    # -- helpers ---------------------------------------------------------------------------

    def _authorized(self, req: _Request) -> bool:
        return req.authorization == f"Bearer {self.token}"

    def _require_write(self, req: _Request) -> None:
        if not self._authorized(req):
            # This message makes the client raise a plain 401 HfHubHTTPError.
            raise _HubError(401, "Invalid credentials in Authorization header")

    def _get_repo(self, repo_id: str, req: _Request | None = None) -> _Repo:
        repo = self._repos.get(repo_id)
        if repo is None or (repo.private and req is not None and not self._authorized(req)):
            raise _HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _resolve(self, repo: _Repo, revision: str) -> HubCommit:
        revision = revision.removeprefix("refs/heads/")
        oid = repo.refs.get(revision) or revision
        if oid not in repo.commits:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    def _url(self, repo_id: str, *tail: str) -> str:
        return "/".join([self.endpoint, repo_id, *tail])

    def _add_commit(
        self, repo: _Repo, parent: HubCommit | None, files: dict[str, bytes], header: dict[str, Any]
    ) -> HubCommit:
        message, description = str(header.get("summary", "")), str(header.get("description", ""))
        digest = hashlib.sha1(
            json.dumps(
                [parent.oid if parent else None, message, description]
                + sorted((path, _blob_oid(content)) for path, content in files.items())
            ).encode()
        )
        commit = HubCommit(
            oid=digest.hexdigest(),
            parent=parent.oid if parent else None,
            message=message,
            description=description,
            files=MappingProxyType(files),
            created_at=_now(),
        )
        return repo.commits.setdefault(commit.oid, commit)

    def _new_discussion(self, repo: _Repo, title: str, pr_oid: str | None) -> int:
        num = len(repo.discussions) + 1
        repo.discussions.append(
            {"num": num, "title": title, "isPullRequest": pr_oid is not None, "createdAt": _now()}
        )
        if pr_oid is not None:
            repo.refs[f"refs/pr/{num}"] = pr_oid
        return num

    # -- endpoints -------------------------------------------------------------------------

    def _validate_yaml(self, req: _Request) -> _Response:
        try:
            _card_metadata(str(req.json().get("content", "")).encode())
        except ValueError as err:
            return _json({"errors": [{"message": str(err)}], "warnings": []}, 400)
        return _json({"errors": [], "warnings": []})

    def _create_repo(self, req: _Request) -> _Response:
        self._require_write(req)
        body = req.json()
        if body.get("type", "model") != "model":
            raise _HubError(400, "only model repos are supported by the local hub")
        repo_id = f"{body.get('organization') or self.user}/{body.get('name')}"
        url = self._url(repo_id)
        if repo_id in self._repos:  # the client reads "url" from the 409 body when exist_ok=True
            return _json({"error": "You already created this model repo", "url": url}, 409)
        repo = _Repo(private=body.get("visibility") == "private", created_at=_now())
        repo.refs["main"] = self._add_commit(repo, None, {}, {"summary": "initial commit"}).oid
        self._repos[repo_id] = repo
        return _json({"url": url, "name": repo_id, "id": hashlib.sha1(url.encode()).hexdigest()})

    def _model_info(self, req: _Request, repo_id: str, revision: str) -> _Response:
        repo = self._get_repo(repo_id, req)
        commit = self._resolve(repo, revision)
        readme = commit.files.get("README.md")
        card = _card_metadata(readme) if readme is not None else {}
        return _json(
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": commit.created_at,
                "createdAt": repo.created_at,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": list(card.get("tags") or []),
                "library_name": card.get("library_name"),
                "pipeline_tag": card.get("pipeline_tag"),
                "cardData": card or None,
                "siblings": [
                    {"rfilename": path, "size": len(content), "blobId": _blob_oid(content)}
                    for path, content in sorted(commit.files.items())
                ],
            }
        )

    def _tree(self, req: _Request, repo_id: str, revision: str, path: str) -> _Response:
        commit = self._resolve(self._get_repo(repo_id, req), revision)
        recursive = req.query.get("recursive", "false").lower() in ("1", "true")
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        files = {p: c for p, c in commit.files.items() if p.startswith(prefix)}
        if prefix and not files:
            raise _HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        entries: dict[str, dict[str, Any]] = {}
        for file_path, content in files.items():
            parts = file_path[len(prefix) :].split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folder = prefix + "/".join(parts[:depth])
                oid = hashlib.sha1(f"{commit.oid}:{folder}".encode()).hexdigest()
                entries[folder] = {"type": "directory", "oid": oid, "size": 0, "path": folder}
            if recursive or len(parts) == 1:
                entries[file_path] = {
                    "type": "file",
                    "oid": _blob_oid(content),
                    "size": len(content),
                    "path": file_path,
                }
        return _json([entries[key] for key in sorted(entries)])

    def _list_refs(self, req: _Request, repo_id: str) -> _Response:
        repo = self._get_repo(repo_id, req)
        branches, prs = [], []
        for name, oid in repo.refs.items():
            is_pr = name.startswith("refs/pr/")
            ref = name if is_pr else f"refs/heads/{name}"
            (prs if is_pr else branches).append({"name": name, "ref": ref, "targetCommit": oid})
        return _json({"branches": branches, "converts": [], "tags": [], "pullRequests": prs})

    def _preupload(self, req: _Request, repo_id: str, revision: str) -> _Response:
        self._require_write(req)
        commit = self._resolve(self._get_repo(repo_id, req), revision)
        files = []
        for item in req.json().get("files", []):
            existing = commit.files.get(item["path"])
            files.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": _blob_oid(existing) if existing is not None else None,
                }
            )
        return _json({"files": files, "commitOid": commit.oid})

    def _commit(self, req: _Request, repo_id: str, revision: str) -> _Response:
        self._require_write(req)
        repo = self._get_repo(repo_id, req)
        branch = revision.removeprefix("refs/heads/")
        if branch not in repo.refs:
            raise _HubError(404, f"Invalid rev id: {revision} (not a branch)", "RevisionNotFound")
        parent = repo.commits[repo.refs[branch]]
        files = dict(parent.files)
        header: dict[str, Any] = {}
        for line in req.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file" and value.get("encoding") == "base64":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    message = f"A file with this name doesn't exist: {value['path']}"
                    raise _HubError(404, message, "EntryNotFound")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(folder)}
            else:
                raise _HubError(400, f"unsupported commit operation {key!r} (no LFS/Xet storage)")
        if "README.md" in files:  # like the Hub, refuse a model card with broken metadata
            try:
                _card_metadata(files["README.md"])
            except ValueError as err:
                raise _HubError(400, f"Invalid metadata in README.md: {err}") from err
        if header.get("parentCommit") not in (None, parent.oid):
            message = f"parent commit {header['parentCommit']} is not the head of {branch}"
            raise _HubError(412, message)
        commit = self._add_commit(repo, parent, files, header)
        pr_url = None
        if req.query.get("create_pr") == "1":
            num = self._new_discussion(repo, commit.message, commit.oid)
            pr_url = self._url(repo_id, "discussions", str(num))
        else:
            repo.refs[branch] = commit.oid
        return _json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": self._url(repo_id, "commit", commit.oid),
                "commitMessage": commit.message,
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            }
        )

    def _create_branch(self, req: _Request, repo_id: str, branch: str) -> _Response:
        self._require_write(req)
        repo = self._get_repo(repo_id, req)
        if branch.startswith("refs/") or not branch:
            raise _HubError(400, f"Invalid branch name: {branch!r}")
        if branch in repo.refs:
            raise _HubError(409, f"Reference already exists: refs/heads/{branch}")
        repo.refs[branch] = self._resolve(repo, req.json().get("startingPoint") or "main").oid
        return _json({})

    def _create_discussion(self, req: _Request, repo_id: str) -> _Response:
        self._require_write(req)
        repo = self._get_repo(repo_id, req)
        body = req.json()
        pr_oid = repo.refs["main"] if body.get("pullRequest") else None
        num = self._new_discussion(repo, str(body.get("title", "")), pr_oid)
        return _json({"num": num, "url": self._url(repo_id, "discussions", str(num))})

    def _discussion_details(self, req: _Request, repo_id: str, num: int) -> _Response:
        repo = self._get_repo(repo_id, req)
        if not 1 <= num <= len(repo.discussions):
            raise _HubError(404, f"Discussion {num} not found")
        discussion = repo.discussions[num - 1]
        return _json(
            {
                **discussion,
                "status": "open",
                "author": {"name": self.user},
                "repo": {"name": repo_id, "type": "model"},
                "events": [],
                "changes": {"base": "refs/heads/main"},
                "filesWithConflicts": [],
                "diff": "",
            }
        )

    def _resolve_file(self, req: _Request, repo_id: str, revision: str, path: str) -> _Response:
        commit = self._resolve(self._get_repo(repo_id, req), revision)
        content = commit.files.get(path)
        if content is None:
            raise _HubError(404, f"Entry not found: {path}", "EntryNotFound", commit=commit.oid)
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{_blob_oid(content)}"',
            "X-Repo-Commit": commit.oid,
        }
        return _Response(200, content, headers)


@dataclass
class HubSession:
    """A running :class:`LocalHub` with ``huggingface_hub`` pointed at it (see ``connect``)."""

    endpoint: str
    token: str
    server: LocalHub
    cache_dir: Path
    _monkeypatch: pytest.MonkeyPatch = field(repr=False)

    @classmethod
    def connect(
        cls, server: LocalHub, monkeypatch: pytest.MonkeyPatch, hf_home: Path
    ) -> HubSession:
        """Point env vars *and* the import-time ``huggingface_hub`` constants at ``server``.

        ``huggingface_hub.constants`` reads ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE`` and
        ``HF_HUB_OFFLINE`` once at import, and the module-level ``huggingface_hub.upload_folder``
        & co. are bound to an ``HfApi`` built at import, so both are patched here.
        """
        endpoint, cache_dir = server.endpoint, hf_home / "hub"
        env = {
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": str(cache_dir),
            "HF_TOKEN": server.token,
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        patches = {
            "ENDPOINT": endpoint,
            "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": str(cache_dir),
            "HF_TOKEN_PATH": str(hf_home / "token"),
            "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
            "HF_HUB_OFFLINE": False,
        }
        for name, value in patches.items():
            monkeypatch.setattr(constants, name, value)
        monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
        return cls(endpoint, server.token, server, cache_dir, monkeypatch)

    def go_offline(self) -> None:
        """Stop the server and turn on offline mode (``HF_HUB_OFFLINE=1``, env and constant)."""
        self.server.stop()
        self._monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        self._monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
