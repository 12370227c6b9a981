"""A released single-page build relocated under a path of the server, and the viewer's asset
unpacked as a tree: on small builds made here (the real one is tested in test_viewer.py)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from pacs import assets
from pacs.web.static_build import RelocationError, accepted_encodings, cache_control, relocate, safe_relative

RUNTIME = '__webpack_require__.p = "/";'


def test_the_client_accepts_brotli_first_when_it_accepts_both_equally():
    assert accepted_encodings("gzip, deflate, br") == ["br", "gzip", "deflate"]
    assert accepted_encodings("gzip;q=1.0, br;q=0.5") == ["gzip", "br"]
    assert accepted_encodings("br;q=0, *") == ["gzip"]
    assert accepted_encodings(None) == []


def test_hashed_names_are_immutable_and_the_rest_revalidated():
    assert cache_control("app.bundle.0f6159c501addfe9.js") == "public, max-age=31536000, immutable"
    assert cache_control("5130ccb17e3f3f5b.wasm") == "public, max-age=31536000, immutable"
    assert cache_control("app-config.js") == "no-cache"
    assert [safe_relative(p) for p in ("/a/b.js", "/../x", "/.integrity", "/a\\b", "/")] == ["a/b.js", None, None,
                                                                                            None, None]


def test_a_build_for_the_root_moves_under_a_prefix(tmp_path: Path):
    (tmp_path / "index.html").write_text('<script>window.PUBLIC_URL="/"</script><script src="/app.js"></script>'
                                         '<link href="/app.css"><a href="//cdn.example/x">', encoding="utf-8")
    (tmp_path / "app.js").write_text(f"{RUNTIME} load('x')", encoding="utf-8")
    (tmp_path / "app.css").write_text("a{background:url(/img.png)} b{background:url('//cdn/x.png')}",
                                      encoding="utf-8")
    assert relocate(tmp_path, "/viewer/static/", runtime_marker=RUNTIME) == 1
    html = (tmp_path / "index.html").read_text()
    assert 'window.PUBLIC_URL="/viewer/static/"' in html and 'src="/viewer/static/app.js"' in html
    assert 'href="//cdn.example/x"' in html  # another host's URL is left alone
    assert (tmp_path / "app.js").read_text().startswith('__webpack_require__.p = "/viewer/static/";')
    assert (tmp_path / "app.css").read_text() == "a{background:url(/viewer/static/img.png)} " \
                                                 "b{background:url('//cdn/x.png')}"
    (tmp_path / "app.js").write_text("no runtime here")
    with pytest.raises(RelocationError):
        relocate(tmp_path, "/viewer/static/", runtime_marker=RUNTIME)


def tarball(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def tree_asset(data: bytes) -> assets.Asset:
    return assets.Asset(name="build", package="@example/app", version="1.0.0", integrity=assets.integrity_of(data),
                        files={"package/dist/index.html": "index.html", "package/LICENSE": "LICENSE"},
                        tree="package/dist/", leave_out=("ort/*", "*.map"), purpose="a test")


def test_a_tree_is_unpacked_less_what_is_left_out(tmp_path: Path):
    data = tarball({"package/dist/index.html": b"<html>", "package/dist/js/app.js": b"x",
                    "package/dist/app.js.map": b"m", "package/dist/ort/ort.wasm": b"w",
                    "package/LICENSE": b"MIT", "package/README.md": b"r"})
    source = tmp_path / "app.tgz"
    source.write_bytes(data)
    asset = tree_asset(data)
    assets.install(tmp_path / "cache", [asset], source=source)
    place = assets.folder(tmp_path / "cache", asset)
    assert assets.installed(tmp_path / "cache", asset)
    assert sorted(str(p.relative_to(place)) for p in place.rglob("*") if p.is_file()) == [
        ".integrity", "LICENSE", "index.html", "js/app.js"]


def test_a_member_that_would_leave_the_folder_is_refused(tmp_path: Path):
    data = tarball({"package/dist/index.html": b"<html>", "package/dist/../../../evil.sh": b"x",
                    "package/LICENSE": b"MIT"})
    source = tmp_path / "app.tgz"
    source.write_bytes(data)
    asset = tree_asset(data)
    with pytest.raises(assets.AssetError, match="not a plain file inside the package"):
        assets.install(tmp_path / "cache", [asset], source=source)
    assert not assets.installed(tmp_path / "cache", asset)
    assert not (tmp_path / "evil.sh").exists() and not list((tmp_path / "cache").glob("*/*/evil.sh"))
