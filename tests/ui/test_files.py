"""Artifact downloads read registered objects only: no `..`, no absolute path, no symlink, nothing outside the root."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bitsmith.platform.ui.app import create_app
from bitsmith.platform.ui.auth import Access

SECRET = "secret outside the artifact root"


@pytest.fixture(scope="module")
def planted(ui_store, ui_db, tmp_path_factory):
    """A secret file outside the root and, inside a copy of the dataset object, symlinks pointing at it."""
    secret = tmp_path_factory.mktemp("outside") / "secret.txt"
    secret.write_text(SECRET)
    root = Path(ui_store.env["BITSMITH_ARTIFACT_ROOT"])
    objects = next(p for p in root.rglob(ui_store.dataset_digest) if p.is_dir())
    os.chmod(objects, 0o755)
    (objects / "link.txt").symlink_to(secret)
    (objects / "linkdir").symlink_to(secret.parent, target_is_directory=True)
    client = TestClient(create_app(ui_store.settings(), Access(), db=ui_db), base_url="http://127.0.0.1")
    yield client, secret, objects
    (objects / "link.txt").unlink()
    (objects / "linkdir").unlink()


@pytest.mark.parametrize("path", [
    "../../../../../../etc/passwd", "../" + "x" * 10, "train.jsonl/../../../secret.txt", "/etc/passwd",
    "\\etc\\passwd", "link.txt", "linkdir/secret.txt", "./../train.jsonl", "%2e%2e/%2e%2e/etc/passwd",
])
def test_a_crafted_path_never_reads_outside_the_artifact(planted, ui_store, path) -> None:
    client, secret, _ = planted
    res = client.get(f"/api/artifacts/{ui_store.dataset_digest}/download", params={"path": path})
    assert res.status_code in (403, 404) and SECRET.encode() not in res.content, (path, res.status_code)
    assert "error" in res.json()


def test_files_listing_skips_symlinks_and_the_real_file_downloads(planted, ui_store) -> None:
    client, _, _ = planted
    listed = {f["path"] for f in client.get(f"/api/artifacts/{ui_store.dataset_digest}/files").json()["files"]}
    assert "train.jsonl" in listed and "link.txt" not in listed and not any(p.startswith("linkdir") for p in listed)
    ok = client.get(f"/api/artifacts/{ui_store.dataset_digest}/download", params={"path": "train.jsonl"})
    assert ok.status_code == 200 and ok.headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize("digest", ["../../etc/passwd", "0" * 64, "ABC", "a" * 63 + "/"])
def test_a_bad_or_unknown_digest_is_refused(planted, digest) -> None:
    client, _, _ = planted
    res = client.get(f"/api/artifacts/{digest}/download")
    assert res.status_code in (400, 404) and SECRET.encode() not in res.content


def test_an_object_replaced_by_a_symlink_is_refused(ui_store, ui_db, tmp_path) -> None:
    from bitsmith.platform.ui.files import DownloadRefused, object_file

    root = Path(ui_store.env["BITSMITH_ARTIFACT_ROOT"])
    obj = next(p for p in root.rglob(ui_store.result_digest) if p.is_file())
    saved = tmp_path / "saved"
    shutil.copy2(obj, saved)
    os.chmod(obj.parent, 0o755)
    outside = tmp_path / "outside.txt"
    outside.write_text(SECRET)
    obj.unlink()
    obj.symlink_to(outside)
    try:
        with pytest.raises(DownloadRefused, match="symlink"):
            object_file(ui_db, str(root), ui_store.result_digest)
    finally:
        obj.unlink()
        shutil.copy2(saved, obj)
