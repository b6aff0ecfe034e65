"""Content-addressed artifact bytes: digests, dedupe, atomic writes, corruption detection."""
from __future__ import annotations

import os

import pytest

from bitsmith.platform.artifacts import copy_out, materialize, object_uri, put_object
from bitsmith.platform.digests import digest_path
from bitsmith.platform.errors import ArtifactError, UnstorableError


def _make_dir(path, files):
    path.mkdir(parents=True)
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    return path


def test_directory_digest_depends_on_names_and_contents_not_order(tmp_path) -> None:
    a = _make_dir(tmp_path / "a", {"x.txt": "1", "sub/y.txt": "2"})
    b = _make_dir(tmp_path / "b", {"sub/y.txt": "2", "x.txt": "1"})
    c = _make_dir(tmp_path / "c", {"x.txt": "1", "sub/z.txt": "2"})
    assert digest_path(a) == digest_path(b) != digest_path(c)


def test_put_is_deduplicated_and_leaves_no_temp_files(tmp_path) -> None:
    root = str(tmp_path / "root")
    src = _make_dir(tmp_path / "m", {"w.bin": "weights", "config.json": "{}"})
    first, second = put_object(root, src), put_object(root, src)
    assert first == second and first.is_dir
    assert first.uri == object_uri(root, first.digest)
    assert list((tmp_path / "root" / "tmp").iterdir()) == []
    assert materialize(root, first.digest, tmp_path / "cache").is_dir()


def test_corruption_is_detected_on_read(tmp_path) -> None:
    root = str(tmp_path / "root")
    src = tmp_path / "f.txt"
    src.write_text("hello")
    obj = put_object(root, src)
    stored = materialize(root, obj.digest, tmp_path / "cache")
    os.chmod(stored, 0o644)
    stored.write_text("hellp")
    with pytest.raises(ArtifactError, match="corrupted"):
        materialize(root, obj.digest, tmp_path / "cache")


def test_digests_from_users_cannot_escape_the_root(tmp_path) -> None:
    with pytest.raises(ArtifactError, match="not a sha256"):
        materialize(str(tmp_path), "../../etc/passwd", tmp_path)


def test_symlinks_are_refused(tmp_path) -> None:
    src = _make_dir(tmp_path / "m", {"a.txt": "a"})
    (src / "link").symlink_to("/etc/hostname")
    with pytest.raises(UnstorableError, match="symlinks"):
        put_object(str(tmp_path / "root"), src)


def test_copy_out_never_overwrites(tmp_path) -> None:
    src = tmp_path / "f.txt"
    src.write_text("x")
    dest = copy_out(src, tmp_path / "out.txt")
    assert dest.read_text() == "x"
    with pytest.raises(ArtifactError, match="already exists"):
        copy_out(src, dest)


def test_fsspec_memory_root_round_trips(tmp_path) -> None:
    root = "memory://bitsmith-test-root"
    src = _make_dir(tmp_path / "d", {"a.txt": "alpha", "b/c.txt": "gamma"})
    obj = put_object(root, src)
    local = materialize(root, obj.digest, tmp_path / "cache")
    assert digest_path(local) == obj.digest
