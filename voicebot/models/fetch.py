"""Download the registry's models into models.dir, resumably, and check every file's size and SHA-256.

A file is written to FILE.part, resumed with an HTTP Range request after an interruption, checked, and only
then renamed to its final name, so a cut, truncated or corrupt download never looks installed. Also the
`voicebot models list|fetch|verify` command.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import hashlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from tqdm import tqdm

from voicebot import __version__
from voicebot.config import Config
from voicebot.errors import (
    EX_DATAERR,
    EX_NOINPUT,
    ChecksumError,
    DownloadError,
    DownloadStopped,
    UnknownModelError,
    UnverifiableModelError,
)
from voicebot.models.registry import MODELS, PI_PROFILE, REGISTRY, ModelEntry, ModelFile, entry_at

log = logging.getLogger(__name__)

MIRROR_ENV = "VOICEBOT_MODELS_MIRROR"
PART_SUFFIX = ".part"
CHUNK_BYTES = 1 << 20
# A stalled connection fails after a minute of silence rather than hanging a Pi's install forever.
TIMEOUT = httpx.Timeout(connect=20.0, read=60.0, write=60.0, pool=20.0)
STOP_WAIT_S = TIMEOUT.read + 5.0
FETCH_HINT = "run `voicebot models fetch` again to resume"
CONFIG_KEYS = {
    "llm": "models.llm",
    "asr": "models.asr",
    "voice": "models.voice_en or models.voice_zh",
    "wake": "wake.models",
}


class FileState(enum.Enum):
    """What verify found for one file."""

    OK = "ok"
    MISSING = "missing"
    WRONG_SIZE = "wrong size"
    WRONG_HASH = "wrong hash"
    UNVERIFIABLE = "unverifiable"


@dataclass(frozen=True)
class FileCheck:
    """One installed file compared with the registry."""

    model: str
    path: Path
    state: FileState
    detail: str = ""


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    _hash_into(digest, path)
    return digest.hexdigest()


def check_file(model: str, file: ModelFile, models_dir: Path) -> FileCheck:
    """Compare one installed file with its published size and SHA-256."""
    path = models_dir / file.path
    if not path.is_file():
        return FileCheck(model, path, FileState.MISSING)
    if not file.verifiable:
        return FileCheck(model, path, FileState.UNVERIFIABLE, "the registry has no published SHA-256 to check it with")
    size = path.stat().st_size
    if size != file.size_bytes:
        return FileCheck(model, path, FileState.WRONG_SIZE, f"{size} bytes, expected {file.size_bytes}")
    actual = sha256_of(path)
    if actual != file.sha256:
        return FileCheck(model, path, FileState.WRONG_HASH, f"SHA-256 {actual}, expected {file.sha256}")
    return FileCheck(model, path, FileState.OK)


def verify_model(entry: ModelEntry, models_dir: Path) -> list[FileCheck]:
    """Re-hash each file of a model as installed under models_dir."""
    return [check_file(entry.name, file, models_dir) for file in entry.files]


def source_url(url: str, mirror: str | None = None) -> str:
    """The URL to download from: the registry's, or the same path on a mirror (which may add a path prefix)."""
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    if not mirror:
        return url
    parts = urlsplit(url)
    return mirror.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def new_client() -> httpx.Client:
    """An HTTP client with explicit timeouts that follows Hugging Face's and GitHub's redirects to their CDNs."""
    # identity: a Range is counted in the bytes of the file itself, never of a compressed rendering of it.
    headers = {"User-Agent": f"voicebot/{__version__}", "Accept-Encoding": "identity"}
    return httpx.Client(timeout=TIMEOUT, follow_redirects=True, headers=headers)


def fetch_model(
    entry: ModelEntry,
    models_dir: Path,
    *,
    mirror: str | None = None,
    client: httpx.Client | None = None,
    progress: bool = False,
    stop: threading.Event | None = None,
) -> list[Path]:
    """Download the files of a model that are missing or wrong; return those downloaded (none if all are fine)."""
    refuse_unverifiable(entry, models_dir)
    wanted = [file for file in entry.files if check_file(entry.name, file, models_dir).state is not FileState.OK]
    if not wanted:
        return []
    own_client = client is None
    client = client or new_client()
    try:
        for file in wanted:
            download_file(client, file, models_dir, mirror=mirror, progress=progress, stop=stop)
    finally:
        if own_client:
            client.close()
    return [models_dir / file.path for file in wanted]


def refuse_unverifiable(entry: ModelEntry, models_dir: Path) -> None:
    """Raise if a file of this model has no published size or SHA-256 to check a download against."""
    for file in entry.files:
        if not file.verifiable:
            raise UnverifiableModelError(
                f"{entry.name}: no published SHA-256 for {file.path} is known, so voicebot will not download it "
                f"unchecked; download {file.url} yourself into {models_dir} and set {CONFIG_KEYS[entry.kind]} to it, "
                "or pick a verified model from `voicebot models list`"
            )


def download_file(
    client: httpx.Client,
    file: ModelFile,
    models_dir: Path,
    *,
    mirror: str | None = None,
    progress: bool = False,
    stop: threading.Event | None = None,
) -> Path:
    """Download one file to FILE.part (resuming it), check size and SHA-256, then rename it into place."""
    if not file.verifiable:
        raise UnverifiableModelError(f"no published SHA-256 for {file.path}; voicebot will not download it unchecked")
    destination = models_dir / file.path
    part = destination.with_name(destination.name + PART_SUFFIX)
    url = source_url(file.url, mirror)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"cannot create {destination.parent}: {error.strerror}; check models.dir") from None
    for attempt in (1, 2):
        resumed = part.is_file() and part.stat().st_size > 0
        digest = _bring_up_to_size(client, url, part, file, progress, stop)
        if digest.hexdigest() == file.sha256:
            os.replace(part, destination)
            return destination
        part.unlink()
        # Resumed bytes may come from an older, different file on the server: start over once before blaming it.
        if resumed and attempt == 1:
            log.warning("%s: the resumed download does not match its SHA-256; downloading it from the start", file.path)
            continue
        raise ChecksumError(
            f"{file.path} from {url} has SHA-256 {digest.hexdigest()}, expected {file.sha256}; the download was "
            f"deleted; run `voicebot models fetch` again, and if it fails again the server (or ${MIRROR_ENV}) "
            "serves a different file"
        )
    raise AssertionError("unreachable")


def _bring_up_to_size(
    client: httpx.Client, url: str, part: Path, file: ModelFile, progress: bool, stop: threading.Event | None
) -> hashlib._Hash:
    """Download the rest of `part` (or all of it); return the SHA-256 of the whole part, which has file's size."""
    size = file.size_bytes
    offset = part.stat().st_size if part.is_file() else 0
    if offset > size:
        part.unlink()
        offset = 0
    digest = hashlib.sha256()
    if offset == size:
        _hash_into(digest, part)
        return digest
    try:
        offset = _transfer(client, url, part, offset, file, digest, progress, stop)
    except httpx.ConnectError as error:
        raise DownloadError(
            f"{file.path}: cannot reach {urlsplit(url).netloc} ({_describe(error)}); check the network, "
            f"or download from a server you can reach with ${MIRROR_ENV}"
        ) from None
    except httpx.TimeoutException:
        raise DownloadError(
            f"{file.path}: {urlsplit(url).netloc} stopped answering after {_part_size(part)} of {size} bytes "
            f"({url}); {FETCH_HINT}"
        ) from None
    except httpx.HTTPError as error:
        raise DownloadError(
            f"{file.path}: download from {url} broke after {_part_size(part)} of {size} bytes "
            f"({_describe(error)}); {FETCH_HINT}"
        ) from None
    except OSError as error:
        raise DownloadError(f"{file.path}: cannot write {part}: {error.strerror}; check models.dir") from None
    if offset != size:
        raise DownloadError(f"{file.path}: the server sent {offset} of {size} bytes and closed ({url}); {FETCH_HINT}")
    return digest


def _transfer(
    client: httpx.Client,
    url: str,
    part: Path,
    offset: int,
    file: ModelFile,
    digest: hashlib._Hash,
    progress: bool,
    stop: threading.Event | None,
) -> int:
    """Stream from `url` into `part` from `offset`, hashing; return the part's size afterwards."""
    size = file.size_bytes
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream("GET", url, headers=headers) as response:
        if offset and response.status_code == 416:
            # The server's file is not what the part is a beginning of: start again from nothing.
            part.unlink()
            response.close()
            return _transfer(client, url, part, 0, file, digest, progress, stop)
        if response.status_code not in (200, 206):
            raise DownloadError(
                f"{file.path}: {url} answered HTTP {response.status_code} {response.reason_phrase}; "
                f"check the URL or ${MIRROR_ENV}, or try again later"
            )
        if response.status_code == 206 and offset:
            start = _range_start(response.headers.get("content-range", ""))
            if start != offset:
                raise DownloadError(
                    f"{file.path}: {url} resumed at byte {start} instead of {offset}; delete {part} and "
                    "run `voicebot models fetch` again"
                )
            _hash_into(digest, part)
            mode = "ab"
        else:
            offset = 0  # The server ignored Range (200): start over.
            mode = "wb"
        with (
            part.open(mode) as out,
            tqdm(
                total=size,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=Path(file.path).name,
                disable=not progress,
            ) as bar,
        ):
            for chunk in response.iter_bytes():
                if stop is not None and stop.is_set():
                    raise DownloadStopped(f"{file.path}: stopped at {offset} of {size} bytes; {FETCH_HINT}")
                offset += len(chunk)
                if offset > size:
                    out.close()
                    part.unlink()
                    raise DownloadError(
                        f"{file.path}: {url} sent more than the {size} bytes the registry expects, so it is not "
                        f"that file; the download was deleted; check the URL or ${MIRROR_ENV}"
                    )
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    return offset


def _range_start(content_range: str) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
    return int(match.group(1)) if match else None


def _hash_into(digest: hashlib._Hash, path: Path) -> None:
    with path.open("rb") as source:
        while block := source.read(CHUNK_BYTES):
            digest.update(block)


def _part_size(part: Path) -> int:
    return part.stat().st_size if part.is_file() else 0


def _describe(error: httpx.HTTPError) -> str:
    return str(error) or type(error).__name__


# The command line.


def add_models_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `voicebot models list|fetch|verify` to the command's subparsers."""
    models = commands.add_parser(
        "models",
        help="list, download and check the models",
        description="The models voicebot knows, each with its published size and SHA-256. "
        f"Files go to models.dir; set ${MIRROR_ENV} (or --mirror) to download from another server.",
    )
    actions = models.add_subparsers(dest="models_action", required=True, metavar="ACTION")
    actions.add_parser(
        "list",
        parents=[common],
        help="list the known models",
        description="List every model in the registry: size, licence, what it is for, and whether it is installed "
        "in models.dir (by size; `verify` re-hashes). * marks what the pi profile uses.",
    )
    fetch = actions.add_parser(
        "fetch",
        parents=[common],
        help="download models",
        description="Download models into models.dir, resuming interrupted downloads and checking each file's size "
        "and SHA-256. Without names: the models the pi profile is configured to use. Files already there with the "
        "right hash are not downloaded again.",
    )
    fetch.add_argument("names", nargs="*", metavar="NAME", help="models to download (see `voicebot models list`)")
    fetch.add_argument(
        "--mirror",
        metavar="URL",
        help=f"download from this server instead, keeping each file's path (default: ${MIRROR_ENV})",
    )
    verify = actions.add_parser(
        "verify",
        parents=[common],
        help="re-hash the installed models",
        description="Re-hash the files in models.dir and report each one: ok, missing, wrong size or wrong hash. "
        "Without names: the pi profile's models and any other known model with a file installed.",
    )
    verify.add_argument("names", nargs="*", metavar="NAME", help="models to check (see `voicebot models list`)")


async def models_command(args: argparse.Namespace, config: Config) -> int:
    """Run `voicebot models ...` in a worker thread; on cancellation stop the download and keep its .part."""
    stop = threading.Event()
    worker = asyncio.ensure_future(asyncio.to_thread(run_models_command, args, config, stop))
    try:
        return await asyncio.shield(worker)
    except asyncio.CancelledError:
        stop.set()
        done, _ = await asyncio.wait({worker}, timeout=STOP_WAIT_S)
        if done and (error := worker.exception()) is not None:
            log.warning("%s", error)
        raise


def run_models_command(args: argparse.Namespace, config: Config, stop: threading.Event | None = None) -> int:
    """`voicebot models list|fetch|verify`; returns the exit code."""
    # httpx logs every request at INFO; the progress bar and the summary lines already say what happens.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    models_dir = Path(config.models.dir).expanduser()
    if args.models_action == "list":
        print(format_model_list(models_dir, configured_entries(config)))
        return 0
    if args.models_action == "fetch":
        return _fetch_command(args, config, models_dir, stop)
    return _verify_command(args, config, models_dir)


def configured_entries(config: Config) -> list[ModelEntry]:
    """The registry models the pi profile is configured to use (models.* names in models.dir, else the defaults)."""
    entries = []
    for key, default in PI_PROFILE.items():
        chosen = getattr(config.models, key)
        entry = entry_at(chosen) if chosen else REGISTRY[default]
        if entry is None:
            log.info("models.%s is %s, which is not a model voicebot fetches", key, chosen)
        elif entry not in entries:
            entries.append(entry)
    return entries


def lookup(names: Iterable[str]) -> list[ModelEntry]:
    """Registry entries by name, or one line naming the unknown ones and the known ones."""
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise UnknownModelError(
            f"unknown model {', '.join(unknown)}; known models: {', '.join(REGISTRY)} (see `voicebot models list`)"
        )
    return [REGISTRY[name] for name in dict.fromkeys(names)]


def format_model_list(models_dir: Path, defaults: list[ModelEntry]) -> str:
    """The registry as a table, with what is installed in models_dir."""
    rows = [("", "NAME", "KIND", "SIZE", "INSTALLED", "LICENCE", "WHAT FOR")]
    for entry in MODELS:
        rows.append(
            (
                "*" if entry in defaults else "",
                entry.name,
                entry.kind,
                _human_size(entry.size_bytes),
                _installed(entry, models_dir),
                entry.licence,
                entry.description,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    lines = [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]) for row in rows
    ]
    lines.append(f"models.dir: {models_dir}")
    return "\n".join(line.rstrip() for line in lines)


def _installed(entry: ModelEntry, models_dir: Path) -> str:
    present = [
        file
        for file in entry.files
        if (models_dir / file.path).is_file()
        and (file.size_bytes is None or (models_dir / file.path).stat().st_size == file.size_bytes)
    ]
    if len(present) == len(entry.files):
        return "yes"
    return "partly" if present else "no"


def _human_size(size_bytes: int | None) -> str:
    if size_bytes is None:
        return "?"
    return f"{size_bytes / 1e6:.0f} MB" if size_bytes >= 1e6 else f"{size_bytes / 1e3:.0f} kB"


def _fetch_command(args: argparse.Namespace, config: Config, models_dir: Path, stop: threading.Event | None) -> int:
    entries = lookup(args.names) if args.names else configured_entries(config)
    for entry in entries:
        refuse_unverifiable(entry, models_dir)
    progress = sys.stderr.isatty()
    with new_client() as client:
        for entry in entries:
            downloaded = fetch_model(entry, models_dir, mirror=args.mirror, client=client, progress=progress, stop=stop)
            state = f"downloaded {len(downloaded)} file(s), checked" if downloaded else "already installed, checked"
            print(f"{entry.name}: {state} ({models_dir / entry.location})")
    return 0


def _verify_command(args: argparse.Namespace, config: Config, models_dir: Path) -> int:
    if args.names:
        entries = lookup(args.names)
    else:
        entries = configured_entries(config)
        entries += [
            entry
            for entry in MODELS
            if entry not in entries and any((models_dir / file.path).is_file() for file in entry.files)
        ]
    checks = [check for entry in entries for check in verify_model(entry, models_dir)]
    for check in checks:
        detail = f" ({check.detail})" if check.detail else ""
        print(f"{check.state.value:<12} {check.model}: {check.path}{detail}")
    states = {check.state for check in checks}
    if states & {FileState.WRONG_SIZE, FileState.WRONG_HASH, FileState.UNVERIFIABLE}:
        return EX_DATAERR
    if FileState.MISSING in states:
        print(f"get the missing files with: voicebot models fetch {' '.join(_missing_names(checks))}")
        return EX_NOINPUT
    return 0


def _missing_names(checks: list[FileCheck]) -> list[str]:
    return list(dict.fromkeys(check.model for check in checks if check.state is FileState.MISSING))
