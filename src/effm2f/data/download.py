"""Downloads of the real datasets: resumable, verified, unpacked atomically, idempotent.

COCO 2017 comes from its official addresses (``images.cocodataset.org``); Cityscapes through
cityscapesScripts' downloader (``csDownload``) with credentials from the environment.

The guarantees, in order:
- a transfer goes to ``<name>.part`` and resumes with an HTTP Range request when interrupted;
- the finished file is checked against the manifest's size and checksum before it gets its final
  name; a wrong checksum moves it aside to ``<name>.corrupt`` (never used) and raises an error
  that names the file, the expected and the actual value;
- an archive is extracted into a temporary folder next to its destination and only then moved
  into place, with a stamp that makes a second run do nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import requests
from tqdm import tqdm

from effm2f.config import ConfigError
from effm2f.errors import InputError
from effm2f.io import write_json_atomic

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
COCO_BASE_URL = "http://images.cocodataset.org"
CITYSCAPES_URL = "https://www.cityscapes-dataset.com"
CITYSCAPES_CREDENTIAL_VARS = ("CITYSCAPES_USERNAME", "CITYSCAPES_PASSWORD")
CITYSCAPES_PACKAGES = ("gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip")


class DownloadError(InputError, RuntimeError):
    """A transfer failed (HTTP error, broken connection, incomplete file, failed login)."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its manifest; the message names file, expected, actual."""


class MissingCredentialsError(DownloadError):
    """The environment variables that hold the Cityscapes credentials are not set."""


@dataclasses.dataclass(frozen=True)
class Archive:
    """One downloadable file of a manifest.

    Attributes:
        name: file name under the archives folder.
        url: where it is served.
        size: exact size in bytes, or None where it is not known with certainty.
        md5, sha256: hex digests; at least one, unless ``unverified_reason`` says why there is none
            (the download then warns that only the size is checked).
        nested: zips inside the archive (paths relative to its root) to unpack in turn at the
            destination root; they are removed once unpacked.
    """

    name: str
    url: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    unverified_reason: str | None = None
    nested: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (self.md5 or self.sha256 or self.unverified_reason):
            raise ValueError(
                f"archive {self.name}: no md5/sha256; set unverified_reason to accept that"
            )


# Sizes and MD5s of the official archives (MD5s as published by several independent download
# scripts; sizes as served). The panoptic archive's exact size is not recorded: its MD5 covers it.
COCO_ARCHIVES: dict[str, Archive] = {
    "annotations": Archive(
        name="annotations_trainval2017.zip",
        url=f"{COCO_BASE_URL}/annotations/annotations_trainval2017.zip",
        size=252907541,
        md5="f4bbac642086de4f52a3fdda2de5fa2c",
    ),
    "panoptic": Archive(
        name="panoptic_annotations_trainval2017.zip",
        url=f"{COCO_BASE_URL}/annotations/panoptic_annotations_trainval2017.zip",
        md5="4170db65fc022c9c296af880dbca6055",
        nested=("annotations/panoptic_train2017.zip", "annotations/panoptic_val2017.zip"),
    ),
    "val_images": Archive(
        name="val2017.zip",
        url=f"{COCO_BASE_URL}/zips/val2017.zip",
        size=815585330,
        md5="442b8da7639aecaf257c1dceb8ba8c80",
    ),
    "train_images": Archive(
        name="train2017.zip",
        url=f"{COCO_BASE_URL}/zips/train2017.zip",
        size=19336861798,
        md5="cced6f7f71b7629ddf16f17bbcfab6b2",
    ),
}


def file_digests(path: Path, algorithms: Iterable[str]) -> dict[str, str]:
    """Hex digests of ``path`` for each hashlib algorithm name, in one streaming pass."""
    hashes = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            for h in hashes.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashes.items()}


def _expected_digests(md5: str | None, sha256: str | None) -> dict[str, str]:
    return {k: v.lower() for k, v in (("md5", md5), ("sha256", sha256)) if v}


def move_aside(path: Path) -> Path:
    """Rename a bad file to ``<name>.corrupt`` (replacing an older one) so it is never used."""
    corrupt = path.with_name(path.name.removesuffix(".part") + ".corrupt")
    os.replace(path, corrupt)
    return corrupt


def verify_file(
    path: Path, *, name: str, size: int | None, md5: str | None, sha256: str | None
) -> None:
    """Check ``path`` against the expected size and digests.

    Raises:
        ChecksumError: naming ``name``, the expected and the actual value, after moving the file
            aside to ``<name>.corrupt``.
    """
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        corrupt = move_aside(path)
        raise ChecksumError(
            f"size mismatch for {name}: expected {size} bytes, got {actual_size}; "
            f"moved aside to {corrupt}"
        )
    expected = _expected_digests(md5, sha256)
    if not expected:
        return
    actual = file_digests(path, expected)
    for algorithm, value in expected.items():
        if actual[algorithm] != value:
            corrupt = move_aside(path)
            raise ChecksumError(
                f"{algorithm} mismatch for {name}: expected {value}, got {actual[algorithm]}; "
                f"moved aside to {corrupt}"
            )


def _open_transfer(
    session: requests.Session, url: str, offset: int, timeout: float
) -> requests.Response:
    """GET ``url`` from byte ``offset`` (a Range request when ``offset`` > 0)."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = session.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.RequestException as error:
        raise DownloadError(f"cannot download {url}: {error}") from error
    return response


def _resume_offset(response: requests.Response, offset: int) -> int:
    """The byte offset at which the response body starts (0 when the server ignored Range)."""
    if response.status_code == 206:
        content_range = response.headers.get("Content-Range", "")
        start = content_range.removeprefix("bytes ").split("-", 1)[0]
        if start.isdigit() and int(start) == offset:
            return offset
        raise DownloadError(f"{response.url}: unexpected Content-Range {content_range!r}")
    if response.status_code == 200:
        return 0
    raise DownloadError(f"cannot download {response.url}: HTTP {response.status_code}")


def _write_body(
    response: requests.Response, part: Path, offset: int, *, total: int | None, progress: bool,
    chunk_size: int = CHUNK_SIZE,
) -> None:
    """Stream the body into ``part`` (appending from ``offset``) with a progress bar."""
    if total is None and response.headers.get("Content-Length", "").isdigit():
        total = offset + int(response.headers["Content-Length"])
    bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
               desc=part.name.removesuffix(".part"), disable=not progress, leave=False)
    with bar, open(part, "r+b" if offset else "wb") as f:
        f.seek(offset)
        f.truncate()
        try:
            for chunk in response.iter_content(chunk_size=chunk_size):
                f.write(chunk)
                bar.update(len(chunk))
        except requests.RequestException as error:
            raise DownloadError(
                f"transfer of {response.url} broke after {f.tell()} bytes ({error}); "
                f"run again to resume from {part}"
            ) from error


def download_file(
    url: str,
    dest: str | Path,
    *,
    size: int | None = None,
    md5: str | None = None,
    sha256: str | None = None,
    session: requests.Session | None = None,
    timeout: float = 60.0,
    progress: bool = True,
    chunk_size: int = CHUNK_SIZE,
) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part``; verify; rename into place.

    A ``dest`` that already exists (with the expected size when one is given) is kept as it is:
    it only ever gets its name after verification, so a second run does nothing.

    Raises:
        DownloadError: HTTP error (404 ...), broken transfer (the .part stays for resuming).
        ChecksumError: size or digest mismatch (the file is moved aside to ``.corrupt``).
    """
    dest = Path(dest)
    if dest.is_file() and (size is None or dest.stat().st_size == size):
        log.info("%s already present", dest)
        return dest
    if not _expected_digests(md5, sha256):
        warnings.warn(f"no checksum recorded for {dest.name}: only its size is checked",
                      stacklevel=2)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    session = session or requests.Session()
    if not (size is not None and offset == size):
        with _open_transfer(session, url, offset, timeout) as response:
            if not (response.status_code == 416 and offset > 0):
                offset = _resume_offset(response, offset)
                _write_body(response, part, offset, total=size, progress=progress,
                            chunk_size=chunk_size)
    if size is not None and part.stat().st_size < size:
        raise DownloadError(
            f"incomplete download of {dest.name}: {part.stat().st_size} of {size} bytes; "
            f"run again to resume from {part}"
        )
    verify_file(part, name=dest.name, size=size, md5=md5, sha256=sha256)
    os.replace(part, dest)
    return dest


def fetch_archive(
    archive: Archive,
    archives_dir: str | Path,
    *,
    url: str | None = None,
    session: requests.Session | None = None,
    progress: bool = True,
) -> Path:
    """Download one manifest entry into ``archives_dir`` (``url`` overrides its address)."""
    if archive.unverified_reason and not (archive.md5 or archive.sha256):
        warnings.warn(f"{archive.name}: no checksum ({archive.unverified_reason})", stacklevel=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return download_file(
            url or archive.url, Path(archives_dir) / archive.name, size=archive.size,
            md5=archive.md5, sha256=archive.sha256, session=session, progress=progress,
        )


def _safe_members(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    """The archive's members, refusing absolute paths and ``..`` (extraction outside the root)."""
    members = zf.infolist()
    for info in members:
        parts = Path(info.filename).parts
        if info.filename.startswith("/") or ".." in parts:
            raise DownloadError(f"{archive}: unsafe member path {info.filename!r}")
    return members


def _extract(archive: Path, into: Path, *, progress: bool) -> None:
    """Extract every member of ``archive`` under ``into`` (CRCs are checked while reading)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in tqdm(_safe_members(zf, archive), desc=f"unpack {archive.name}",
                             unit="file", disable=not progress, leave=False):
                zf.extract(info, into)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as error:
        raise DownloadError(f"cannot unpack {archive}: {error}") from error


def _merge_move(src: Path, dst: Path) -> None:
    """Move the tree ``src`` into ``dst``: whole folders by one rename where ``dst`` lacks them."""
    dst.mkdir(parents=True, exist_ok=True)
    for child in sorted(src.iterdir()):
        target = dst / child.name
        if child.is_dir() and target.is_dir():
            _merge_move(child, target)
        elif target.is_dir():
            raise DownloadError(f"cannot unpack {child.name}: {target} is a folder")
        else:
            os.replace(child, target)


def unpack_stamp(archive: Path, dest_dir: Path) -> Path:
    """The file that records that ``archive`` was fully unpacked into ``dest_dir``."""
    return dest_dir / f".{archive.name}.unpacked"


def unpack_zip(
    archive: str | Path, dest_dir: str | Path, *, nested: Iterable[str] = (), progress: bool = True
) -> bool:
    """Unpack ``archive`` into ``dest_dir`` atomically; returns False when it already was.

    Everything is extracted into a temporary folder inside ``dest_dir`` first (including the
    ``nested`` zips, which are then removed); only a complete extraction is moved into place and
    stamped. A corrupt archive leaves ``dest_dir`` as it was.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    stamp = unpack_stamp(archive, dest_dir)
    if stamp.is_file():
        return False
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".unpack-{archive.stem}-", dir=dest_dir))
    try:
        _extract(archive, tmp, progress=progress)
        for inner in nested:
            inner_path = tmp / inner
            if not inner_path.is_file():
                raise DownloadError(f"{archive}: expected nested archive {inner} is missing")
            _extract(inner_path, tmp, progress=progress)
            inner_path.unlink()
        _merge_move(tmp, dest_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json_atomic(stamp, {"archive": archive.name, "size": archive.stat().st_size})
    return True


def download_coco(
    root: str | Path,
    archives_dir: str | Path,
    *,
    parts: Iterable[str] = ("annotations", "panoptic", "val_images", "train_images"),
    archives: Mapping[str, Archive] = COCO_ARCHIVES,
    base_url: str | None = None,
    session: requests.Session | None = None,
    progress: bool = True,
) -> None:
    """Download and unpack COCO 2017 into ``root`` (detectron2's ``coco/`` layout).

    Args:
        root: the dataset folder (gets train2017/, val2017/, annotations/, panoptic_*2017/).
        archives_dir: where the zips are kept (outside what DVC versions).
        parts: keys of ``archives`` to fetch.
        base_url: a mirror that serves the same paths as ``images.cocodataset.org``.
    """
    unknown = sorted(set(parts) - set(archives))
    if unknown:
        raise ConfigError(
            f"unknown COCO archive {unknown[0]!r} (known: {', '.join(archives)})")
    for key in parts:
        archive = archives[key]
        url = archive.url
        if base_url:
            url = base_url.rstrip("/") + url.removeprefix(COCO_BASE_URL)
        path = fetch_archive(archive, archives_dir, url=url, session=session, progress=progress)
        unpack_zip(path, root, nested=archive.nested, progress=progress)


def cityscapes_credentials(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(username, password) from CITYSCAPES_USERNAME / CITYSCAPES_PASSWORD.

    Raises:
        MissingCredentialsError: naming the variables that are not set.
    """
    env = os.environ if env is None else env
    missing = [name for name in CITYSCAPES_CREDENTIAL_VARS if not env.get(name)]
    if missing:
        raise MissingCredentialsError(
            f"Cityscapes download needs the environment variables {' and '.join(missing)} "
            f"(your cityscapes-dataset.com account; register at {CITYSCAPES_URL}/register/)"
        )
    return env[CITYSCAPES_CREDENTIAL_VARS[0]], env[CITYSCAPES_CREDENTIAL_VARS[1]]


def cityscapes_session(
    username: str, password: str, *, session: requests.Session | None = None
) -> requests.Session:
    """A session logged in to cityscapes-dataset.com (what csDownload's ``login`` does, without
    its prompt and its unencrypted credentials file).

    Raises:
        DownloadError: when the site does not accept the credentials.
    """
    session = session or requests.Session()
    form = {"username": username, "password": password, "submit": "Login"}
    try:
        response = session.post(f"{CITYSCAPES_URL}/login", data=form, allow_redirects=False)
        response.raise_for_status()
    except requests.RequestException as error:
        raise DownloadError(f"Cityscapes login failed: {error}") from error
    if response.status_code != 302:
        raise DownloadError(
            f"Cityscapes login refused for user {username!r}: check "
            f"{' and '.join(CITYSCAPES_CREDENTIAL_VARS)}"
        )
    return session


def _cityscapes_md5(session: requests.Session, package: str) -> str:
    """The MD5 the Cityscapes site publishes for ``package``."""
    from cityscapesscripts.download import downloader

    ids = {p["name"]: p["packageID"] for p in downloader.get_available_packages(session=session)}
    response = session.get(f"{CITYSCAPES_URL}/md5-sum/?packageID={ids[package]}",
                           allow_redirects=False)
    response.raise_for_status()
    return response.text.split()[0].lower()


def _cs_download(session: requests.Session, package: str, partial_dir: Path) -> None:
    """Run csDownload's transfer (resumable, MD5-checked) for one package into ``partial_dir``.

    csDownload signals every failure with a bare Exception, so a failure is re-checked here: a
    complete file with the wrong MD5 becomes a ChecksumError (file moved aside), anything else
    a DownloadError (the partial file stays for resuming).
    """
    from cityscapesscripts.download import downloader

    partial = partial_dir / package
    try:
        downloader.download_packages(session=session, package_names=[package],
                                     destination_path=str(partial_dir), resume=True)
    except Exception as error:  # noqa: BLE001 - csDownload raises bare Exception
        if partial.is_file():
            expected = _cityscapes_md5(session, package)
            actual = file_digests(partial, ["md5"])["md5"]
            if actual != expected:
                corrupt = move_aside(partial)
                raise ChecksumError(
                    f"md5 mismatch for {package}: expected {expected}, got {actual}; "
                    f"moved aside to {corrupt}"
                ) from error
        raise DownloadError(f"Cityscapes download of {package} failed: {error}") from error


def download_cityscapes(
    root: str | Path,
    archives_dir: str | Path,
    *,
    packages: Iterable[str] = CITYSCAPES_PACKAGES,
    env: Mapping[str, str] | None = None,
    session: requests.Session | None = None,
    progress: bool = True,
) -> None:
    """Download Cityscapes packages with csDownload and unpack them into ``root``.

    Credentials are read from the environment only when something is left to download, so a
    second run does nothing (and needs none). ``session`` replaces the login (tests, proxies).
    """
    archives_dir, root = Path(archives_dir), Path(root)
    packages = list(packages)
    missing = [p for p in packages if not (archives_dir / p).is_file()]
    if missing and session is None:
        session = cityscapes_session(*cityscapes_credentials(env))
    partial_dir = archives_dir / ".partial"
    partial_dir.mkdir(parents=True, exist_ok=True)
    for package in missing:
        _cs_download(session, package, partial_dir)
        os.replace(partial_dir / package, archives_dir / package)
    for package in packages:
        unpack_zip(archives_dir / package, root, progress=progress)
