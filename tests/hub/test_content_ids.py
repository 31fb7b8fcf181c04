import hashlib
import os

import pytest
from huggingface_hub import HfApi
from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling

from paramdelta.errors import LocalFileError
from paramdelta.hub import content_ids
from paramdelta.hub.content_ids import kind, kinds_for, listed, of_bytes, of_fd, of_file

DATA = bytes(range(256)) * 3 + b"tail"  # 772 bytes
# git's id of the empty blob, as `git hash-object /dev/null` prints it
EMPTY_BLOB = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


def _git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()  # noqa: S324


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_blob_id_is_gits():
    assert of_bytes(b"", "README.md") == [f"sha256:{_sha256(b'')}", f"blob:{EMPTY_BLOB}"]
    assert of_bytes(b"hello\n", "a.txt")[1] == "blob:ce013625030ba8dba906f756967f9e9ca394464a"


def test_a_safetensors_file_has_only_its_sha256_id_and_any_other_both():
    assert kinds_for("model-00001-of-00002.safetensors") == ("sha256:",)
    assert kinds_for("model.safetensors.index.json") == ("sha256:", "blob:")
    assert of_bytes(DATA, "w.safetensors") == [f"sha256:{_sha256(DATA)}"]
    assert of_bytes(DATA, "tokenizer.json") == [
        f"sha256:{_sha256(DATA)}",
        f"blob:{_git_blob(DATA)}",
    ]


def test_a_file_is_hashed_piece_by_piece_to_the_same_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(content_ids, "HASH_PIECE", 100)  # eight reads, the last one short
    path = tmp_path / "tokenizer.json"
    path.write_bytes(DATA)
    assert of_file(path, "tokenizer.json") == [f"sha256:{_sha256(DATA)}", f"blob:{_git_blob(DATA)}"]
    assert of_file(path, "sub/w.safetensors") == [f"sha256:{_sha256(DATA)}"]
    (tmp_path / "empty").write_bytes(b"")
    assert of_file(tmp_path / "empty", "x") == [f"sha256:{_sha256(b'')}", f"blob:{EMPTY_BLOB}"]


def test_of_fd_reads_the_size_it_is_given(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert of_fd(fd, 256, ["sha256:"]) == {"sha256:": f"sha256:{_sha256(DATA[:256])}"}
        # A file shorter than said: the blob id's header names the size said, so no match.
        short = of_fd(fd, len(DATA) + 10, ["blob:", "sha256:"])
        assert short["sha256:"] == f"sha256:{_sha256(DATA)}"
        header = b"blob %d\0" % (len(DATA) + 10)
        assert short["blob:"] == f"blob:{hashlib.sha1(header + DATA).hexdigest()}"  # noqa: S324
        assert short["blob:"] != f"blob:{_git_blob(DATA)}"
        assert of_fd(fd, 10, []) == {}
    finally:
        os.close(fd)


def test_a_file_that_cannot_be_read_is_a_local_file_error_naming_it(tmp_path):
    with pytest.raises(LocalFileError) as e:
        of_file(tmp_path / "gone.safetensors", "gone.safetensors")
    assert str(e.value) == f"{tmp_path / 'gone.safetensors'}: No such file or directory"


def test_the_listing_gives_sha256_for_lfs_and_blob_for_git_files():
    lfs = BlobLfsInfo(size=9, sha256="ab" * 32, pointer_size=130)
    assert listed(RepoSibling("w.safetensors", 9, "1" * 40, lfs)) == "sha256:" + "ab" * 32
    assert listed(RepoSibling("config.json", 2, "2" * 40)) == "blob:" + "2" * 40
    assert listed(RepoSibling("config.json")) is None  # listed without file metadata


@pytest.mark.parametrize(
    ("content_id", "expected"),
    [("sha256:ab", "sha256:"), ("blob:12", "blob:"), ("md5:12", ""), ("", ""), ("blob", "")],
)
def test_kind(content_id, expected):
    assert kind(content_id) == expected


def test_the_ids_computed_are_the_ones_the_fake_hub_lists(fake_hub, hub_token):
    """What a commit would be listed under is among the ids computed before committing it."""
    files = {"config.json": b'{"a": 1}\n', "model.safetensors": DATA, "big.txt": b"z" * (10 << 20)}
    fake_hub.create_repo("org/ids")
    sha = fake_hub.commit("org/ids", files)
    info = HfApi(endpoint=fake_hub.url, token=hub_token).model_info(
        "org/ids", revision=sha, files_metadata=True
    )
    by_path = {s.rfilename: listed(s) for s in info.siblings}
    assert by_path["config.json"] == f"blob:{_git_blob(files['config.json'])}"
    assert by_path["model.safetensors"] == f"sha256:{_sha256(DATA)}"
    assert by_path["big.txt"] == f"sha256:{_sha256(files['big.txt'])}"  # 10 MiB: stored in Xet
    for path, data in files.items():
        assert by_path[path] in of_bytes(data, path)
