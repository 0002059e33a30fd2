"""The facades download, against an HTTP server on 127.0.0.1 serving an archive the test builds."""

import functools
import http.server
import io
import tarfile
import threading

import pytest
from PIL import Image

from dataset import FACADES_COUNTS, DatasetError
from download import ensure_facades


def build_archive(path, counts, name="facades"):
    """<name>.tar.gz with `counts` tiny aligned JPEGs per split, laid out as the official archives."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 30, 30)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    with tarfile.open(path, "w:gz") as tar:
        for split, count in counts.items():
            for i in range(1, count + 1):
                info = tarfile.TarInfo(f"{name}/{split}/{i}.jpg")
                info.size = len(jpeg)
                tar.addfile(info, io.BytesIO(jpeg))


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on a free port of 127.0.0.1; yields the base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


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
    import subprocess
    import sys

    from conftest import ROOT
    _, url = server
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data_root", str(tmp_path / "facades"),
                             "--download_url", f"{url}/missing.tar.gz", "--ngf", "8", "--ndf", "8"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
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
