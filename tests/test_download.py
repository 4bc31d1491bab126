"""download(): a local HTTP server on 127.0.0.1 stands in for the mirrors."""
from __future__ import annotations

import hashlib
import http.server
import os
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from scratchvae.data import datasets as ds
from scratchvae.data.download import ChecksumError, DownloadError, download, sha256_file
from scratchvae.data.idx import write_idx

NAMES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    """Serves a directory, records request paths, prints nothing."""

    requests: list

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()


class _ShortBody(http.server.BaseHTTPRequestHandler):
    """Announces 1000 bytes more than it sends, then closes the connection."""

    body = b""
    requests: list

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(self.body) + 1000))
        self.end_headers()
        self.wfile.write(self.body)
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def serve():
    """serve(handler_class) -> base URL; servers are shut down after the test."""
    servers = []

    def start(handler):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        servers.append((server, thread))
        host, port = server.server_address[:2]
        return f"http://{host}:{port}"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def mirror(tmp_path, serve):
    """Four small gzip'ed IDX files served over HTTP, and their hash table."""
    root = tmp_path / "mirror"
    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz",
                  rng.integers(0, 10, size=n, dtype=np.uint8))
    table = {name: sha256_file(root / name) for name in NAMES}
    requests: list = []
    handler = type("H", (_Quiet,), {"requests": requests})
    url = serve(partial(handler, directory=str(root)))
    return {"root": root, "url": url, "table": table, "requests": requests}


def _listing(folder: Path):
    return sorted(os.listdir(folder))


def test_good_download_then_nothing_to_fetch(tmp_path, mirror):
    dest = tmp_path / "dest"
    lines = []
    out = download("mnist", dest, base_url=mirror["url"], files=mirror["table"],
                   progress=lines.append, timeout=5)
    assert out == dest
    assert _listing(dest) == sorted(NAMES)
    for name in NAMES:
        assert (dest / name).read_bytes() == (mirror["root"] / name).read_bytes()
    assert sorted(mirror["requests"]) == sorted("/" + n for n in NAMES)
    assert any(" / " in line and "kB" in line for line in lines)  # bytes so far / total
    assert any("verified" in line for line in lines)

    # the files load as a data set
    d = ds.load_dataset("mnist", dest)
    assert d.x_train.shape == (30, 784) and d.x_test.shape == (10, 784)

    # second run: files present with the right hash, nothing fetched
    before = len(mirror["requests"])
    lines.clear()
    download("mnist", dest, base_url=mirror["url"], files=mirror["table"],
             progress=lines.append, timeout=5)
    assert len(mirror["requests"]) == before
    assert sum("already present" in line for line in lines) == 4


def test_default_destination_is_user_cache(tmp_path, mirror, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = download("fashion-mnist", base_url=mirror["url"], files=mirror["table"],
                   progress=None, timeout=5)
    assert out == tmp_path / "home" / ".cache" / "scratchvae" / "fashion-mnist"
    assert _listing(out) == sorted(NAMES)


def test_hash_mismatch_leaves_nothing(tmp_path, mirror):
    dest = tmp_path / "dest"
    table = dict(mirror["table"])
    table["t10k-images-idx3-ubyte.gz"] = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ChecksumError) as info:
        download("mnist", dest, base_url=mirror["url"], files=table, progress=None, timeout=5)
    msg = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and "SHA-256" in msg
    assert "t10k-images-idx3-ubyte.gz" not in _listing(dest)
    assert not [n for n in _listing(dest) if n.startswith(".")]  # no temporary file
    # the files before it in the table were kept (they were verified)
    assert "train-images-idx3-ubyte.gz" in _listing(dest)


def test_corrupted_file_on_server(tmp_path, mirror):
    # the server's copy is damaged; the recorded hash is the good one
    target = mirror["root"] / "train-labels-idx1-ubyte.gz"
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(ChecksumError):
        download("mnist", dest, base_url=mirror["url"], files=mirror["table"],
                 progress=None, timeout=5)
    assert _listing(dest) == ["train-images-idx3-ubyte.gz"]


def test_bad_existing_file_is_replaced(tmp_path, mirror):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "train-images-idx3-ubyte.gz").write_bytes(b"half a file")
    download("mnist", dest, base_url=mirror["url"], files=mirror["table"],
             progress=None, timeout=5)
    assert sha256_file(dest / "train-images-idx3-ubyte.gz") == \
        mirror["table"]["train-images-idx3-ubyte.gz"]


def test_truncated_transfer_leaves_nothing(tmp_path, serve):
    body = b"x" * 5000
    requests: list = []
    url = serve(type("Short", (_ShortBody,), {"body": body, "requests": requests}))
    dest = tmp_path / "dest"
    table = {"train-images-idx3-ubyte.gz": hashlib.sha256(body).hexdigest()}
    with pytest.raises(DownloadError) as info:
        download("mnist", dest, base_url=url, files=table, progress=None, timeout=5)
    assert not isinstance(info.value, ChecksumError)
    assert "truncated" in str(info.value) and "5000" in str(info.value)
    assert _listing(dest) == []
    assert requests == ["/train-images-idx3-ubyte.gz"]


def test_http_error(tmp_path, mirror):
    dest = tmp_path / "dest"
    table = {"missing-file.gz": "0" * 64}
    with pytest.raises(DownloadError, match="404"):
        download("mnist", dest, base_url=mirror["url"], files=table, progress=None, timeout=5)
    assert _listing(dest) == []


def test_connection_refused(tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(DownloadError, match="127.0.0.1"):
        download("mnist", tmp_path / "d", base_url=f"http://127.0.0.1:{port}",
                 files={"a.gz": "0" * 64}, progress=None, timeout=5)


def test_all_mirrors_tried(tmp_path, mirror, monkeypatch):
    # first mirror lacks the files (404), second one has them
    spec = ds.DATASETS["mnist"]
    fake = ds.DatasetSpec(name="mnist", title="t", homepage="h", license="l",
                          mirrors=(mirror["url"] + "/nothing-here", mirror["url"]),
                          sha256=mirror["table"], classes=spec.classes)
    monkeypatch.setitem(ds.DATASETS, "mnist", fake)
    dest = download("mnist", tmp_path / "dest", progress=None, timeout=5)
    assert _listing(dest) == sorted(NAMES)
    assert sum(r.startswith("/nothing-here/") for r in mirror["requests"]) == 4


def test_unknown_name_needs_table_and_url(tmp_path):
    with pytest.raises(ValueError, match="known"):
        download("cifar-10", tmp_path, progress=None)
