"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1, for tests that use huggingface_hub's real client.

It implements what huggingface_hub 2.4 calls to push and pull a model repo:
  GET  /api/whoami-v2                                  who owns the bearer token
  POST /api/repos/create                               409 when it exists, 403 outside the token's namespaces
  POST /api/validate-yaml                              README front matter must be a YAML mapping
  GET  /api/models/{repo}[/revision/{rev}]             repo info (sha, siblings)
  GET  /api/models/{repo}/tree/{rev}[/{path}]          file listing (recursive)
  POST /api/models/{repo}/preupload/{rev}              "regular" for text, "lfs" for binaries/large files
  POST /{repo}.git/info/lfs/objects/batch              LFS batch API, "basic" transfer only
  PUT  /lfs-upload/{oid}                               the LFS object itself (sha256 checked)
  POST /api/models/{repo}/commit/{rev}                 NDJSON: header, file (base64), lfsFile
  HEAD/GET /{repo}/resolve/{rev}/{path}                downloads, without Xet headers so clients use plain HTTP
Xet endpoints answer 501 and are recorded, so a test can assert the client never took the Xet path.
It records every request (method, path, headers) and every commit it received.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml

LFS_SUFFIXES = (".safetensors", ".png", ".jpg", ".jpeg", ".webp", ".bin", ".ckpt", ".pt")
_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclasses.dataclass
class Repo:
    owner: str
    private: bool
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    lfs: set[str] = dataclasses.field(default_factory=set)  # paths stored as LFS objects
    commits: list[dict] = dataclasses.field(default_factory=list)

    @property
    def sha(self) -> str:
        return hashlib.sha1(f"commit {len(self.commits)}".encode()).hexdigest()

    def entry(self, path: str) -> dict:
        data = self.files[path]
        entry = {"type": "file", "path": path, "size": len(data), "oid": git_sha1(data)}
        if path in self.lfs:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry


@dataclasses.dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class HubServer:
    """`with HubServer({"tok-alice": "alice"}) as hub:` then `HfApi(endpoint=hub.url, token="tok-alice")`."""

    def __init__(
        self,
        tokens: dict[str, str],
        *,
        orgs: dict[str, list[str]] | None = None,
        read_only_tokens: tuple[str, ...] = (),
        without: tuple[str, ...] = (),
    ):
        self.tokens = dict(tokens)
        self.orgs = orgs or {}
        self.read_only_tokens = set(read_only_tokens)
        self.without = set(without)  # route handler names this server lacks (a minimal self-hosted Hub)
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.pending_lfs: dict[str, int] = {}
        self.requests: list[Request] = []
        self.xet_requests: list[str] = []
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def user_of(self, headers) -> str | None:
        auth = headers.get("authorization") or ""
        return self.tokens.get(auth[len("Bearer ") :]) if auth.startswith("Bearer ") else None

    def namespaces(self, user: str) -> set[str]:
        return {user, *self.orgs.get(user, [])}

    def add_repo(self, repo_id: str, owner: str, files: dict[str, bytes] | None = None, *, private=False) -> Repo:
        """A repo that exists before the test (e.g. someone else's)."""
        repo = Repo(owner=owner, private=private)
        for path, data in (files or {}).items():
            repo.files[path] = data
            if path.endswith(LFS_SUFFIXES):
                repo.lfs.add(path)
        repo.commits.append({"summary": "initial commit", "files": sorted(repo.files)})
        self.repos[repo_id] = repo
        return repo


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **payload):
        super().__init__(message)
        self.status, self.message, self.code, self.payload = status, message, code, payload


def _handler_class(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_GET(self):
            self._dispatch("GET")

        def do_HEAD(self):
            self._dispatch("HEAD")

        def do_POST(self):
            self._dispatch("POST")

        def do_PUT(self):
            self._dispatch("PUT")

        def _dispatch(self, method: str) -> None:
            body = self._read_body()
            url = urlparse(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            with hub.lock:
                hub.requests.append(Request(method, url.path, headers, body))
            try:
                for pattern, route_method, handler in ROUTES:
                    match = re.fullmatch(pattern, url.path)
                    if handler.__name__ in hub.without:
                        continue
                    if match and route_method == (method if method != "HEAD" else "GET"):
                        with hub.lock:
                            result = handler(self, hub, headers, body, parse_qs(url.query), **match.groupdict())
                        self._send(*result, head=method == "HEAD")
                        return
                raise HttpError(404, f"No route for {method} {url.path}")
            except HttpError as e:
                extra = {"X-Error-Message": e.message}
                if e.code:
                    extra["X-Error-Code"] = e.code
                self._send(e.status, {"error": e.message, **e.payload}, extra)

        def _read_body(self) -> bytes:
            if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()  # the blank line after the last chunk
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("content-length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, payload, extra_headers: dict | None = None, *, head: bool = False) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            content_type = "application/octet-stream" if isinstance(payload, bytes) else "application/json"
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (extra_headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self.wfile.write(data)

    return Handler


# --- routes: each returns (status, payload, extra headers) -------------------------------------------------------


def _require_user(hub: HubServer, headers) -> str:
    if "authorization" not in headers:
        raise HttpError(401, "You must be authenticated to access this resource.")
    user = hub.user_of(headers)
    if user is None:
        raise HttpError(401, "Invalid credentials in Authorization header")
    return user


def _require_writer(hub: HubServer, headers, repo_id: str) -> Repo:
    user = _require_user(hub, headers)
    repo = hub.repos.get(repo_id)
    if repo is None:
        raise HttpError(404, "Repository not found", "RepoNotFound")
    token = headers["authorization"][len("Bearer ") :]
    if repo.owner not in hub.namespaces(user) or token in hub.read_only_tokens:
        raise HttpError(403, f"You don't have the rights to write to {repo_id}")
    return repo


def _readable_repo(hub: HubServer, headers, repo_id: str) -> Repo:
    repo = hub.repos.get(repo_id)
    user = hub.user_of(headers)
    if repo is None or (repo.private and (user is None or repo.owner not in hub.namespaces(user))):
        raise HttpError(401 if repo is not None else 404, "Repository not found", "RepoNotFound")
    return repo


def whoami(handler, hub, headers, body, query):
    user = _require_user(hub, headers)
    token = headers["authorization"][len("Bearer ") :]
    role = "read" if token in hub.read_only_tokens else "write"
    return (
        200,
        {
            "type": "user",
            "name": user,
            "fullname": user.title(),
            "orgs": [{"type": "org", "name": org} for org in hub.orgs.get(user, [])],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": role}},
        },
        None,
    )


def create_repo(handler, hub, headers, body, query):
    user = _require_user(hub, headers)
    payload = json.loads(body)
    owner = payload.get("organization") or user
    repo_id = f"{owner}/{payload['name']}"
    if owner not in hub.namespaces(user):
        raise HttpError(403, f'You don\'t have the rights to create a model under the namespace "{owner}"')
    if repo_id in hub.repos:
        raise HttpError(409, "You already created this model repo", url=f"{_base(handler)}/{repo_id}")
    hub.add_repo(repo_id, owner, private=payload.get("visibility") == "private" or bool(payload.get("private")))
    return 200, {"url": f"{_base(handler)}/{repo_id}", "name": repo_id}, None


def validate_yaml(handler, hub, headers, body, query):
    content = json.loads(body)["content"]
    match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
    if match is None or not isinstance(yaml.safe_load(match.group(1)), dict):
        raise HttpError(400, "README.md front matter is not a YAML mapping")
    return 200, {"errors": [], "warnings": []}, None


def repo_info(handler, hub, headers, body, query, repo, rev="main"):
    info = _readable_repo(hub, headers, repo)
    siblings = [{"rfilename": path} for path in sorted(info.files)]
    return (
        200,
        {
            "id": repo,
            "modelId": repo,
            "sha": info.sha,
            "private": info.private,
            "siblings": siblings,
            "tags": [],
            "author": info.owner,
        },
        None,
    )


def repo_tree(handler, hub, headers, body, query, repo, rev, path=""):
    info = _readable_repo(hub, headers, repo)
    prefix = f"{path.strip('/')}/" if path else ""
    entries = [info.entry(p) for p in sorted(info.files) if p.startswith(prefix)]
    return 200, entries, None


def preupload(handler, hub, headers, body, query, repo, rev):
    info = _require_writer(hub, headers, repo)
    files = []
    for item in json.loads(body)["files"]:
        path, size = item["path"], item["size"]
        sample = base64.b64decode(item["sample"])
        lfs = path.endswith(LFS_SUFFIXES) or size > 10_000_000 or b"\0" in sample
        existing = info.files.get(path)
        oid = None
        if existing is not None:
            oid = hashlib.sha256(existing).hexdigest() if lfs else git_sha1(existing)
        files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
    return 200, {"files": files, "commitOid": info.sha}, None


def lfs_batch(handler, hub, headers, body, query, repo):
    _require_writer(hub, headers, repo)
    payload = json.loads(body)
    if "basic" not in payload.get("transfers", ["basic"]):
        raise HttpError(422, "Only the basic transfer is supported")
    objects = []
    for obj in payload["objects"]:
        entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
        if obj["oid"] not in hub.lfs_objects:
            hub.pending_lfs[obj["oid"]] = obj["size"]
            entry["actions"] = {"upload": {"href": f"{_base(handler)}/lfs-upload/{obj['oid']}", "header": {}}}
        objects.append(entry)
    return 200, {"transfer": "basic", "objects": objects}, None


def lfs_upload(handler, hub, headers, body, query, oid):
    if oid not in hub.pending_lfs:
        raise HttpError(403, "Unknown upload")
    if hashlib.sha256(body).hexdigest() != oid or len(body) != hub.pending_lfs[oid]:
        raise HttpError(400, "Content does not match the announced sha256/size")
    hub.lfs_objects[oid] = body
    del hub.pending_lfs[oid]
    return 200, b"", None


def commit(handler, hub, headers, body, query, repo, rev):
    info = _require_writer(hub, headers, repo)
    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    header = next(item["value"] for item in lines if item["key"] == "header")
    changed = {}
    lfs_paths = set()
    for item in lines:
        value = item["value"]
        if item["key"] == "file":
            changed[value["path"]] = base64.b64decode(value["content"])
        elif item["key"] == "lfsFile":
            if value["oid"] not in hub.lfs_objects:
                raise HttpError(400, f"LFS object {value['oid']} for {value['path']} was never uploaded")
            changed[value["path"]] = hub.lfs_objects[value["oid"]]
            lfs_paths.add(value["path"])
    for path, data in changed.items():
        info.files[path] = data
        (info.lfs.add if path in lfs_paths else info.lfs.discard)(path)
    info.commits.append(
        {"summary": header["summary"], "description": header.get("description", ""), "files": sorted(changed)}
    )
    return (
        200,
        {
            "commitUrl": f"{_base(handler)}/{repo}/commit/{info.sha}",
            "commitOid": info.sha,
            "success": True,
            "pullRequestUrl": None,
        },
        None,
    )


def resolve(handler, hub, headers, body, query, repo, rev, path):
    info = _readable_repo(hub, headers, repo)
    path = unquote(path)
    if path not in info.files:
        raise HttpError(404, "Entry not found", "EntryNotFound")
    data = info.files[path]
    entry = info.entry(path)
    extra = {"X-Repo-Commit": info.sha, "ETag": f'"{entry["oid"]}"'}
    if "lfs" in entry:
        extra["X-Linked-Etag"] = f'"{entry["lfs"]["oid"]}"'
        extra["X-Linked-Size"] = str(len(data))
    return 200, data, extra


def xet(handler, hub, headers, body, query, **kwargs):
    hub.xet_requests.append(handler.path)
    raise HttpError(501, "Xet storage is not available on this server")


def _base(handler) -> str:
    host, port = handler.server.server_address[:2]
    return f"http://{host}:{port}"


ROUTES = [
    (r"/api/whoami-v2", "GET", whoami),
    (r"/api/repos/create", "POST", create_repo),
    (r"/api/validate-yaml", "POST", validate_yaml),
    (rf"/api/models/{_REPO}/xet-(?:read|write)-token/(?P<rev>[^/]+)", "GET", xet),
    (rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "GET", repo_tree),
    (rf"/api/models/{_REPO}/revision/(?P<rev>[^/]+)", "GET", repo_info),
    (rf"/api/models/{_REPO}", "GET", repo_info),
    (rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", "POST", preupload),
    (rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", "POST", commit),
    (rf"/{_REPO}\.git/info/lfs/objects/batch", "POST", lfs_batch),
    (r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "PUT", lfs_upload),
    (rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "GET", resolve),
]
