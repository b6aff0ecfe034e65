"""Object integrity (issue 13, "Objects"): healing bad copies, durability, injective digests, fsspec roots,
leftovers of killed writes, path-independent dataset digests, FIFOs and odd names in imported folders.

Most tests drive the real CLI in subprocesses against an isolated home; fsspec tests use real fsspec
filesystems (`memory://` in-process with threads, `local://` on disk across processes).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bitsmith.platform import artifacts
from bitsmith.platform.artifacts import materialize, put_object, remote_digest, verify_object
from bitsmith.platform.config import Settings
from bitsmith.platform.digests import (DIGEST_V1, DIGEST_V2, DIR_HEADER, digest_path, directory_manifest,
                                       manifest_digest)
from bitsmith.platform.errors import ArtifactError, UnstorableError

ROOT = Path(__file__).resolve().parents[2]
WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


class CLI:
    """The real `bitsmith` CLI in a subprocess against an isolated home."""

    def __init__(self, home: Path, **env: str):
        self.home = home
        self.env = {**os.environ, "BITSMITH_HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0",
                    "BITSMITH_NO_PROGRESS": "1", "COLUMNS": "200", **env}
        for key in ("BITSMITH_DB_URL", "BITSMITH_ARTIFACT_ROOT"):
            if key not in env:
                self.env.pop(key, None)

    def __call__(self, *args: object, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "bitsmith.platform.cli.main", *map(str, args)], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"bitsmith {args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def submit(self, spec: Path, *extra: str) -> dict:
        return json.loads(self("submit", spec, "--executor", "local", "--wait", "--json", *extra).stdout)

    def spec(self, text: str) -> Path:
        path = self.home / "specs" / f"{hashlib.sha256(text.encode()).hexdigest()[:8]}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def object_path(self, digest: str) -> Path:
        return self.home / "artifacts" / "objects" / digest[:2] / digest


@pytest.fixture
def cli(tmp_path) -> CLI:
    return CLI(tmp_path / "home")


def _text_file(folder: Path, text: str = "alpha beta gamma\n\ndelta epsilon\n\nzeta eta theta\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text(text)
    return folder / "notes.txt"


def _import(cli: CLI, path: Path, *extra: str) -> str:
    return json.loads(cli("data", "import", path, "--kind", "text", "--json", *extra).stdout)["digest"]


def _corrupt(obj: Path, *, truncate: bool) -> None:
    """Flip or cut bytes of a stored object (made writable first: objects are read-only)."""
    target = obj
    if obj.is_dir():
        for dirpath, _, _ in os.walk(obj):
            os.chmod(dirpath, 0o755)
        target = sorted(p for p in obj.rglob("*.jsonl") if p.stat().st_size)[0]
    os.chmod(target, 0o644)
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2] if truncate else bytes([data[0] ^ 1]) + data[1:])


def _make_dir(path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    return path


# ---------------------------------------------------------------------------------------------- 1. healing

@pytest.mark.parametrize("truncate", [True, False], ids=["truncated", "flipped"])
def test_reimport_heals_a_bad_object(cli, tmp_path, truncate) -> None:
    src = _text_file(tmp_path / "src")
    digest = _import(cli, src)
    _corrupt(cli.object_path(digest), truncate=truncate)
    assert cli("artifacts", "show", digest[:12], "--verify", check=False).returncode == 1
    assert _import(cli, src) == digest
    verify_object(cli.object_path(digest), digest)
    assert "ok" in cli("db", "check").stdout


def test_no_cache_rerun_heals_and_a_cache_hit_over_bad_outputs_reruns(cli) -> None:
    spec = cli.spec("kind: noop\nname: heal\npayload: precious\n")
    first = cli.submit(spec)
    digest = first["outputs"]["result"]
    _corrupt(cli.object_path(digest), truncate=False)
    hit = cli.submit(spec)  # the original's output no longer verifies: run the job instead of reusing it
    assert not hit["cache_hit"] and hit["status"] == "succeeded" and hit["outputs"]["result"] == digest
    verify_object(cli.object_path(digest), digest)
    _corrupt(cli.object_path(digest), truncate=True)
    rerun = cli.submit(spec, "--no-cache")
    assert rerun["outputs"]["result"] == digest
    verify_object(cli.object_path(digest), digest)
    assert cli.submit(spec)["cache_hit"]  # intact again: cache hits resume


def test_db_check_reports_then_repair_drops_the_bad_copy(cli, tmp_path) -> None:
    src = _text_file(tmp_path / "src")
    digest = _import(cli, src)
    _corrupt(cli.object_path(digest), truncate=False)
    res = cli("db", "check", check=False)
    assert res.returncode == 1 and "corrupted" in res.stdout
    res = cli("db", "check", "--repair", check=False)
    assert res.returncode == 0 and "dropped the bad copy" in res.stdout and "1 repaired" in res.stdout
    assert not os.path.lexists(cli.object_path(digest))
    res = cli("db", "check", check=False)
    assert res.returncode == 1 and "bytes missing" in res.stdout
    assert _import(cli, src) == digest  # the next producer stores it afresh
    assert cli("db", "check").returncode == 0


def test_writer_checks_size_always_and_full_hash_when_cheap_or_suspect(tmp_path, monkeypatch) -> None:
    root = str(tmp_path / "root")
    src = tmp_path / "f.bin"
    src.write_bytes(b"0123456789" * 100)
    obj = put_object(root, src)
    stored = Path(root) / "objects" / obj.digest[:2] / obj.digest
    os.chmod(stored, 0o644)
    stored.write_bytes(b"x" + src.read_bytes()[1:])  # same size, wrong bytes
    monkeypatch.setattr(artifacts, "FULL_CHECK_BYTES", 10)  # too big to re-hash on every write
    put_object(root, src)
    assert stored.read_bytes()[:1] == b"x"  # size matched: not re-hashed
    with pytest.raises(ArtifactError, match="corrupted"):
        materialize(root, obj.digest, tmp_path / "cache")  # a reader finds it bad and marks it suspect
    put_object(root, src)
    assert stored.read_bytes() == src.read_bytes() and not (Path(root) / "suspect" / obj.digest).exists()
    os.chmod(stored, 0o644)
    stored.write_bytes(b"short")
    put_object(root, src)  # a wrong size is always caught
    assert stored.read_bytes() == src.read_bytes() and os.stat(stored).st_mode & WRITE_BITS == 0


# ---------------------------------------------------------------------------------------------- 2. durability

def test_files_and_folders_are_fsynced_before_the_rename_and_the_parent_after(tmp_path, monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def spy_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def spy_rename(a, b) -> None:
        events.append(("rename", str(b)))
        real_rename(a, b)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "rename", spy_rename)
    src = _make_dir(tmp_path / "m", {"a.txt": "a", "sub/b.txt": "b"})
    obj = put_object(str(tmp_path / "root"), src)
    final = tmp_path / "root" / "objects" / obj.digest[:2] / obj.digest
    renamed = events.index(("rename", str(final)))
    synced_before = [Path(p) for kind, p in events[:renamed] if kind == "fsync"]
    assert {"a.txt", "b.txt", "sub"} <= {p.name for p in synced_before}
    assert any(p.parent == tmp_path / "root" / "tmp" for p in synced_before), "the temp folder itself is fsynced"
    assert ("fsync", str(final.parent)) in events[renamed:]


def test_stored_and_cached_copies_have_no_write_bits(tmp_path) -> None:
    """Stored files are 0o444 and folders 0o555, locally and in a remote root's cache. (Root ignores
    permission bits, so this checks the bits; a write by root is caught by the digest on the next read.)"""
    src = _make_dir(tmp_path / "m", {"a.txt": "a", "sub/b.txt": "b"})
    for root in (str(tmp_path / "root"), "memory://bitsmith-objects-ro"):
        obj = put_object(root, src)
        path = materialize(root, obj.digest, tmp_path / "cache")
        entries = [path, *path.rglob("*")]
        assert {oct(stat.S_IMODE(os.lstat(p).st_mode)) for p in entries if p.is_dir()} == {"0o555"}
        assert {oct(stat.S_IMODE(os.lstat(p).st_mode)) for p in entries if p.is_file()} == {"0o444"}


def test_a_workers_input_path_has_no_write_bits(cli, tmp_path) -> None:
    digest = _import(cli, _text_file(tmp_path / "src"))
    spec = cli.spec(f"kind: noop\ninputs: {{data: {digest[:12]}}}\n")
    assert cli.submit(spec)["status"] == "succeeded"
    obj = cli.object_path(digest)
    assert all(os.lstat(p).st_mode & WRITE_BITS == 0 for p in [obj, *obj.rglob("*")])


# ---------------------------------------------------------------------------------------------- 3. digests

def test_a_tab_newline_name_no_longer_forges_another_directorys_digest(tmp_path) -> None:
    two = _make_dir(tmp_path / "two", {"a": "1", "b": "2"})
    h1 = hashlib.sha256(b"1").hexdigest()
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / f"a\t{h1}\t1\nb").write_text("2")
    v1 = [manifest_digest(directory_manifest(d, strict=False), DIGEST_V1) for d in (two, forged)]
    assert v1[0] == v1[1]  # the old encoding collides
    v2 = [manifest_digest(directory_manifest(d, strict=False), DIGEST_V2) for d in (two, forged)]
    assert v2[0] != v2[1]
    with pytest.raises(UnstorableError, match=r"a\\t.*control character"):
        put_object(str(tmp_path / "root"), forged)


def test_a_file_holding_a_manifest_no_longer_shares_a_directorys_digest(tmp_path) -> None:
    folder = _make_dir(tmp_path / "d", {"x.txt": "1", "sub/y.txt": "22"})
    entries = directory_manifest(folder)
    v1_manifest = tmp_path / "v1.txt"
    v1_manifest.write_bytes(b"".join(f"{r}\t{d}\t{s}\n".encode() for r, d, s in entries))
    assert digest_path(v1_manifest) == manifest_digest(entries, DIGEST_V1)  # the old collision
    assert digest_path(v1_manifest) != digest_path(folder)
    v2_bytes = tmp_path / "v2.bin"
    v2_bytes.write_bytes(DIR_HEADER + b"".join(struct.pack(">I", len(r)) + r.encode() + bytes.fromhex(d)
                                               + struct.pack(">Q", s) for r, d, s in entries))
    assert hashlib.sha256(v2_bytes.read_bytes()).hexdigest() == digest_path(folder)  # the encoding, as documented
    with pytest.raises(UnstorableError, match="reserved for directory digests"):
        put_object(str(tmp_path / "root"), v2_bytes)


def test_control_character_and_non_utf8_names_are_refused_naming_the_file(tmp_path) -> None:
    esc = _make_dir(tmp_path / "esc", {"ok.txt": "1", "bad\x1b[31m.txt": "2"})
    with pytest.raises(UnstorableError, match=r"bad\\x1b\[31m\.txt: file name contains a control character"):
        put_object(str(tmp_path / "root"), esc)
    raw = tmp_path / "raw"
    raw.mkdir()
    with open(os.fsencode(raw) + b"/caf\xe9.txt", "wb") as f:
        f.write(b"x")
    with pytest.raises(UnstorableError, match=r"caf\\udce9\.txt: file name is not valid UTF-8"):
        put_object(str(tmp_path / "root"), raw)


def test_an_old_v1_row_still_verifies_after_the_migration(tmp_path) -> None:
    from sqlalchemy import text

    from bitsmith.platform.integrity import check_store
    from bitsmith.platform.store import dispose_engines, get_artifact, open_database, upgrade_database
    from bitsmith.platform.store.engine import engine_for

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade_database(url, "0002")
    folder = _make_dir(tmp_path / "d", {"x.txt": "1", "sub/y.txt": "22"})
    v1 = manifest_digest(directory_manifest(folder), DIGEST_V1)
    stored = tmp_path / "root" / "objects" / v1[:2] / v1  # an object written by the old code
    stored.parent.mkdir(parents=True)
    os.rename(folder, stored)
    with engine_for(url).begin() as conn:
        conn.execute(text("INSERT INTO artifacts (digest, kind, name, uri, size_bytes, is_dir, metadata, created_at) "
                          "VALUES (:d, 'dataset', 'old', :u, 3, 1, '{}', '2026-01-01 00:00:00')"),
                     {"d": v1, "u": f"{tmp_path / 'root'}/objects/{v1[:2]}/{v1}"})
    dispose_engines(url)
    upgrade_database(url)
    db = open_database(url)
    assert get_artifact(db, v1).digest_version == DIGEST_V1
    settings = Settings(db_url=url, artifact_root=str(tmp_path / "root"), home=tmp_path / "home")
    assert check_store(db, settings).ok
    materialize(settings.artifact_root, v1, tmp_path / "cache", digest_version=DIGEST_V1)
    with pytest.raises(ArtifactError, match="corrupted"):
        verify_object(stored, v1, DIGEST_V2)
    dispose_engines(url)


# ---------------------------------------------------------------------------------------------- FIFOs, symlinks

@pytest.mark.parametrize("command", ["models", "data"])
def test_a_fifo_in_an_imported_folder_is_refused_without_hanging(cli, tmp_path, command) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    header = b'{"__metadata__":{}}'
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (folder / "notes.txt").write_text("some text\n")
    os.mkfifo(folder / "pipe.txt")
    args = ["models", "import", folder] if command == "models" else ["data", "import", folder, "--kind", "text"]
    res = cli(*args, check=False, timeout=60)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and "pipe.txt: is a FIFO" in res.stderr and "Traceback" not in res.stderr
    assert len([line for line in lines if "pipe.txt" in line]) == 1


def test_a_symlink_in_an_imported_folder_is_refused(cli, tmp_path) -> None:
    folder = tmp_path / "in"
    _text_file(folder)
    (folder / "secret.txt").symlink_to("/etc/hostname")
    res = cli("data", "import", folder, "--kind", "text", check=False)
    assert res.returncode == 2 and "secret.txt: symlinks cannot be stored" in res.stderr
    assert "Traceback" not in res.stderr
    (folder / "secret.txt").unlink()
    (folder / "elsewhere").symlink_to(tmp_path, target_is_directory=True)  # a folder link is refused too
    res = cli("data", "import", folder, "--kind", "text", check=False)
    assert res.returncode == 2 and "elsewhere: symlinks cannot be stored" in res.stderr


# ---------------------------------------------------------------------------------------------- 4. fsspec roots

def test_db_check_hashes_the_remote_copy_not_the_local_cache(tmp_path) -> None:
    root = f"local://{tmp_path / 'remote'}"
    cli = CLI(tmp_path / "home", BITSMITH_ARTIFACT_ROOT=root)
    digest = _import(cli, _text_file(tmp_path / "src"))
    cli("artifacts", "get", digest[:12], tmp_path / "copy")  # fills the local cache with a good copy
    assert (cli.home / "cache" / digest).is_dir()
    _corrupt(tmp_path / "remote" / "objects" / digest[:2] / digest, truncate=False)
    res = cli("artifacts", "show", digest[:12], "--verify", check=False)
    assert res.returncode == 1 and "corrupted" in res.stderr  # the remote bytes, not the good cached copy
    res = cli("db", "check", check=False)
    assert res.returncode == 1 and "corrupted" in res.stdout
    cli("db", "check", "--repair")
    assert not (tmp_path / "remote" / "objects" / digest[:2] / digest).exists()
    assert not (cli.home / "cache" / digest).exists()
    assert _import(cli, tmp_path / "src" / "notes.txt") == digest
    assert cli("db", "check").returncode == 0


def test_a_cached_copy_that_fails_verification_is_fetched_again(tmp_path) -> None:
    root = "memory://bitsmith-objects-refetch"
    obj = put_object(root, _make_dir(tmp_path / "d", {"a.txt": "alpha", "b/c.txt": "gamma"}))
    cached = materialize(root, obj.digest, tmp_path / "cache")
    os.chmod(cached, 0o755)
    os.chmod(cached / "a.txt", 0o644)
    (cached / "a.txt").write_text("tampered")
    again = materialize(root, obj.digest, tmp_path / "cache")
    assert (again / "a.txt").read_text() == "alpha"
    verify_object(again, obj.digest)


def test_a_corrupt_remote_copy_is_healed_by_the_next_writer(tmp_path) -> None:
    import fsspec

    root = "memory://bitsmith-objects-heal"
    src = _make_dir(tmp_path / "d", {"a.txt": "alpha", "b/c.txt": "gamma"})
    obj = put_object(root, src)
    fs, base = fsspec.core.url_to_fs(root)
    final = f"{base}/objects/{obj.digest[:2]}/{obj.digest}"
    fs.pipe_file(f"{final}/a.txt", b"alphX")
    fs.pipe_file(f"{final}/extra.txt", b"junk")
    with pytest.raises(ArtifactError, match="corrupted"):
        artifacts.verify_stored(root, obj.digest)
    put_object(root, src)
    assert remote_digest(fs, final) == [obj.digest]


def _put_many(root: str, src: Path, n: int) -> list:
    barrier = threading.Barrier(n)
    results: list = []

    def put() -> None:
        barrier.wait()
        try:
            results.append(put_object(root, src))
        except Exception as exc:  # recorded: the test asserts none happened
            results.append(exc)

    threads = [threading.Thread(target=put) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _slow_memory_root(name: str) -> str:
    """A root on fsspec's in-memory filesystem with latency on every file copy and upload (wider races)."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class Slow(MemoryFileSystem):
        protocol = ("slowmem",)

        def cp_file(self, path1, path2, **kwargs):
            time.sleep(0.005)
            return super().cp_file(path1, path2, **kwargs)

        def put_file(self, lpath, rpath, **kwargs):
            time.sleep(0.005)
            return super().put_file(lpath, rpath, **kwargs)

    fsspec.register_implementation("slowmem", Slow, clobber=True)
    return f"slowmem://{name}"


def test_concurrent_writers_of_one_object_on_a_memory_root_all_succeed(tmp_path) -> None:
    import fsspec

    root = _slow_memory_root("bitsmith-objects-concurrent")
    src = _make_dir(tmp_path / "d", {f"f{i}.txt": str(i) * 1000 for i in range(6)} | {"sub/g.txt": "g"})
    results = _put_many(root, src, 8)
    assert len(results) == 8 and all(not isinstance(r, Exception) for r in results), results
    digest = results[0].digest
    fs, base = fsspec.core.url_to_fs(root)
    final = f"{base}/objects/{digest[:2]}/{digest}"
    assert sorted(n[len(final) + 1:] for n in fs.find(final)) == sorted(r for r, _, _ in directory_manifest(src))
    assert remote_digest(fs, final) == [digest]
    assert fs.find(f"{base}/tmp") == []


def _slow_local_root(path: Path) -> str:
    """A root on fsspec's LocalFileSystem with latency on every file download (wider races)."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    class SlowLocal(LocalFileSystem):
        protocol = ("slowlocal",)

        def get_file(self, path1, path2, *args, **kwargs):
            time.sleep(0.005)
            return super().get_file(path1, path2, *args, **kwargs)

    fsspec.register_implementation("slowlocal", SlowLocal, clobber=True)
    return f"slowlocal://{path}"


def test_concurrent_fetchers_of_one_object_share_one_cached_copy(tmp_path) -> None:
    """On fsspec's LocalFileSystem (memory files share one read position, so concurrent readers of the
    memory filesystem would garble each other)."""
    root = _slow_local_root(tmp_path / "remote")
    obj = put_object(root, _make_dir(tmp_path / "d", {f"f{i}.txt": str(i) * 5000 for i in range(10)}))
    fetched: list = []
    barrier = threading.Barrier(6)

    def fetch() -> None:
        barrier.wait()
        try:
            fetched.append(materialize(root, obj.digest, tmp_path / "cache"))
        except Exception as exc:  # recorded: the test asserts none happened
            fetched.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(fetched) == 6 and len(set(fetched)) == 1, fetched
    verify_object(fetched[0], obj.digest)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [obj.digest]


def _put_in_process(root: str, src: str, start: float, queue) -> None:
    time.sleep(max(0.0, start - time.time()))
    try:
        queue.put(put_object(root, src).digest)
    except Exception as exc:  # reported to the parent, which fails the test on it
        queue.put(repr(exc))


@pytest.mark.parametrize("scheme", ["plain", "local"])
def test_concurrent_writer_processes_of_one_directory_all_succeed(tmp_path, scheme) -> None:
    src = _make_dir(tmp_path / "d", {f"f{i}.txt": str(i) * 20000 for i in range(20)})
    root = str(tmp_path / "root") if scheme == "plain" else f"local://{tmp_path / 'root'}"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start = time.time() + 0.5
    procs = [ctx.Process(target=_put_in_process, args=(root, str(src), start, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    digest = digest_path(src)
    assert results == [digest] * 4
    final = tmp_path / "root" / "objects" / digest[:2] / digest
    assert sorted(p.name for p in final.iterdir()) == sorted(f"f{i}.txt" for i in range(20))
    verify_object(final, digest)
    assert list((tmp_path / "root" / "tmp").iterdir()) == []


# ---------------------------------------------------------------------------------------------- 5. leftovers

def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (old, old), follow_symlinks=False)


def test_db_check_reports_and_repair_removes_stale_leftovers_but_spares_live_writes(cli, tmp_path) -> None:
    _import(cli, _text_file(tmp_path / "src"))
    tmp = cli.home / "artifacts" / "tmp"
    dead = tmp / "999999.00000000.0123456789ab"
    _make_dir(dead, {"half.bin": "x"})
    _age(dead, 7200)
    staging = cli.home / ".data-abc123"  # a killed `data import`'s half-built dataset
    _make_dir(staging, {"dataset/.tmp/train.jsonl": "{}"})
    _age(staging, 7200)
    fresh = tmp / "888888.00000000.0123456789ab"
    _make_dir(fresh, {"in-flight.bin": "x"})  # a write in flight: too recent to touch
    live = tmp / artifacts.temp_name()  # this process is alive: never touched, however old
    _make_dir(live, {"slow.bin": "x"})
    _age(live, 7200)
    res = cli("db", "check", check=False)
    assert res.returncode == 1 and str(dead) in res.stdout and str(staging) in res.stdout
    assert str(fresh) not in res.stdout and str(live) not in res.stdout
    res = cli("db", "check", "--repair")
    assert "2 repaired" in res.stdout
    assert not dead.exists() and not staging.exists() and fresh.exists() and live.exists()
    assert cli("db", "check").returncode == 0


def test_leftovers_under_a_remote_roots_tmp_are_reported_and_removed(tmp_path) -> None:
    root = f"local://{tmp_path / 'remote'}"
    cli = CLI(tmp_path / "home", BITSMITH_ARTIFACT_ROOT=root)
    _import(cli, _text_file(tmp_path / "src"))
    dead = tmp_path / "remote" / "tmp" / "999999.00000000.0123456789ab"
    _make_dir(dead, {"part/half.bin": "x"})
    _age(dead, 7200)
    fresh = _make_dir(tmp_path / "remote" / "tmp" / "888888.00000000.0123456789ab", {"in-flight.bin": "x"})
    res = cli("db", "check", check=False)
    assert res.returncode == 1 and f"{root}/tmp/{dead.name}" in res.stdout and fresh.name not in res.stdout
    cli("db", "check", "--repair")
    assert not dead.exists() and fresh.exists()


def test_a_writer_killed_mid_copy_leaves_a_leftover_that_repair_removes(cli, tmp_path) -> None:
    big = tmp_path / "big"
    _make_dir(big, {f"part{i:03d}.txt": f"paragraph {i} " * 20000 + "\n\n" for i in range(60)})
    proc = subprocess.Popen([sys.executable, "-m", "bitsmith.platform.cli.main", "data", "import", big, "--kind",
                             "text"], cwd=ROOT, env=cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(cli.home.glob(".data-*")) and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    leftovers = list(cli.home.glob(".data-*")) + list((cli.home / "artifacts" / "tmp").glob("*"))
    assert leftovers, "the killed import left its staging folder behind"
    assert cli("db", "check", "--grace-s", "3600").returncode == 0  # recent: never removed
    res = cli("db", "check", "--repair", "--grace-s", "0")  # its writer is dead: stale at once
    assert "repaired" in res.stdout and not any(p.exists() for p in leftovers)


# ---------------------------------------------------------------------------------------------- 6. dataset digests

def test_the_same_bytes_imported_from_two_folders_are_one_artifact(cli, tmp_path) -> None:
    first = _import(cli, _text_file(tmp_path / "one"))
    second = _import(cli, _text_file(tmp_path / "elsewhere" / "two"))
    assert first == second
    assert first != _import(cli, _text_file(tmp_path / "three", "other text\n"))
