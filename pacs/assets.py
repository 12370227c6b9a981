"""Third-party files the system needs at run time, from a package registry at install time.

Nothing of another project is copied into this repository. What the system needs of one (the
CJK font its labels embed; the web viewer's static build) is a pinned npm package: its tarball's URL
on the npm registry and the ``dist.integrity`` the registry publishes for it (a W3C Subresource
Integrity string, ``sha512-`` and the base64 SHA-512 of the tarball) are written here, and
``pacs assets install`` fetches each over HTTPS (no npm needed), checks the hash, and unpacks
only the files named (or one folder of the package, less what is left out) into ``[assets] dir``
(default ``DATA_DIR/assets``), one folder per asset and version::

    pacs assets install                       # from the registry
    pacs assets install --from noto.tgz       # a tarball brought by hand (checked the same way)
    pacs assets list                          # what is pinned, and whether it is installed

A tarball whose hash is not the pinned one is refused; nothing half-unpacked is ever used (the
files land in a temporary folder that is renamed into place). Two installs at once (test
workers) wait for each other on a lock file.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import fnmatch
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

REGISTRY = "https://registry.npmjs.org"
INTEGRITY_ALGORITHM = "sha512"  # what npm's dist.integrity uses (W3C SRI)
CHUNK = 1 << 20
TIMEOUT_SECONDS = 60.0
MARKER = ".integrity"  # in an asset's folder: the integrity of the tarball it came from


class AssetError(Exception):
    """An asset that cannot be installed; the message says why and what to do."""


@dataclass(frozen=True)
class Asset:
    """One pinned npm package and the files of it the system uses."""

    name: str  # the folder it is installed in
    package: str  # npm package name
    version: str
    integrity: str  # the registry's dist.integrity for this version
    files: Mapping[str, str]  # member of the tarball → file name in the asset's folder
    purpose: str
    tree: str = ""  # a folder of the tarball unpacked whole, its layout kept (``files``: those that must be there)
    leave_out: tuple[str, ...] = ()  # glob patterns, relative to ``tree``, of files not unpacked
    finish: Callable[[Path], None] | None = None  # run on the unpacked folder before it is put in place

    @property
    def tarball_url(self) -> str:
        """The registry's tarball URL (``{registry}/{package}/-/{unscoped name}-{version}.tgz``)."""
        return f"{REGISTRY}/{self.package}/-/{self.package.rsplit('/', 1)[-1]}-{self.version}.tgz"


NOTO_SANS_SC = Asset(
    name="noto-sans-sc",
    package="@expo-google-fonts/noto-sans-sc",
    version="0.4.3",
    integrity="sha512-9rAwdFTFHbO/u6Cs0gj2jZbW74TGIiaFNQnXYH2s5wA1bzVkwbaviL4t8YUV642eGYjg86eH6DkAEQmfNHDncQ==",
    files={"package/400Regular/NotoSansSC_400Regular.ttf": "NotoSansSC-Regular.ttf",
           "package/LICENSE_FONT": "OFL.txt"},
    purpose="Noto Sans SC (SIL Open Font License 1.1): the Hanzi of patient labels and slips, "
            "embedded as a subset in each PDF",
)
FONT_FILE = "NotoSansSC-Regular.ttf"


def _prepare_viewer(place: Path) -> None:
    from pacs.web.viewer import prepare_build

    prepare_build(place)


OHIF_VIEWER = Asset(
    name="ohif-viewer",
    package="@ohif/app",
    version="3.13.2",
    integrity="sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==",
    files={"package/dist/index.html": "index.html", "package/LICENSE": "LICENSE"},
    tree="package/dist/",
    # What the configuration never loads: the ONNX runtime (AI segmentation, 136 MB), the
    # microscopy viewer (20 MB), source maps, the build's own sample configuration, its service
    # worker and the hosting files of its demo site.
    leave_out=("ort/*", "dicom-microscopy-viewer/*", "*.map", "app-config.js", "sw.js", "_headers", "_redirects",
               "serve.json"),
    finish=_prepare_viewer,
    purpose="OHIF Viewer (MIT): the diagnostic viewer at /viewer, its released static build, relocated "
            "under /viewer/static/ and precompressed at install",
)

ASSETS: tuple[Asset, ...] = (NOTO_SANS_SC, OHIF_VIEWER)


def integrity_of(data: bytes | IO[bytes]) -> str:
    """The SRI string (``sha512-…``) of ``data``, bytes or a file read to its end."""
    digest = hashlib.new(INTEGRITY_ALGORITHM)
    if isinstance(data, bytes):
        digest.update(data)
    else:
        for chunk in iter(lambda: data.read(CHUNK), b""):
            digest.update(chunk)
    return f"{INTEGRITY_ALGORITHM}-{base64.b64encode(digest.digest()).decode()}"


def folder(root: Path, asset: Asset) -> Path:
    return Path(root) / asset.name / asset.version


def installed(root: Path, asset: Asset) -> bool:
    """Whether every file of ``asset`` is in place, unpacked from the pinned tarball."""
    place = folder(root, asset)
    try:
        marker = (place / MARKER).read_text().strip()
    except OSError:
        return False
    return marker == asset.integrity and all((place / name).is_file() for name in asset.files.values())


def file_path(root: Path, asset: Asset, name: str) -> Path | None:
    """Where an installed asset's file is, or None when the asset is not installed."""
    return folder(root, asset) / name if installed(root, asset) else None


def viewer_path(root: Path) -> Path | None:
    """The viewer's static build, or None: ``pacs assets install`` puts it there."""
    return folder(root, OHIF_VIEWER) if installed(root, OHIF_VIEWER) else None


def font_path(root: Path) -> Path | None:
    """The CJK font labels embed, or None: ``pacs assets install`` puts it there."""
    return file_path(root, NOTO_SANS_SC, FONT_FILE)


Fetch = Callable[[str, IO[bytes]], None]


def fetch_https(url: str, out: IO[bytes]) -> None:
    """Write what ``url`` answers into ``out`` (HTTPS only, redirects followed)."""
    import httpx

    if not url.startswith("https://"):
        raise AssetError(f"{url}: assets are fetched over HTTPS only")
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=TIMEOUT_SECONDS) as response:
            if response.status_code != 200:
                raise AssetError(f"{url} answered {response.status_code}")
            for chunk in response.iter_bytes(CHUNK):
                out.write(chunk)
    except httpx.HTTPError as exc:
        raise AssetError(f"cannot fetch {url}: {exc}; on a machine without the registry, bring the "
                         "tarball and run `pacs assets install --from FILE.tgz`") from None


def _unpack_tree(asset: Asset, archive: tarfile.TarFile, staging: Path) -> None:
    """Every regular file under ``asset.tree`` but those left out, at its path below the tree,
    and the named files outside it; a member whose path would leave the folder is refused."""
    for info in archive:
        if info.name in asset.files and not info.name.startswith(asset.tree):
            relative = asset.files[info.name]
        elif info.name.startswith(asset.tree) and not info.isdir():
            relative = info.name[len(asset.tree):]
            if any(fnmatch.fnmatchcase(relative, pattern) for pattern in asset.leave_out):
                continue
        else:
            continue
        parts = relative.split("/")
        if not info.isfile() or relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise AssetError(f"{info.name} in {asset.package}@{asset.version} is not a plain file inside the package")
        target = staging.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_member(asset, archive, info, target)
    for member, name in asset.files.items():
        if not (staging / name).is_file():
            raise AssetError(f"{asset.package}@{asset.version} has no {member}")


def _unpack_files(asset: Asset, archive: tarfile.TarFile, staging: Path) -> None:
    """The named files of the tarball, each under its name in the asset's folder."""
    for member, name in asset.files.items():
        try:
            info = archive.getmember(member)
        except KeyError:
            raise AssetError(f"{asset.package}@{asset.version} has no {member}") from None
        _copy_member(asset, archive, info, staging / name)


def _copy_member(asset: Asset, archive: tarfile.TarFile, info: tarfile.TarInfo, target: Path) -> None:
    source = archive.extractfile(info) if info.isfile() else None
    if source is None:
        raise AssetError(f"{info.name} in {asset.package}@{asset.version} is not a file")
    with source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK)


def _unpack(asset: Asset, tarball: IO[bytes], root: Path) -> None:
    """The named files of ``tarball`` (or its tree) into the asset's folder, renamed into place whole."""
    place = folder(root, asset)
    place.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{asset.version}-", dir=place.parent))
    try:
        with tarfile.open(fileobj=tarball, mode="r:gz") as archive:
            if asset.tree:
                _unpack_tree(asset, archive, staging)
            else:
                _unpack_files(asset, archive, staging)
        if asset.finish is not None:
            asset.finish(staging)
        (staging / MARKER).write_text(asset.integrity + "\n")
        os.chmod(staging, 0o755)  # mkdtemp makes it the installer's alone; the server may run as another user
        if place.exists():
            shutil.rmtree(place)
        os.replace(staging, place)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class _Lock:
    """An exclusive lock on ``root/.lock`` while installing (two installs at once wait)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.handle = open(root / ".lock", "w")  # noqa: SIM115 - closed in __exit__

    def __enter__(self) -> Self:
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def install(root: Path, assets: Iterable[Asset] = ASSETS, *, source: Path | None = None,
            fetch: Fetch = fetch_https, say: Callable[[str], None] = lambda line: None) -> list[Asset]:
    """Install each of ``assets`` not installed yet into ``root``; returns those installed now.

    With ``source``, a tarball on disk: it must be one of ``assets`` (its hash says which).
    Raises :class:`AssetError` for a tarball whose hash is not the pinned one.
    """
    root = Path(root)
    assets = tuple(assets)
    done: list[Asset] = []
    with _Lock(root):
        if source is not None:
            with open(source, "rb") as handle:
                found = integrity_of(handle)
            asset = next((a for a in assets if a.integrity == found), None)
            if asset is None:
                pinned = "; ".join(f"{a.package}@{a.version} {a.integrity}" for a in assets)
                raise AssetError(f"{source} is none of the pinned assets: its {found[:40]}… matches none of {pinned}")
            with open(source, "rb") as handle:
                _unpack(asset, handle, root)
            say(f"{asset.name}: {asset.package}@{asset.version} from {source} into {folder(root, asset)}")
            return [asset]
        for asset in assets:
            if installed(root, asset):
                say(f"{asset.name}: {asset.package}@{asset.version} already in {folder(root, asset)}")
                continue
            say(f"{asset.name}: fetching {asset.tarball_url}")
            with tempfile.TemporaryFile(dir=root) as spool:
                fetch(asset.tarball_url, spool)
                spool.seek(0)
                found = integrity_of(spool)
                if found != asset.integrity:
                    raise AssetError(f"{asset.tarball_url} is not the pinned {asset.package}@{asset.version}: "
                                     f"its hash is {found}, the pinned one {asset.integrity}; nothing installed")
                spool.seek(0)
                _unpack(asset, spool, root)
            say(f"{asset.name}: {asset.package}@{asset.version} checked and unpacked into {folder(root, asset)}")
            done.append(asset)
    return done


# -- the command ------------------------------------------------------------------------------

def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    assets = sub.add_parser("assets", help="third-party files (fonts, the viewer) from a package registry, pinned")
    asub = assets.add_subparsers(dest="action", required=True)
    put = asub.add_parser("install", help="fetch, check and unpack every pinned asset not installed yet")
    common(put)
    put.add_argument("--from", dest="source", type=Path, help="a tarball brought by hand instead of the registry")
    put.add_argument("--dir", type=Path, help="where to install (default: [assets] dir, DATA_DIR/assets)")
    listing = asub.add_parser("list", help="the pinned assets and whether they are installed")
    common(listing)
    listing.add_argument("--dir", type=Path, help="where they are installed (default: [assets] dir)")


def run(args: argparse.Namespace, settings: Any) -> int:
    root = args.dir or settings.assets_dir
    if args.action == "list":
        for asset in ASSETS:
            state = "installed" if installed(root, asset) else "not installed"
            print(f"{asset.name:14} {asset.package}@{asset.version}  {state} ({folder(root, asset)})\n"
                  f"{'':14} {asset.purpose}")
        return 0
    try:
        install(root, source=args.source, say=print)
    except (AssetError, OSError, tarfile.TarError) as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 1
    return 0
