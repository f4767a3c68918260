"""The model package: deterministic tarballs, untrusted archives, and what serving may import."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import adapters.package as package_module
from adapters.layout import PublishError
from adapters.package import extract_tarball, make_tarball

# --- tarballs -----------------------------------------------------------------------------------


def _model_dir(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "model.joblib").write_bytes(b"weights" * 1000)
    (root / "params.json").write_text('{"n": 1}')
    (root / "sub" / "extra.txt").write_text("x")
    return root


def test_tarball_is_deterministic(tmp_path: Path) -> None:
    src = _model_dir(tmp_path / "model")
    first = make_tarball(src, tmp_path / "one.tar.gz").read_bytes()
    # Different mtimes and modes must not change the bytes.
    for path in src.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    (src / "params.json").chmod(0o600)
    second = make_tarball(src, tmp_path / "two.tar.gz").read_bytes()
    assert first == second
    assert first[4:8] == b"\x00\x00\x00\x00"  # gzip header mtime
    assert first[3] & 0x08 == 0  # no file name in the gzip header
    (src / "params.json").write_text('{"n": 2}')
    assert make_tarball(src, tmp_path / "three.tar.gz").read_bytes() != first


def test_tarball_holds_files_at_the_root(tmp_path: Path) -> None:
    src = _model_dir(tmp_path / "model")
    tarball = make_tarball(src, tmp_path / "model.tar.gz")
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["model.joblib", "params.json", "sub", "sub/extra.txt"]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    out = extract_tarball(tarball, tmp_path / "out")
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if path.is_file():
            assert (out / rel).read_bytes() == path.read_bytes()


def test_tarball_inside_its_source_leaves_itself_out(tmp_path: Path) -> None:
    src = _model_dir(tmp_path / "model")
    tarball = make_tarball(src, src / "model.tar.gz")
    with tarfile.open(tarball) as tar:
        assert "model.tar.gz" not in tar.getnames()


def test_make_tarball_refuses_links(tmp_path: Path) -> None:
    src = _model_dir(tmp_path / "model")
    (src / "link").symlink_to(tmp_path)
    with pytest.raises(PublishError, match="link"):
        make_tarball(src, tmp_path / "m.tar.gz")
    assert not (tmp_path / "m.tar.gz").exists()


def _evil_tarball(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        member.size = len(data) if member.isreg() else 0
        tar.addfile(member, io.BytesIO(data) if data else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member("../evil"),
        _member("sub/../../evil"),
        _member("/tmp/evil-absolute"),
        _member("link", tarfile.SYMTYPE, "/etc/passwd"),
        _member("link", tarfile.SYMTYPE, "ok.txt"),
        _member("hard", tarfile.LNKTYPE, "ok.txt"),
        _member("dev", tarfile.CHRTYPE),
        _member("blk", tarfile.BLKTYPE),
        _member("fifo", tarfile.FIFOTYPE),
    ],
    ids=lambda m: f"{m.name}-{m.type!r}",
)
def test_extract_refuses_untrusted_members(tmp_path: Path, member: tarfile.TarInfo) -> None:
    tarball = _evil_tarball(tmp_path / "evil.tar.gz", member, b"pwned" if member.isreg() else b"")
    dest = tmp_path / "work" / "out"
    with pytest.raises(PublishError):
        extract_tarball(tarball, dest)
    # Nothing was written, not even the harmless member before the bad one.
    assert not dest.exists() or list(dest.iterdir()) == []
    assert not (tmp_path / "work" / "evil").exists() and not (tmp_path / "evil").exists()


def test_extract_accepts_a_dot_prefixed_tarball(tmp_path: Path) -> None:
    # `tar -czf model.tar.gz -C dir .` writes ./ names; SageMaker users produce these.
    src = _model_dir(tmp_path / "model")
    tarball = tmp_path / "dot.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(src, arcname=".")
    out = extract_tarball(tarball, tmp_path / "out")
    assert (out / "model.joblib").read_bytes() == (src / "model.joblib").read_bytes()
    assert (out / "sub" / "extra.txt").read_text() == "x"


def test_extract_refuses_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(gzip.compress(b"not a tar archive at all" * 40))
    with pytest.raises(PublishError):
        extract_tarball(bad, tmp_path / "out")


def test_the_package_imports_no_cloud_orchestration_or_tracking_library() -> None:
    # The serving image holds only what adapters/package.py needs (docker/serving.Dockerfile).
    project = Path(package_module.__file__).resolve().parent.parent
    code = (
        "import sys, adapters.package; "
        "print(sorted(m for m in ('boto3', 'botocore', 'prefect', 'mlflow', 'sqlalchemy') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"
