"""A local folder as the build context: one deterministic zip in S3, the source of an S3 build.

Used by the Action's `source: workspace` and by bridge.api. Generated files and monorepo
sub-folders then build without CodeBuild cloning anything.

- What goes in follows .dockerignore exactly as `docker build` reads it: the file is parsed like
  moby's ignorefile (comments only in column 1, `!` exceptions, cleaned paths) and matched with the
  Docker SDK's port of moby's pattern matcher, so `foo` means the root's `foo` only, `*` stays in one
  folder, `**` spans folders and an excluded folder can still have files re-included. The Dockerfile
  and .dockerignore are always sent, as the Docker CLI does.
- Never `.git/` (nor a submodule's `.git` file), whatever .dockerignore says: actions/checkout leaves
  the job's token in `.git/config`, and a lasting S3 object and a Docker build context are no place
  for it. It also keeps the key stable: `.git/` changes with every fetch, the tree does not.
- Same tree, same bytes: entries sorted, fixed timestamps, normalised permissions, fixed
  compression level. The object key is the zip's SHA-256, so an unchanged context is found with one
  HeadObject and not uploaded again.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import botocore.exceptions

from bridge.errors import BuilderError, CredentialsError, InputError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DEFAULT_MAX_BYTES = 512 * 1024 * 1024  # zipped; beyond this an upload per build is the wrong tool
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
_COMPRESS_LEVEL = 6
_CHUNK = 1024 * 1024
_UTF8_BOM = "\ufeff"
_GIT_DIR = ".git"  # never sent, at any depth: it holds the checkout's credentials
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_CONTEXT_PATH_HINT = "a folder inside the checked-out repository, e.g. services/api (default: the root)"


@dataclass(frozen=True)
class ContextArchive:
    path: Path  # the zip on disk
    sha256: str  # hex digest of the zip's bytes
    size: int  # bytes
    files: int  # file and link entries (folders not counted)

    def describe(self) -> str:
        return f"{self.files} files, {_mib(self.size)} zipped, sha256 {self.sha256[:12]}"


@dataclass(frozen=True)
class ContextLocation:
    bucket: str
    key: str
    version_id: str | None  # set when the bucket is versioned: pins the exact object for the build
    uploaded: bool  # False when the same context was already there

    @property
    def source_location(self) -> str:
        """CodeBuild's S3 source location form: BUCKET/KEY (no scheme)."""
        return f"{self.bucket}/{self.key}"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


# --- which files ------------------------------------------------------------------------------------


def resolve_context(workspace: str | Path, context_path: str = ".") -> Path:
    """The context folder, refused unless it is a folder inside the workspace (symlinks resolved)."""
    base = Path(workspace).resolve()
    if not base.is_dir():
        raise InputError(
            "GITHUB_WORKSPACE",
            f"the workspace '{workspace}' is not a folder",
            hint="check out the repository first (actions/checkout) in this job",
        )
    relative = context_path.strip() or "."
    if Path(relative).is_absolute():
        raise InputError("context-path", "must be relative to the workspace", hint=_CONTEXT_PATH_HINT)
    candidate = (base / relative).resolve()
    if candidate != base and base not in candidate.parents:
        raise InputError("context-path", "points outside the workspace", hint=_CONTEXT_PATH_HINT)
    if _GIT_DIR in candidate.relative_to(base).parts:
        raise InputError(
            "context-path",
            "points into .git, which is never sent (it holds credentials)",
            hint=_CONTEXT_PATH_HINT,
        )
    if not candidate.is_dir():
        raise InputError(
            "context-path",
            f"'{relative}' is not a folder in the workspace",
            hint=_CONTEXT_PATH_HINT + "; the job must check out the repository first",
        )
    return candidate


def parse_dockerignore(text: str) -> list[str]:
    """Patterns as the Docker CLI reads them (moby's ignorefile.ReadAll).

    A comment is a line whose first column is `#`; everything else is trimmed, `!` is split off and
    trimmed, the path is cleaned and a leading `/` dropped (patterns are relative to the context).
    """
    patterns: list[str] = []
    for line in text.removeprefix(_UTF8_BOM).split("\n"):
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = os.path.normpath(pattern).replace(os.sep, "/")
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern.lstrip("/")
        patterns.append(("!" if invert else "") + pattern)
    return patterns


def context_entries(root: Path, *, dockerfile: str = "Dockerfile") -> list[str]:
    """Relative paths (POSIX, sorted) of every folder, file and link that goes into the context."""
    from docker.utils.build import exclude_paths  # type: ignore[import-untyped]

    ignore = root / ".dockerignore"
    patterns = parse_dockerignore(ignore.read_text(encoding="utf-8")) if ignore.is_file() else []
    kept: Iterable[str] = exclude_paths(str(root), list(patterns), dockerfile=dockerfile)
    paths = (path.replace(os.sep, "/") for path in kept)
    return sorted(path for path in paths if _GIT_DIR not in path.split("/"))


# --- the zip ----------------------------------------------------------------------------------------


def zip_context(
    root: Path,
    out: Path,
    *,
    dockerfile: str = "Dockerfile",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ContextArchive:
    """Write the context of `root` to `out` as a deterministic zip, refusing one over `max_bytes`."""
    entries = context_entries(root, dockerfile=dockerfile)
    files = 0
    with out.open("wb") as raw:
        with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=_COMPRESS_LEVEL) as zf:
            for name in entries:
                path = root / name
                info = os.lstat(path)
                if stat.S_ISLNK(info.st_mode):
                    _add_link(zf, name, os.readlink(path))
                elif stat.S_ISDIR(info.st_mode):
                    _add_dir(zf, name)
                    continue
                elif stat.S_ISREG(info.st_mode):
                    _add_file(zf, name, path, info.st_mode, raw=raw, max_bytes=max_bytes)
                else:
                    continue  # sockets, FIFOs, devices: `docker build` skips them too
                files += 1
                _check_size(raw.tell(), max_bytes)
        size = raw.tell()
    _check_size(size, max_bytes)
    return ContextArchive(path=out, sha256=_sha256(out), size=size, files=files)


def _entry(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.create_system = 3  # Unix, so the mode bits below are read back
    info.external_attr = mode << 16
    return info


def _add_dir(zf: zipfile.ZipFile, name: str) -> None:
    zf.writestr(_entry(name + "/", stat.S_IFDIR | 0o755), b"")


def _add_link(zf: zipfile.ZipFile, name: str, target: str) -> None:
    info = _entry(name, stat.S_IFLNK | 0o777)
    info.compress_type = zipfile.ZIP_STORED
    zf.writestr(info, target.encode())


def _add_file(
    zf: zipfile.ZipFile, name: str, path: Path, mode: int, *, raw: IO[bytes], max_bytes: int
) -> None:
    # Only the executable bit survives: umask and checkout differences must not change the bytes.
    permissions = 0o755 if mode & 0o111 else 0o644
    info = _entry(name, stat.S_IFREG | permissions)
    info.compress_type = zipfile.ZIP_DEFLATED
    with path.open("rb") as source, zf.open(info, "w", force_zip64=True) as target:
        while chunk := source.read(_CHUNK):
            target.write(chunk)
            _check_size(raw.tell(), max_bytes)


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise InputError(
            "context-path",
            f"the build context is over the {_mib(max_bytes)} limit once zipped",
            hint="exclude build outputs, dependencies and data with a .dockerignore, or point context-path "
            "at a smaller folder",
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


# --- S3 ---------------------------------------------------------------------------------------------


def context_key(prefix: str, sha256: str) -> str:
    """`PREFIX/<sha256>.zip`: the content names the object, so equal contexts share one."""
    clean = "/".join(part for part in prefix.strip().split("/") if part)
    return f"{clean}/{sha256}.zip" if clean else f"{sha256}.zip"


def upload_context(
    s3: S3Client, archive: ContextArchive, *, bucket: str, prefix: str = ""
) -> ContextLocation:
    """Upload unless an object with this content is already there (HeadObject first)."""
    bucket = bucket.strip()
    if not bucket:
        raise InputError(
            "context-bucket",
            "is required with source: workspace",
            hint="name an S3 bucket the job's role can write to, in the project's region",
        )
    key = context_key(prefix, archive.sha256)
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
        return ContextLocation(bucket, key, head.get("VersionId"), uploaded=False)
    except botocore.exceptions.ClientError as exc:
        if _code(exc) not in _NOT_FOUND_CODES:
            raise _s3_error(exc, "HeadObject", bucket, key) from exc
    except botocore.exceptions.NoCredentialsError as exc:
        raise CredentialsError("no AWS credentials found for the context upload") from exc
    checksum = base64.b64encode(bytes.fromhex(archive.sha256)).decode()
    try:
        with archive.path.open("rb") as body:
            put = s3.put_object(
                Bucket=bucket, Key=key, Body=body, ContentType="application/zip", ChecksumSHA256=checksum
            )
    except botocore.exceptions.ClientError as exc:
        raise _s3_error(exc, "PutObject", bucket, key) from exc
    return ContextLocation(bucket, key, put.get("VersionId"), uploaded=True)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _s3_error(exc: botocore.exceptions.ClientError, operation: str, bucket: str, key: str) -> Exception:
    code = _code(exc)
    if code == "NoSuchBucket":
        return InputError(
            "context-bucket",
            f"the bucket '{bucket}' does not exist",
            hint="create it (in the project's region) or fix the name",
        )
    if code in ("403", "AccessDenied", "AllBucketsAccessDenied"):
        return BuilderError(
            f"S3 {operation} of s3://{bucket}/{key} was denied",
            hint=f"allow s3:GetObject, s3:PutObject on arn:aws:s3:::{bucket}/{key.rpartition('/')[0] or ''}* "
            f"and s3:ListBucket on arn:aws:s3:::{bucket} (without ListBucket, HeadObject of a new "
            "context answers 403), for the role the job runs as",
        )
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return BuilderError(
        f"S3 {operation} of s3://{bucket}/{key} failed ({code or status})",
        retryable=status >= 500 or code in ("SlowDown", "RequestTimeout"),
        hint="try again; check the bucket's region and policy if it persists",
    )
