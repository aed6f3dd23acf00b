"""context.py: .dockerignore as Docker reads it, deterministic zips, content-addressed S3 uploads.

The matching table is Docker's own documented examples (the .dockerignore section of the Dockerfile
reference) plus the points where Docker differs from .gitignore, so a gitignore-style matcher fails
it. Uploads go to moto's S3 over HTTP; calls are counted with botocore's event hooks (observation,
not patching).
"""

from __future__ import annotations

import io
import os
import random
import zipfile
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.context import (
    ZIP_EPOCH,
    ContextArchive,
    context_entries,
    context_key,
    parse_dockerignore,
    resolve_context,
    upload_context,
    zip_context,
)
from bridge.errors import BuilderError, InputError

TREE = [
    "Dockerfile",
    ".dockerignore",
    "README.md",
    "README-secret.md",
    "README-dev.md",
    "CHANGELOG.md",
    "main.go",
    "tempa",
    "tempb",
    "temp",
    "temporary.txt",
    "somedir/temporary.txt",
    "somedir/temp/inner.txt",
    "somedir/other.txt",
    "somedir/subdir/temporary.txt",
    "somedir/subdir/keep.txt",
    "somedir/x.go",
    "somedir/docs.md",
    "a/b/c/deep.go",
    "node_modules/pkg/index.js",
    "docs/keep.md",
    "docs/drop.md",
    "build",
    "#hash",
]


def make_tree(root: Path, files: list[str], dockerignore: str | None) -> None:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {name}\n")
    if dockerignore is not None:
        (root / ".dockerignore").write_text(dockerignore)


def included_files(root: Path, dockerfile: str = "Dockerfile") -> set[str]:
    return {name for name in context_entries(root, dockerfile=dockerfile) if (root / name).is_file()}


ALL = set(TREE)


@pytest.mark.parametrize(
    ("dockerignore", "excluded"),
    [
        # Docker's documented examples.
        ("# comment\n", set()),
        ("*/temp*\n", {"somedir/temporary.txt", "somedir/temp/inner.txt"}),
        ("*/*/temp*\n", {"somedir/subdir/temporary.txt"}),
        ("temp?\n", {"tempa", "tempb"}),
        ("**/*.go\n", {"main.go", "somedir/x.go", "a/b/c/deep.go"}),
        ("*.md\n!README.md\n", {"README-secret.md", "README-dev.md", "CHANGELOG.md"}),
        ("*.md\n!README*.md\nREADME-secret.md\n", {"README-secret.md", "CHANGELOG.md"}),
        ("*.md\nREADME-secret.md\n!README*.md\n", {"CHANGELOG.md"}),
        # The Dockerfile and .dockerignore are always sent, even when excluded.
        ("Dockerfile\n.dockerignore\n", set()),
        # Where Docker differs from .gitignore: a bare name is anchored at the root ...
        ("temporary.txt\n", {"temporary.txt"}),
        # ... `*` does not cross folders ...
        ("*.md\n", {"README.md", "README-secret.md", "README-dev.md", "CHANGELOG.md"}),
        # ... and a file inside an excluded folder can be re-included.
        ("docs\n!docs/keep.md\n", {"docs/drop.md"}),
        # Paths are cleaned: leading / and ./, .., trailing /; "." alone is ignored.
        ("/node_modules\n", {"node_modules/pkg/index.js"}),
        ("./somedir/other.txt\n", {"somedir/other.txt"}),
        ("somedir/../main.go\n", {"main.go"}),
        ("build/\n", {"build"}),
        (".\n", set()),
        # A comment starts in column 1 only; blanks and surrounding spaces are trimmed.
        ("  #hash\n\n   \n", {"#hash"}),
        ("  ! README.md\n*.md\n", {"README.md", "README-secret.md", "README-dev.md", "CHANGELOG.md"}),
        ("\ufeff# a BOM before a comment\n", set()),
        # A folder excludes everything below it.
        ("somedir\n", {n for n in TREE if n.startswith("somedir/")}),
        ("**\n!main.go\n", ALL - {"main.go", "Dockerfile", ".dockerignore"}),
    ],
)
def test_dockerignore_matches_like_docker(tmp_path: Path, dockerignore: str, excluded: set[str]) -> None:
    make_tree(tmp_path, [n for n in TREE if n != ".dockerignore"], dockerignore)
    assert included_files(tmp_path) == ALL - excluded


def test_no_dockerignore_sends_everything(tmp_path: Path) -> None:
    files = [n for n in TREE if n != ".dockerignore"]
    make_tree(tmp_path, files, None)
    assert included_files(tmp_path) == set(files)


def test_a_dockerfile_elsewhere_is_still_sent(tmp_path: Path) -> None:
    make_tree(tmp_path, ["docker/Dockerfile.prod", "app.py"], "docker\n")
    assert included_files(tmp_path, dockerfile="docker/Dockerfile.prod") == {
        "docker/Dockerfile.prod",
        "app.py",
        ".dockerignore",
    }


@pytest.mark.parametrize(
    ("text", "patterns"),
    [
        ("# c\n a \n\n!b\n", ["a", "!b"]),
        ("/abs/path\n", ["abs/path"]),
        ("x/./y//z/\n", ["x/y/z"]),
        ("! spaced \n", ["!spaced"]),
        (" # not a comment\n", ["# not a comment"]),
        ("a\r\nb\r\n", ["a", "b"]),
    ],
)
def test_parse_dockerignore(text: str, patterns: list[str]) -> None:
    assert parse_dockerignore(text) == patterns


# --- the zip -----------------------------------------------------------------------------------------


def _zip(root: Path, out: Path, **kwargs: Any) -> ContextArchive:
    return zip_context(root, out, **kwargs)


def test_zip_is_deterministic_across_times_permissions_and_creation_order(tmp_path: Path) -> None:
    names = ["b.txt", "a/z.txt", "a/b.txt", "Dockerfile", "run.sh"]
    first, second = tmp_path / "one", tmp_path / "two"
    make_tree(first, names, "*.log\n")
    make_tree(second, list(reversed(names)), "*.log\n")
    (first / "run.sh").chmod(0o755)
    (second / "run.sh").chmod(0o700)  # another umask: only "executable or not" survives
    (second / "b.txt").chmod(0o600)
    os.utime(second / "a" / "z.txt", (12345, 12345))
    (second / "ignored.log").write_text("noise")
    one = _zip(first, tmp_path / "one.zip")
    two = _zip(second, tmp_path / "two.zip")
    assert one.path.read_bytes() == two.path.read_bytes()
    assert one.sha256 == two.sha256
    assert one.files == 6  # 5 files + .dockerignore

    with zipfile.ZipFile(one.path) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {i.date_time for i in infos} == {ZIP_EPOCH}
    modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in infos}
    assert modes["run.sh"] == 0o755
    assert modes["b.txt"] == 0o644
    assert "a/" in modes


def test_one_changed_byte_changes_the_digest(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", ["Dockerfile", "app.py"], None)
    before = _zip(tmp_path / "src", tmp_path / "1.zip")
    (tmp_path / "src" / "app.py").write_text("content of app.py!\n")
    after = _zip(tmp_path / "src", tmp_path / "2.zip")
    assert before.sha256 != after.sha256


def test_zip_round_trips_content_and_links(tmp_path: Path) -> None:
    root = tmp_path / "src"
    make_tree(root, ["Dockerfile", "pkg/mod.py"], "secret.env\n")
    (root / "secret.env").write_text("TOKEN=x")
    (root / "link.py").symlink_to("pkg/mod.py")
    archive = _zip(root, tmp_path / "c.zip")
    with zipfile.ZipFile(archive.path) as zf:
        assert zf.read("pkg/mod.py") == b"content of pkg/mod.py\n"
        assert zf.read("link.py") == b"pkg/mod.py"
        assert (zf.getinfo("link.py").external_attr >> 16) & 0o170000 == 0o120000
        assert "secret.env" not in zf.namelist()
    assert archive.size == archive.path.stat().st_size
    assert "files" in archive.describe()
    assert "MiB" in archive.describe()


def test_an_oversized_context_is_refused_with_a_fix(tmp_path: Path) -> None:
    root = tmp_path / "src"
    make_tree(root, ["Dockerfile"], None)
    (root / "data.bin").write_bytes(random.Random(7).randbytes(300_000))  # incompressible
    with pytest.raises(InputError) as raised:
        _zip(root, tmp_path / "c.zip", max_bytes=100_000)
    assert raised.value.name == "context-path"
    assert ".dockerignore" in (raised.value.hint or "")
    assert _zip(root, tmp_path / "ok.zip", max_bytes=400_000).size > 300_000


_names = st.lists(
    st.lists(st.sampled_from(["a", "b", "c.txt", "d.py", "é"]), min_size=1, max_size=3).map("/".join),
    min_size=1,
    max_size=8,
    unique=True,
)


@settings(max_examples=40, deadline=None)
@given(names=_names, seed=st.integers(0, 1000))
def test_same_tree_same_bytes_whatever_the_write_order(
    tmp_path_factory: pytest.TempPathFactory, names: list[str], seed: int
) -> None:
    # drop names that are also a folder of another name
    files = [n for n in names if not any(other.startswith(n + "/") for other in names)]
    base = tmp_path_factory.mktemp("tree")
    shuffled = files[:]
    random.Random(seed).shuffle(shuffled)
    make_tree(base / "x", files, None)
    make_tree(base / "y", shuffled, None)
    assert (
        _zip(base / "x", base / "x.zip").path.read_bytes()
        == _zip(base / "y", base / "y.zip").path.read_bytes()
    )


# --- the context folder -------------------------------------------------------------------------------


def test_resolve_context_accepts_the_root_and_sub_folders(tmp_path: Path) -> None:
    (tmp_path / "services" / "api").mkdir(parents=True)
    assert resolve_context(tmp_path, ".") == tmp_path.resolve()
    assert resolve_context(tmp_path, "") == tmp_path.resolve()
    assert resolve_context(tmp_path, "services/api") == (tmp_path / "services" / "api").resolve()
    assert resolve_context(tmp_path, "services/../services/api/") == (tmp_path / "services" / "api").resolve()


GIT_TREE = [
    "Dockerfile",
    "app.py",
    ".git/config",
    ".git/HEAD",
    ".git/refs/heads/main",
    "vendor/lib/.git",  # a submodule's gitdir pointer file
    "vendor/lib/lib.py",
    "nested/.git/config",  # a second checkout (actions/checkout with path:)
    "nested/code.py",
    ".github/workflows/ci.yml",
    ".gitignore",
]


@pytest.mark.parametrize(
    "dockerignore",
    [None, "", "node_modules\n", "!.git\n", "*\n!.git\n!.git/config\n!Dockerfile\n!app.py\n", "!**/.git\n"],
)
def test_git_folders_are_never_sent_whatever_dockerignore_says(
    tmp_path: Path, dockerignore: str | None
) -> None:
    make_tree(tmp_path, GIT_TREE, dockerignore)
    entries = context_entries(tmp_path)
    assert [name for name in entries if ".git" in name.split("/")] == []
    assert "app.py" in entries
    if dockerignore in (None, "", "node_modules\n", "!.git\n", "!**/.git\n"):
        assert {".gitignore", ".github/workflows/ci.yml", "vendor/lib/lib.py", "nested/code.py"} <= set(
            entries
        )


def test_the_key_does_not_change_when_only_git_does(tmp_path: Path) -> None:
    make_tree(tmp_path, GIT_TREE, None)
    first = zip_context(tmp_path, tmp_path.parent / "first.zip")
    (tmp_path / ".git" / "config").write_text("[http]\n\textraheader = AUTHORIZATION: basic bmV3\n")
    (tmp_path / ".git" / "FETCH_HEAD").write_text("0" * 40 + "\n")
    second = zip_context(tmp_path, tmp_path.parent / "second.zip")
    assert first.sha256 == second.sha256
    assert b"extraheader" not in second.path.read_bytes()


@pytest.mark.parametrize(
    ("context_path", "message"),
    [
        (".git", "points into .git"),
        ("nested/.git", "points into .git"),
        ("..", "outside the workspace"),
        ("../elsewhere", "outside the workspace"),
        ("escape", "outside the workspace"),  # a symlink pointing out
        ("/etc", "relative"),
        ("missing", "not a folder"),
        ("file.txt", "not a folder"),
    ],
)
def test_resolve_context_refuses_what_is_not_a_workspace_folder(
    tmp_path: Path, context_path: str, message: str
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (workspace / "file.txt").write_text("x")
    (workspace / ".git").mkdir()
    (workspace / "nested" / ".git").mkdir(parents=True)
    (workspace / "escape").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match=message) as raised:
        resolve_context(workspace, context_path)
    assert raised.value.name == "context-path"


def test_resolve_context_needs_a_workspace(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="checkout"):
        resolve_context(tmp_path / "nope", ".")


# --- S3 -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "key"),
    [("", "abc.zip"), ("ctx", "ctx/abc.zip"), ("/ctx//a/", "ctx/a/abc.zip"), ("  ", "abc.zip")],
)
def test_context_key(prefix: str, key: str) -> None:
    assert context_key(prefix, "abc") == key


@pytest.fixture
def s3(aws_env: dict[str, str]) -> Any:
    client = boto3.client("s3")
    client.create_bucket(Bucket="ctx-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    return client


def _count_calls(client: Any, operation: str) -> list[str]:
    seen: list[str] = []
    client.meta.events.register(f"before-call.s3.{operation}", lambda **_: seen.append(operation))
    return seen


@pytest.fixture
def archive(tmp_path: Path) -> ContextArchive:
    make_tree(tmp_path / "src", ["Dockerfile", "app.py"], None)
    return zip_context(tmp_path / "src", tmp_path / "ctx.zip")


def test_upload_is_content_addressed_and_happens_once(s3: Any, archive: ContextArchive) -> None:
    puts = _count_calls(s3, "PutObject")
    first = upload_context(s3, archive, bucket="ctx-bucket", prefix="bridge/ctx/")
    assert first.uploaded
    assert first.key == f"bridge/ctx/{archive.sha256}.zip"
    assert first.source_location == f"ctx-bucket/bridge/ctx/{archive.sha256}.zip"
    assert first.uri == f"s3://ctx-bucket/{first.key}"
    body = s3.get_object(Bucket="ctx-bucket", Key=first.key)["Body"].read()
    assert body == archive.path.read_bytes()
    assert zipfile.ZipFile(io.BytesIO(body)).namelist() == ["Dockerfile", "app.py"]

    second = upload_context(s3, archive, bucket="ctx-bucket", prefix="bridge/ctx")
    assert not second.uploaded
    assert second.key == first.key
    assert puts == ["PutObject"]


def test_a_versioned_bucket_pins_the_object_version(s3: Any, archive: ContextArchive) -> None:
    s3.put_bucket_versioning(Bucket="ctx-bucket", VersioningConfiguration={"Status": "Enabled"})
    first = upload_context(s3, archive, bucket="ctx-bucket")
    again = upload_context(s3, archive, bucket="ctx-bucket")
    versions = s3.list_object_versions(Bucket="ctx-bucket")["Versions"]
    assert [v["VersionId"] for v in versions] == [first.version_id]
    assert again.version_id == first.version_id


def test_a_missing_bucket_names_the_input(s3: Any, archive: ContextArchive) -> None:
    with pytest.raises(InputError, match="does not exist") as raised:
        upload_context(s3, archive, bucket="no-such-bucket")
    assert raised.value.name == "context-bucket"


def test_an_empty_bucket_name_is_an_input_error(s3: Any, archive: ContextArchive) -> None:
    with pytest.raises(InputError, match="required") as raised:
        upload_context(s3, archive, bucket=" ")
    assert raised.value.name == "context-bucket"


def test_access_denied_says_which_permissions(archive: ContextArchive, aws_env: dict[str, str]) -> None:
    client = boto3.client("s3")

    def deny(**_: Any) -> None:
        response: Any = {
            "Error": {"Code": "403", "Message": "Forbidden"},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        }
        raise botocore.exceptions.ClientError(response, "HeadObject")

    client.meta.events.register("before-call.s3.HeadObject", deny)
    with pytest.raises(BuilderError, match="denied") as raised:
        upload_context(client, archive, bucket="ctx-bucket", prefix="p")
    assert "s3:ListBucket" in (raised.value.hint or "")
    assert "arn:aws:s3:::ctx-bucket/p*" in (raised.value.hint or "")
