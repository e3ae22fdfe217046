"""Shared pytest fixtures: one PyTorch thread for every test, a synthetic Oxford-IIIT Pet root, its archives, the real sample (skipped when absent) and a
loopback HTTP server that honours Range requests and can be told to fail, to cut a transfer short or to ignore Range."""
from __future__ import annotations

import http.server, re, shutil, socket, threading
from pathlib import Path

import pytest
import torch

from petseg.download import make_archives
from petseg.synthetic import make_synthetic_pets

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "oxford-pet-sample"


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    "One PyTorch thread: the test models are tiny, and competing OpenMP threads are slow on a busy 2-core machine."
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    "A read-only-by-convention synthetic dataset (20 trainval, 10 test, 64 px): copy it before changing anything."
    return make_synthetic_pets(tmp_path_factory.mktemp("synthetic") / "pets", n_trainval=20, n_test=10, size=64, seed=0)


@pytest.fixture
def pets_copy(synthetic_root, tmp_path) -> Path:
    "A private copy of the synthetic dataset that a test may damage."
    return Path(shutil.copytree(synthetic_root, tmp_path / "pets"))


@pytest.fixture(scope="session")
def archives(synthetic_root, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    "A folder holding images.tar.gz and annotations.tar.gz in the official layout, and their MD5s."
    folder = tmp_path_factory.mktemp("mirror")
    return folder, make_archives(synthetic_root, folder)


@pytest.fixture
def sample_root() -> Path:
    "The real 600-image sample beside the checkout (../shared/oxford-pet-sample); skips the test when it is absent."
    if not (SAMPLE / "annotations" / "trainval.txt").is_file():
        pytest.skip(f"real sample not found at {SAMPLE}")
    return SAMPLE


class _Handler(http.server.BaseHTTPRequestHandler):
    "Serves files of `server.folder`, with `Range: bytes=N-` support and the failure modes set on `server.control`."

    def log_message(self, *args): pass

    def do_GET(self):
        ctl: LoopbackServer = self.server.control
        name = self.path.lstrip("/")
        rng = self.headers.get("Range")
        ctl.requests.append((name, rng))
        if ctl.fail_status:
            self.send_error(ctl.fail_status); return
        path = ctl.folder / name
        if not path.is_file():
            self.send_error(404); return
        data = path.read_bytes()
        start = 0
        if rng and not ctl.ignore_range:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            start = int(m.group(1)) if m else 0
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers(); return
            status = 206
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            status = 200
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = ctl.cut_after.pop(name, None)
        ctl.served.append((name, status, start))
        self.wfile.write(body if cut is None else body[:cut])   # a cut transfer: the connection then closes early


class LoopbackServer:
    """A web server on 127.0.0.1 serving `folder`. Attributes a test may set: `fail_status` (answer every request with
    that HTTP status), `ignore_range` (answer 200 with the whole file), `cut_after[name] = n` (send only n bytes of the
    next response for `name`). `requests` logs (name, Range header) for every request, `served` (name, status, first byte) for every file sent."""

    def __init__(self, folder: Path):
        self.folder, self.requests, self.served = Path(folder), [], []
        self.fail_status, self.ignore_range, self.cut_after = None, False, {}
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.control = self
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self):
        self._httpd.shutdown(); self._httpd.server_close(); self._thread.join(5)


@pytest.fixture
def http_server(archives):
    "A LoopbackServer serving the synthetic archives (see `archives`); `.md5s` holds their checksums."
    folder, md5s = archives
    srv = LoopbackServer(folder)
    srv.md5s = md5s
    yield srv
    srv.close()


@pytest.fixture
def serve_folder():
    "Factory: serve any folder on 127.0.0.1 (`serve_folder(path) -> LoopbackServer`), closed after the test."
    servers = []
    def serve(folder) -> LoopbackServer:
        servers.append(LoopbackServer(folder)); return servers[-1]
    yield serve
    for s in servers: s.close()


@pytest.fixture
def refused_url() -> str:
    "A 127.0.0.1 URL on a port nothing listens on (connection refused)."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
