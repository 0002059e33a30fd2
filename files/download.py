"""The download of an official archive of the pix2pix family (facades, maps, edges2shoes, ...):
fetch, check, unpack, move into place.

Every failure is one DatasetError line naming the URL (or the folder) and the reason, never a
traceback: a refused or dropped connection, a timeout, an HTTP error status, a reply that is not
HTTP, a malformed URL, a body shorter than its Content-Length, a damaged archive, an archive that
would unpack to far more than it could hold, or missing images. All work happens in a temporary
folder beside the destination, removed on every failure (Ctrl-C included); the data is moved into
place only once complete and verified.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import IO

from tqdm import tqdm

from files.images import DatasetError, list_images

# Seconds a connection, or a read of the reply, may stall before the download is given up.
TIMEOUT_S = 30.0
# An archive may unpack to at most this multiple of its own size (summed from the tar headers
# before anything is written). The official archives hold JPEGs, which gzip cannot shrink further:
# facades.tar.gz (30.2 MB) unpacks to 31.2 MB, a ratio of 1.04. 20x leaves ample margin for any
# archive of images, yet refuses a small archive of zeros (2 MB -> 2 GB is 1000x) before it fills
# the disk.
MAX_EXPANSION = 20
# Small archives may unpack to this much whatever their ratio: a few tiny, very compressible images
# (as in tests) have a high ratio but can do no harm.
MIN_UNPACKED_BYTES = 64 << 20
# Each member costs a file on disk; a gzip of empty-file headers packs thousands into a few kB. The
# official archives take 30 to 60 kB per member (facades: 609 members in 30.2 MB), so one member
# per KiB of archive is ample margin; small archives may hold MIN_MEMBERS whatever their size.
BYTES_PER_MEMBER = 1024
MIN_MEMBERS = 10_000
# The sizes of the official archives (efrosgans.eecs.berkeley.edu/pix2pix/datasets/), rounded up.
# A download of one of them stops at twice its size: /dev/zero or an endless reply never fills the
# disk, and a mirror that repacks the same images still fits.
ARCHIVE_BYTES = {
    "facades": 30_200_000,
    "cityscapes": 104_000_000,
    "maps": 251_000_000,
    "night2day": 2_000_000_000,
    "edges2shoes": 2_170_000_000,
    "edges2handbags": 8_600_000_000,
}
ARCHIVE_MARGIN = 2
# Any other archive (--download_url of your own set) stops at this size.
MAX_DOWNLOAD_BYTES = 2 << 30


class _FetchError(Exception):
    """A failed download; the message is the reason, which ensure_dataset puts in its one line."""


def _one_line(text: str) -> str:
    """Error details may hold line breaks (a garbage status line), which would break the one line."""
    return " ".join(str(text).split())


def _reason(err: BaseException) -> str:
    """Why a download failed, in words: HTTP status, refused connection, not HTTP, timeout, ..."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):  # its reason is the underlying error or a message
        return _reason(err.reason) if isinstance(err.reason, BaseException) else _one_line(err.reason)
    if isinstance(err, http.client.RemoteDisconnected):
        return "the server closed the connection without a reply"
    if isinstance(err, http.client.BadStatusLine):
        return f"the reply is not HTTP (it starts {err.line.strip()[:60]!r})"
    if isinstance(err, TimeoutError):
        return "timed out: the server stopped answering"
    return _one_line(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)


def _promised_length(response: IO[bytes]) -> int | None:
    """The body length the server promised (call before reading): http.client's reading of
    Content-Length, None for a chunked body or a missing or invalid header; for other schemes
    (file://) the header as given."""
    if isinstance(response, http.client.HTTPResponse):
        return response.length
    try:
        length = int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return length if length >= 0 else None


def download_limit(name: str) -> tuple[int, str]:
    """The most bytes a download of the set `name` may take, and the rule in words: twice the
    official archive's size for a set of the pix2pix family, MAX_DOWNLOAD_BYTES for any other."""
    known = ARCHIVE_BYTES.get(name)
    if known is None:
        return MAX_DOWNLOAD_BYTES, f"the most any downloaded archive may be ({MAX_DOWNLOAD_BYTES >> 20} MiB)"
    limit = ARCHIVE_MARGIN * known
    return limit, f"{ARCHIVE_MARGIN}x the {known:,} bytes of the official {name}.tar.gz"


def _fetch(url: str, target: Path, timeout: float = TIMEOUT_S, limit: tuple[int, str] | None = None) -> None:
    """Download `url` to `target` with a progress bar, through a .part file renamed when complete.

    Raises _FetchError with the reason on any failure, and as soon as the body is larger than
    `limit` (bytes, the rule in words): a promised length beyond it is refused before reading.
    http.client ends a body that is cut short quietly, as if complete, so the received length is
    checked against Content-Length here.
    """
    part = target.with_name(target.name + ".part")
    max_bytes, rule = limit or (MAX_DOWNLOAD_BYTES, "the most any downloaded archive may be")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            promised = _promised_length(response)
            if promised is not None and promised > max_bytes:
                raise _FetchError(f"refused: the server announces {promised} bytes, more than {rule}")
            with open(part, "wb") as out:
                received = _copy(response, out, promised, target.name, max_bytes)
            if received > max_bytes:
                raise _FetchError(f"stopped: it is larger than {max_bytes} bytes, {rule}")
    # URLError/HTTPError and socket errors are OSErrors; a reply that is not HTTP raises
    # http.client.HTTPException; a malformed URL ("htp:/x", "http://[::1") raises ValueError.
    except (OSError, http.client.HTTPException, ValueError) as err:
        raise _FetchError(_reason(err)) from None
    if promised is not None and received != promised:
        raise _FetchError(f"the body was cut short: {received} of the {promised} bytes promised")
    part.rename(target)


def _copy(response: IO[bytes], out: IO[bytes], total: int | None, name: str, max_bytes: int) -> int:
    """Copy the body to `out` in 1 MiB chunks; returns the number of bytes received, stopping
    (without writing them) at the first chunk that would take it past `max_bytes`."""
    received = 0
    with tqdm(total=total or None, unit="B", unit_scale=True, desc=f"downloading {name}") as bar:
        while chunk := response.read(min(1 << 20, max_bytes + 1 - received)):
            received += len(chunk)
            if received > max_bytes:
                break
            out.write(chunk)
            bar.update(len(chunk))
    return received


def _check_expansion(tar: tarfile.TarFile, archive_bytes: int, source: str) -> None:
    """Refuse an archive whose headers announce more data or members than images could explain.

    The header sum bounds what extraction writes: tarfile copies exactly the size each header
    states (data beyond it is read as the next header, and a body shorter than it is a ReadError).
    A link is charged as the largest file before it, since where links are unsupported tarfile
    writes it as a copy of its target, which must come earlier in the archive.
    """
    max_bytes = max(MAX_EXPANSION * archive_bytes, MIN_UNPACKED_BYTES)
    max_members = max(archive_bytes // BYTES_PER_MEMBER, MIN_MEMBERS)
    total = largest = members = 0
    for member in tar:  # reads the headers one by one: a bomb is refused at its first big member
        size = largest if member.islnk() or member.issym() else member.size
        largest, total, members = max(largest, size), total + size, members + 1
        if total > max_bytes:
            raise DatasetError(
                f"{source}: refused, it would unpack to more than {max_bytes} bytes (reached at "
                f"{member.name}); an archive of images may unpack to {MAX_EXPANSION}x its size "
                f"({archive_bytes} bytes) or {MIN_UNPACKED_BYTES >> 20} MiB, whichever is more"
            )
        if members > max_members:
            raise DatasetError(
                f"{source}: refused, it holds more than {max_members} files for its {archive_bytes} bytes"
            )


def _read_to_the_end(tar: tarfile.TarFile) -> None:
    """tarfile ends an archive quietly at the first header it cannot read, so a damaged or cut
    archive unpacks in part, and the gzip checksum at the end is never checked: read on to the end
    (which verifies it), where only the zeros that pad a tar archive may follow the last member."""
    tar.fileobj.seek(tar.offset)
    while chunk := tar.fileobj.read(1 << 20):
        if chunk.strip(b"\0"):
            raise tarfile.ReadError(f"unreadable data after the last readable file, at byte {tar.offset}")


def _extract(archive: Path, into: Path, source: str = "") -> None:
    """Unpack a .tar.gz safely: the "data" filter refuses absolute paths, '..', links out and
    devices, and _check_expansion refuses archive bombs before anything is written."""
    source = source or str(archive)
    try:
        with tarfile.open(archive) as tar:
            _check_expansion(tar, archive.stat().st_size, source)
            tar.extractall(into, filter="data")
            _read_to_the_end(tar)
    except tarfile.FilterError as err:
        raise DatasetError(f"{source}: cannot extract safely ({err})") from None
    # A truncated gzip raises EOFError, corrupt compressed data zlib.error or BadGzipFile (an OSError).
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DatasetError(f"{source}: damaged or not a .tar.gz archive ({_reason(err)})") from None
    except OSError as err:
        raise DatasetError(f"{source}: cannot extract into {into} ({_reason(err)})") from None


def _verify_counts(root: Path, counts: dict[str, int]) -> None:
    """Every split folder must hold `count` images, or at least one where the count is 0 (unknown)."""
    for split, expected in counts.items():
        found = len(list_images(root / split)) if (root / split).is_dir() else 0
        if expected and found != expected:
            raise DatasetError(f"{root / split}: expected {expected} images after download, found {found}")
        if not expected and not found:
            raise DatasetError(
                f"{root / split}: no images after download (the archive must hold "
                f"{', '.join(f'{s}/' for s in counts)} with images)"
            )


def _verify_sha256(archive: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected.lower():
        raise DatasetError(
            f"{archive.name}: SHA-256 {digest.hexdigest()} does not match the expected {expected}"
        )


def _work_folder(root: Path, name: str) -> tempfile.TemporaryDirectory:
    """A fresh temporary folder beside `root` (so the final move is a rename), after removing the
    ones that killed downloads left behind."""
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        for stale in root.parent.glob(f".{name}-download-*"):
            shutil.rmtree(stale, ignore_errors=True)
        # A folder that cannot be removed is left for the next try's clean-up, not an error.
        return tempfile.TemporaryDirectory(
            dir=root.parent, prefix=f".{name}-download-", ignore_cleanup_errors=True
        )
    except OSError as err:
        raise DatasetError(
            f"{root.parent}: cannot create a folder for the download there ({_reason(err)})"
        ) from None


def ensure_dataset(
    root: str | Path,
    name: str,
    url: str,
    counts: dict[str, int],
    sha256: str = "",
    missing_hint: str = "",
    *,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Return `root`, first downloading and unpacking the archive `name`.tar.gz there if it is missing.

    The archive must unpack into a folder `name` holding the split folders of `counts` (split ->
    image count, 0 = any but not none), as the official pix2pix archives do. Only a root whose
    folder name is `name` is downloaded, and only when `url` is set; for any other missing
    folder the error says where to put the data (`missing_hint` adds to it). The archive is
    checked (length, SHA-256 when given, size when unpacked, then every split) before it is moved
    into place, so a failed or interrupted download leaves nothing behind.
    """
    root = Path(root)
    if root.exists():
        return root
    if root.name != name or not url:
        hint = missing_hint or "put the train/ val/ test/ image folders there"
        raise DatasetError(f"{root}: no such folder ({hint})")
    # The context removes the folder on any exception, KeyboardInterrupt included.
    with _work_folder(root, name) as tmp:
        archive = Path(tmp) / f"{name}.tar.gz"
        try:
            _fetch(url, archive, timeout, download_limit(name))
        except _FetchError as err:
            raise DatasetError(
                f"{root}: data missing and the download from {url} failed ({err}); download and "
                f"unpack {name}.tar.gz by hand so that {root}/train holds the images, or pass "
                f"--data_root"
            ) from None
        if sha256:
            _verify_sha256(archive, sha256)
        _extract(archive, Path(tmp), f"{name}.tar.gz from {url}")
        _verify_counts(Path(tmp) / name, counts)
        _move_into_place(Path(tmp) / name, root)
    return root


def _move_into_place(unpacked: Path, root: Path) -> None:
    """A rename within one folder: the root appears complete or not at all."""
    try:
        unpacked.rename(root)
    except OSError as err:
        raise DatasetError(f"{root}: cannot move the unpacked data there ({_reason(err)})") from None
