"""The cache folder, pip downloads (faked: no network) and member extraction."""

import io
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from glora.data import cache
from glora.data.cache import cache_dir, extract_members, fetch_sdist
from glora.errors import GloraError


def _tar_gz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_cache_dir_follows_env_and_defaults_to_home(tmp_path, monkeypatch):
    monkeypatch.setenv("GLORA_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.delenv("GLORA_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "glora"


def test_fetch_runs_pip_once_then_reuses_the_archive(empty_cache, monkeypatch):
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        _tar_gz(dest / "Some_Pkg-1.0.tar.gz", {"x": b"x"})
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(cache.subprocess, "run", fake_pip)
    first = fetch_sdist("some-pkg", "1.0")  # names match as pip normalizes them
    second = fetch_sdist("some-pkg", "1.0")
    assert first == second == empty_cache / "sdist" / "Some_Pkg-1.0.tar.gz" and first.is_file()
    assert len(calls) == 1
    assert calls[0][:8] == [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                            ":all:", "some-pkg==1.0"]
    assert [p.name for p in (empty_cache / "sdist").iterdir()] == ["Some_Pkg-1.0.tar.gz"]


def test_fetch_failure_says_what_failed_the_command_and_where(empty_cache, monkeypatch):
    monkeypatch.setattr(cache.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: Could not find a version that satisfies the requirement"))
    with pytest.raises(GloraError) as err:
        fetch_sdist("nopkg", "9.9")
    msg = str(err.value)
    assert "nopkg==9.9" in msg and "status 1" in msg and "Could not find a version" in msg
    assert "python -m pip download --no-deps --no-binary :all: nopkg==9.9 -d" in msg
    assert f"nopkg-9.9.tar.gz into {empty_cache / 'sdist'}" in msg
    assert not list((empty_cache / "sdist").iterdir())  # no leftover temporary folder


def test_extract_only_the_wanted_members_and_only_once(tmp_path, monkeypatch):
    archive = _tar_gz(tmp_path / "a.tar.gz", {"top/a.txt": b"A", "top/big.bin": b"B" * 1000,
                                             "top/sub/c.txt": b"C"})
    dest = tmp_path / "out"
    paths = extract_members(archive, ["top/sub/c.txt", "top/a.txt"], dest)
    assert paths == [dest / "top/sub/c.txt", dest / "top/a.txt"]
    assert [p.read_bytes() for p in paths] == [b"C", b"A"]
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "top/a.txt", "top/sub/c.txt"]
    monkeypatch.setattr(cache.tarfile, "open", lambda *a, **k: pytest.fail("archive reopened"))
    assert extract_members(archive, ["top/a.txt"], dest) == [dest / "top/a.txt"]


def test_extract_missing_member_names_it_and_the_archive(tmp_path):
    archive = _tar_gz(tmp_path / "a.tar.gz", {"a.txt": b"A"})
    with pytest.raises(GloraError, match=r"a\.tar\.gz has no file\(s\) \['b\.txt'\]"):
        extract_members(archive, ["a.txt", "b.txt"], tmp_path / "out")


@pytest.mark.parametrize("member", ["../evil.txt", "/etc/evil.txt"])
def test_extract_refuses_paths_outside_the_destination(tmp_path, member):
    archive = _tar_gz(tmp_path / "a.tar.gz", {member: b"x"})
    with pytest.raises(GloraError, match="not a plain relative path"):
        extract_members(archive, [member], tmp_path / "out")


def test_parallel_extractions_of_one_member_all_read_it_whole(tmp_path):
    """A sweep's parallel runs fill one cache: no run may see the member torn or empty."""
    data = bytes(range(256)) * 20_000
    archive = _tar_gz(tmp_path / "a.tar.gz", {"d/big.bin": data})
    start, seen = threading.Barrier(4), []

    def extract() -> None:
        start.wait()
        (path,) = extract_members(archive, ["d/big.bin"], tmp_path / "out")
        seen.append(path.read_bytes() == data)

    threads = [threading.Thread(target=extract) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [True] * 4
    assert [p.name for p in (tmp_path / "out" / "d").iterdir()] == ["big.bin"]
