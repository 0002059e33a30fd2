"""The facades download, against an HTTP server on 127.0.0.1 serving an archive the test builds,
and every way a download can fail, against servers on 127.0.0.1 that misbehave on purpose."""

import gzip
import io
import random
import socket
import tarfile
import threading
import time

import pytest
from conftest import build_archive, cli_flags, error_lines, run_script

from config import DATASETS
from files import download
from files.download import ensure_dataset
from files.images import DatasetError

FACADES_COUNTS = DATASETS["facades"].splits  # 400/100/106 images in train/val/test


def ensure_facades(root, url: str, sha256: str = "", **kwargs):
    """What training/loader.py asks of files/download.py for --dataset facades."""
    return ensure_dataset(root, "facades", url, FACADES_COUNTS, sha256, **kwargs)


def test_downloads_verifies_and_extracts(server, tmp_path):
    www, url = server
    build_archive(www / "facades.tar.gz", FACADES_COUNTS)
    root = ensure_facades(tmp_path / "data" / "facades", f"{url}/facades.tar.gz")
    for split, count in FACADES_COUNTS.items():
        assert len(list((root / split).glob("*.jpg"))) == count
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["facades"], "no leftovers"
    # A second call finds the data and downloads nothing.
    (www / "facades.tar.gz").unlink()
    assert ensure_facades(root, f"{url}/facades.tar.gz") == root


def test_incomplete_archive_is_rejected(server, tmp_path):
    www, url = server
    build_archive(www / "facades.tar.gz", {"train": 3, "val": 1, "test": 1})
    with pytest.raises(DatasetError, match="expected 400 images"):
        ensure_facades(tmp_path / "facades", f"{url}/facades.tar.gz")
    assert not (tmp_path / "facades").exists()


def test_without_network_says_where_to_put_the_data(server, tmp_path):
    _, url = server
    with pytest.raises(DatasetError, match=r"download .*failed.*train holds the images"):
        ensure_facades(tmp_path / "facades", f"{url}/missing.tar.gz")
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]


def test_other_missing_folder_is_not_downloaded(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        ensure_facades(tmp_path / "mydata", "http://127.0.0.1:9/x.tar.gz")


def test_train_py_without_data_exits_with_one_line(server, tmp_path):
    _, url = server
    args = cli_flags(data_root=tmp_path / "facades", download_url=f"{url}/missing.tar.gz", ngf=8, ndf=8)
    result = run_script("train.py", *args, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    errors = error_lines(result)
    assert len(errors) == 1 and "facades: data missing" in errors[0], result.stderr


def test_archive_escaping_the_folder_is_refused(server, tmp_path):
    www, url = server
    with tarfile.open(www / "facades.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("facades/../../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(DatasetError, match="cannot extract safely"):
        ensure_facades(tmp_path / "data" / "facades", f"{url}/facades.tar.gz")
    assert not list(tmp_path.rglob("escaped.txt"))


def test_wrong_sha256_is_refused(server, tmp_path):
    www, url = server
    build_archive(www / "facades.tar.gz", FACADES_COUNTS)
    with pytest.raises(DatasetError, match="SHA-256 .* does not match"):
        ensure_facades(tmp_path / "facades", f"{url}/facades.tar.gz", sha256="0" * 64)
    assert not (tmp_path / "facades").exists()


def test_interrupted_download_is_retried_cleanly(server, tmp_path):
    """A killed download leaves a temporary folder with a .part file; the next run starts clean."""
    www, url = server
    stale = tmp_path / "data" / ".facades-download-killed"
    stale.mkdir(parents=True)
    (stale / "facades.tar.gz.part").write_bytes(b"half an archive")
    build_archive(www / "facades.tar.gz", FACADES_COUNTS)
    root = ensure_facades(tmp_path / "data" / "facades", f"{url}/facades.tar.gz")
    assert len(list((root / "train").glob("*.jpg"))) == 400
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["facades"]


# ---------------------------------------------------------------------------------------------
# Every failure is one line naming the URL and the reason, and leaves nothing behind
# ---------------------------------------------------------------------------------------------


def _serve_raw(sock: socket.socket, reply: bytes, hold: float, done: threading.Event) -> None:
    """Answer each connection with `reply` after reading the request, hold it `hold` seconds (or
    until `done`), then close; stop when `done` is set or after 10 s, whichever comes first."""
    sock.settimeout(0.1)
    deadline = time.monotonic() + 10
    with sock:
        while not done.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                try:
                    conn.settimeout(2)
                    conn.recv(65536)
                    conn.sendall(reply)
                except OSError:
                    pass
                done.wait(hold)


@pytest.fixture
def raw_server():
    """start(reply, hold=0) -> the base URL of a TCP server on 127.0.0.1 that writes `reply`, raw
    bytes that need not be HTTP; every server stops at the end of the test, or by itself."""
    started = []

    def start(reply: bytes, hold: float = 0.0) -> str:
        sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        done = threading.Event()
        thread = threading.Thread(target=_serve_raw, args=(sock, reply, hold, done), daemon=True)
        thread.start()
        started.append((done, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for done, thread in started:
        done.set()
        thread.join(5)


def failure(tmp_path, url: str, timeout: float = 5.0) -> str:
    """The one-line error of downloading facades from `url` into tmp_path/data, which must stay empty."""
    with pytest.raises(DatasetError) as err:
        ensure_facades(tmp_path / "data" / "facades", url, timeout=timeout)
    message = str(err.value)
    assert "\n" not in message and f"the download from {url} failed" in message, message
    assert list((tmp_path / "data").iterdir()) == [], "no folder or temporary file left behind"
    return message


@pytest.mark.parametrize(
    "reply,reason",
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100,
            "(the body was cut short: 100 of the 1000 bytes promised)",
        ),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "(the reply is not HTTP (it starts 'SSH-2.0-OpenSSH_9.6'))"),
        (
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\xff\r\n\r\n",
            "(the reply is not HTTP (it starts '\\x16\\x03",
        ),
        (b"HTTP/1.1 20O OK\r\n\r\n", "(the reply is not HTTP (it starts 'HTTP/1.1 20O OK'))"),
        (b"", "(the server closed the connection without a reply)"),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "(HTTP 404 Not Found)"),
        (
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
            "(HTTP 500 Internal Server Error)",
        ),
    ],
    ids=["cut-short", "not-http", "binary-garbage", "bad-status", "no-reply", "404", "500"],
)
def test_a_bad_reply_is_named(raw_server, tmp_path, reply, reason):
    message = failure(tmp_path, raw_server(reply) + "/facades.tar.gz")
    assert reason in message, message


@pytest.mark.parametrize(
    "reply",
    [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100],
    ids=["before-the-reply", "in-the-body"],
)
def test_a_server_that_stalls_times_out(raw_server, tmp_path, reply):
    """The server holds the connection 8 s and then closes it: a message of a timeout, not of a
    closed connection or a body cut short, says that the 0.5 s timeout ended the download."""
    message = failure(tmp_path, raw_server(reply, hold=8) + "/facades.tar.gz", timeout=0.5)
    assert "(timed out: the server stopped answering)" in message, message


def test_a_refused_connection_is_named(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound but never listening: connections to it are refused
        message = failure(tmp_path, f"http://127.0.0.1:{sock.getsockname()[1]}/facades.tar.gz")
    assert "Connection refused" in message, message


@pytest.mark.parametrize(
    "url,reason",
    [
        ("htp:/x", "(unknown url type: htp)"),
        ("http://", "(no host given)"),
        ("not a url", "(ValueError: unknown url type: 'not a url')"),
        ("http://[::1/facades.tar.gz", "Invalid IPv6 URL"),
        ("http://127.0.0.1:port/facades.tar.gz", "nonnumeric port"),
    ],
)
def test_a_malformed_url_is_named(tmp_path, url, reason):
    assert reason in failure(tmp_path, url)


def _damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "corrupt":  # deflate data changed in the middle: a bad stream or a CRC mismatch
        middle = len(data) // 2
        path.write_bytes(
            data[:middle] + bytes(b ^ 0x5A for b in data[middle : middle + 64]) + data[middle + 64 :]
        )
    else:  # a web page where the archive should be
        path.write_bytes(b"<html><body>moved</body></html>")


@pytest.mark.parametrize("how", ["truncated", "corrupt", "not-an-archive"])
def test_a_damaged_archive_is_named(server, tmp_path, how):
    www, url = server
    build_archive(www / "facades.tar.gz", FACADES_COUNTS)
    _damage(www / "facades.tar.gz", how)
    with pytest.raises(DatasetError) as err:
        ensure_facades(tmp_path / "data" / "facades", f"{url}/facades.tar.gz")
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        f"facades.tar.gz from {url}/facades.tar.gz: damaged or not a .tar.gz archive ("
    ), message
    assert list((tmp_path / "data").iterdir()) == []


def test_a_folder_that_cannot_be_created_is_named(tmp_path):
    (tmp_path / "data").write_text("a file where the data folder should be")
    with pytest.raises(DatasetError) as err:
        ensure_facades(tmp_path / "data" / "facades", "http://127.0.0.1:9/facades.tar.gz")
    assert str(err.value).startswith(f"{tmp_path / 'data'}: cannot create a folder for the download there")


# ---------------------------------------------------------------------------------------------
# What extraction may write
# ---------------------------------------------------------------------------------------------


def write_chained(path, members) -> None:
    """A .tar.gz of (name, MiB, random?) members: zeros, or random bytes that gzip cannot shrink.
    Built as a chain of gzip members (as gzip files may be), so that gigabytes of zeros cost one
    compressed MiB repeated rather than compressing gigabytes."""
    zeros, noise = gzip.compress(bytes(1 << 20)), random.Random(0)
    with open(path, "wb") as out:
        for name, mib, is_random in members:
            info = tarfile.TarInfo(name)
            info.size = mib << 20  # a multiple of the 512-byte tar block: no padding
            out.write(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT)))
            for _ in range(mib):
                out.write(gzip.compress(noise.randbytes(1 << 20), compresslevel=1) if is_random else zeros)
        out.write(gzip.compress(bytes(1024)))  # the two zero blocks that end a tar archive


def test_an_archive_bomb_is_refused_before_anything_is_written(server, tmp_path, monkeypatch):
    www, url = server
    write_chained(www / "facades.tar.gz", [("facades/train/1.jpg", 2048, False)])  # 2 GiB of zeros
    assert (www / "facades.tar.gz").stat().st_size < 3 << 20

    def must_not_run(*args, **kwargs):
        raise AssertionError("extraction started")

    monkeypatch.setattr(tarfile.TarFile, "extractall", must_not_run)
    with pytest.raises(DatasetError) as err:
        ensure_facades(tmp_path / "data" / "facades", f"{url}/facades.tar.gz")
    assert f"facades.tar.gz from {url}/facades.tar.gz: refused, it would unpack to more than" in str(
        err.value
    )
    assert "(reached at facades/train/1.jpg); an archive of images may unpack to 20x its size" in str(
        err.value
    )
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.parametrize("zeros_mib,refused", [(70, False), (90, True)])
def test_the_limit_is_twenty_times_the_archive(tmp_path, zeros_mib, refused):
    """4 MiB that gzip cannot shrink make a 4.2 MB archive, which may unpack to 84 MB (80 MiB):
    4 + 70 MiB may, 4 + 90 MiB may not, and nothing is written then."""
    write_chained(
        tmp_path / "a.tar.gz", [("facades/train/1.jpg", 4, True), ("facades/train/2.jpg", zeros_mib, False)]
    )
    if refused:
        with pytest.raises(DatasetError, match="refused, it would unpack to more than 8[0-9]{7} bytes"):
            download._extract(tmp_path / "a.tar.gz", tmp_path / "out")
        assert not (tmp_path / "out").exists()
    else:
        download._extract(tmp_path / "a.tar.gz", tmp_path / "out")
        assert (tmp_path / "out" / "facades" / "train" / "2.jpg").stat().st_size == zeros_mib << 20


def test_an_archive_of_too_many_files_is_refused(server, tmp_path):
    www, url = server
    with tarfile.open(www / "facades.tar.gz", "w:gz") as tar:
        for i in range(download.MIN_MEMBERS + 1):
            tar.addfile(tarfile.TarInfo(f"facades/train/{i}.jpg"))
    with pytest.raises(DatasetError, match=r"refused, it holds more than 10000 files for its \d+ bytes"):
        ensure_facades(tmp_path / "data" / "facades", f"{url}/facades.tar.gz")
    assert list((tmp_path / "data").iterdir()) == []


def test_extraction_writes_no_more_than_the_headers_say(tmp_path):
    """The header sum is a bound because tarfile copies exactly each header's size: data after it
    (here 1 MiB the header does not announce) is read as a next header, which is refused."""
    info = tarfile.TarInfo("facades/train/1.jpg")
    info.size = 10
    with gzip.open(tmp_path / "lying.tar.gz", "wb") as out:
        out.write(info.tobuf(format=tarfile.GNU_FORMAT) + b"0123456789".ljust(512, b"\0") + b"x" * (1 << 20))
    with pytest.raises(DatasetError, match="lying.tar.gz: damaged or not a .tar.gz archive .*after the last"):
        download._extract(tmp_path / "lying.tar.gz", tmp_path / "out")
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert [(p.name, p.stat().st_size) for p in written] == [("1.jpg", 10)]


def test_ctrl_c_during_the_download_leaves_nothing_behind(server, tmp_path, monkeypatch):
    www, url = server
    build_archive(www / "facades.tar.gz", FACADES_COUNTS)

    def interrupted(root, counts):  # after extraction has written every file
        assert len(list(root.rglob("*.jpg"))) == 606
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "_verify_counts", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_facades(tmp_path / "data" / "facades", f"{url}/facades.tar.gz")
    assert list((tmp_path / "data").iterdir()) == []


# --- Bounded downloads: a reply that never ends (file:///dev/zero) stops at a size limit ---


def test_an_endless_download_stops_at_the_limit_and_leaves_nothing(tmp_path, monkeypatch):
    """A set outside the pix2pix family may be at most MAX_DOWNLOAD_BYTES (here 3 MiB)."""
    monkeypatch.setattr(download, "MAX_DOWNLOAD_BYTES", 3 << 20)
    with pytest.raises(DatasetError) as err:
        ensure_dataset(tmp_path / "data" / "mine", "mine", "file:///dev/zero", {"train": 0})
    message = str(err.value)
    assert "file:///dev/zero failed (stopped: it is larger than 3145728 bytes" in message
    assert "the most any downloaded archive may be (3 MiB)" in message and "\n" not in message
    assert list((tmp_path / "data").iterdir()) == [], "no partial download left behind"


def test_a_known_set_may_be_twice_its_official_archive(server, tmp_path, monkeypatch):
    """facades.tar.gz may be 2x the size of the official one, from any URL; an announced length
    beyond that is refused before anything is read."""
    www, url = server
    build_archive(www / "facades.tar.gz", FACADES_COUNTS)
    size = (www / "facades.tar.gz").stat().st_size
    monkeypatch.setitem(download.ARCHIVE_BYTES, "facades", (size - 1) // 2)  # the limit: below it
    with pytest.raises(DatasetError, match=r"refused: the server announces \d+ bytes, more than 2x the"):
        ensure_facades(tmp_path / "data" / "facades", f"{url}/facades.tar.gz")
    assert list((tmp_path / "data").iterdir()) == []
    monkeypatch.setitem(download.ARCHIVE_BYTES, "facades", (size + 1) // 2)  # at the limit: fine
    assert ensure_facades(tmp_path / "data" / "facades", f"{url}/facades.tar.gz").is_dir()


def test_the_limits_are_the_known_sizes_twice_else_the_cap():
    assert download.download_limit("facades")[0] == 2 * download.ARCHIVE_BYTES["facades"] > 60_000_000
    assert download.download_limit("edges2handbags")[0] > download.MAX_DOWNLOAD_BYTES  # 8.6 GB twice
    assert download.download_limit("custom")[0] == download.MAX_DOWNLOAD_BYTES == 2 << 30


def test_train_py_stops_an_endless_download_with_one_line(tmp_path, monkeypatch, capsys):
    """`train.py --download_url file:///dev/zero` with a data_root that is missing, so that a
    download happens: one line, exit 1, nothing written."""
    from conftest import run_main

    import train

    monkeypatch.setitem(download.ARCHIVE_BYTES, "facades", 1 << 20)
    argv = ["--data_root", tmp_path / "data" / "facades", "--download_url", "file:///dev/zero"]
    code, _, (line,) = run_main(train.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 1 and "file:///dev/zero failed (stopped: it is larger than 2097152 bytes" in line
    assert list((tmp_path / "data").iterdir()) == []
