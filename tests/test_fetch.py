"""Real-data fetching, on local file:// archives: download, checksum pinning, unpacking."""
import io
import json
import tarfile
import zipfile

import pytest

from dualspeed.data.fetch import fetch_file


def _tar(path, files: dict):
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def test_archives_are_fetched_pinned_and_unpacked(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _tar(src / "imgs.tar.gz", {"a/1.jpg": b"one", "a/2.jpg": b"two"})
    with zipfile.ZipFile(src / "imgs.zip", "w") as z:
        z.writestr("b/3.jpg", b"three")
    for name, key in (("imgs.tar.gz", "untar_to"), ("imgs.zip", "unzip_to")):
        entry = {"url": (src / name).as_uri(), "dest": str(tmp_path / "dl" / name), key: str(tmp_path / "images")}
        fetch_file(entry, tmp_path / "stamps" / f"{name}.ok")
        stamp = json.loads((tmp_path / "stamps" / f"{name}.ok").read_text())
        assert len(stamp["sha256"]) == 64
    assert (tmp_path / "images" / "a" / "2.jpg").read_bytes() == b"two"
    assert (tmp_path / "images" / "b" / "3.jpg").read_bytes() == b"three"

    # a later run verifies against the pin: a changed file is named, not silently used
    (tmp_path / "dl" / "imgs.zip").write_bytes(b"not the same bytes")
    entry = {"url": (src / "imgs.zip").as_uri(), "dest": str(tmp_path / "dl" / "imgs.zip")}
    with pytest.raises(SystemExit, match="imgs.zip: sha256 .* != expected"):
        fetch_file(entry, tmp_path / "stamps" / "again.ok")


def test_archive_escaping_its_folder_is_refused(tmp_path):
    _tar(tmp_path / "evil.tar.gz", {"../outside.txt": b"x"})
    entry = {"url": (tmp_path / "evil.tar.gz").as_uri(), "dest": str(tmp_path / "dl" / "evil.tar.gz"),
             "untar_to": str(tmp_path / "images")}
    with pytest.raises(tarfile.OutsideDestinationError):
        fetch_file(entry, tmp_path / "evil.ok")
    assert not (tmp_path / "outside.txt").exists()
