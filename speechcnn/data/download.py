"""Fetching and unpacking data set archives safely: resumable, verified, atomic."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download or archive that could not be used; the message says why and what to do."""


def may_download(
    target: str | Path, download: bool | None, default: str | Path | None = None
) -> bool:
    """Whether a missing data folder `target` may be fetched: `download` True or False says so;
    None (the data modules' default) only into `default`, the documented location: a mistyped
    `--data.root` must fail with "does not exist", not start a 2.3 GB download next to it."""
    if download is not None and not isinstance(download, bool):
        raise ValueError(f"download must be true, false or null, got {download!r}")
    if download is not None:
        return download
    return default is not None and Path(target).resolve() == Path(default).resolve()


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _progress_bar(total: int | None, initial: int, name: str) -> Callable[[int], None]:
    """A tqdm byte counter on stderr (shown only on a terminal); returns its update function."""
    from tqdm import tqdm  # a Lightning dependency

    return tqdm(
        total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
        file=sys.stderr, disable=not sys.stderr.isatty(), leave=False,
    ).update  # fmt: skip


def _fetch_once(url: str, part: Path, timeout: float, show_progress: bool) -> None:
    """One HTTP request: append to `part` from its current size (Range), or restart it."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "speechcnn"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing left to send: the part file is complete
            return
        raise
    with response:
        if have and getattr(response, "status", 200) != 206:
            # The server ignored Range: start over rather than corrupt the part file.
            log.info("%s does not support resuming; downloading from the start", url)
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        update = _progress_bar(total, have, part.name) if show_progress else (lambda n: None)
        received = 0
        with open(part, "ab" if have else "wb") as f:
            while block := response.read(CHUNK):
                f.write(block)
                received += len(block)
                update(len(block))
        if length is not None and received < int(length):
            # A cut connection can end the body early without an exception: resume it.
            raise http.client.IncompleteRead(b"", int(length) - received)


def download_file(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    show_progress: bool = True,
) -> Path:
    """Download `url` to `dest`, resuming `<dest>.part`, verifying `sha256`, moving atomically.
    An existing `dest` with the right checksum is reused; a part file with the wrong one is
    deleted (resuming it again could never succeed)."""
    dest = Path(dest)
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout, show_progress)
            break
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            last_error = error
            have = part.stat().st_size if part.exists() else 0
            log.warning("download of %s interrupted (%s) at %d bytes; attempt %d of %d", url,
                        error, have, attempt + 1, retries + 1)  # fmt: skip
    else:
        kept = f"; kept {part} to resume later" if part.exists() else ""
        raise DownloadError(
            f"cannot download {url} ({last_error}){kept}. If this "
            f"machine is offline, copy the archive to {dest} (it is checked against its sha256) "
            "or extract it yourself and point --data.root at the folder, or set --data.url to "
            "a mirror (file:///path/to/archive.tar.gz works too)."
        ) from last_error
    if sha256 is not None and (actual := sha256_of(part)) != sha256:
        part.unlink()
        raise DownloadError(
            f"{url}: downloaded file has sha256 {actual}, expected {sha256}; deleted it. "
            "The mirror or the download is corrupt: retry, or use another --data.url."
        )
    os.replace(part, dest)  # atomic on one file system: dest is never a partial file
    return dest


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a tar member may not be extracted, or None if it is safe."""
    name = PurePosixPath(member.name)
    if member.name.startswith(("/", "\\")) or name.is_absolute() or ":" in name.parts[0]:
        return "absolute path"
    if ".." in name.parts:
        return "path with '..'"
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        if target.is_absolute() or member.linkname.startswith("\\"):
            return f"link to absolute path {member.linkname!r}"
        # Symlinks resolve from their own folder, hard links from the archive root.
        base = name.parent if member.issym() else PurePosixPath()
        depth = 0
        for part in (base / target).parts:
            depth += -1 if part == ".." else 0 if part == "." else 1
            if depth < 0:
                return f"link pointing out of the target ({member.linkname!r})"
    elif not (member.isfile() or member.isdir()):
        return "device, FIFO or other special file"
    return None


def extract_tar(archive: str | Path, target: str | Path) -> Path:
    """Extract a (compressed) tar archive into the new or empty folder `target`, safely and
    atomically: one unsafe member refuses the whole archive, and nothing is written."""
    archive, target = Path(archive), Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DownloadError(f"{target} already exists and is not empty; will not extract over it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.extracting-", dir=target.parent))
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            if bad := [(m.name, why) for m in members if (why := _member_problem(m))]:
                shown = "; ".join(f"{name!r}: {why}" for name, why in bad[:5])
                raise DownloadError(
                    f"refusing to extract {archive}: {len(bad)} unsafe member(s) ({shown})"
                )
            # Where Python has it (>= 3.11.4, and backports) the "data" filter guards again.
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(staging, members=members, **safe)  # noqa: S202 (members checked above)
        if target.exists():
            target.rmdir()  # empty, checked above
        os.replace(staging, target)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DownloadError(f"cannot extract {archive}: {error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # nothing is left once renamed into place
    return target


def fetch_and_extract(
    url: str,
    target: str | Path,
    sha256: str | None,
    keep_archive: bool = False,
    show_progress: bool = True,
    retries: int = 3,
) -> Path:
    """Download the tar archive at `url` next to `target`, verify it, extract it to `target`;
    the archive stays until extraction succeeded (no second download), or if `keep_archive`."""
    target = Path(target)
    name = PurePosixPath(urllib.request.urlparse(url).path).name or f"{target.name}.tar.gz"
    archive = target.parent / name
    log.info("downloading %s to %s", url, archive)
    download_file(url, archive, sha256, retries=retries, show_progress=show_progress)
    log.info("extracting %s to %s", archive, target)
    extract_tar(archive, target)
    if not keep_archive:
        archive.unlink()
    return target
