import pytest

from paramdelta.engine.recipe import parse_size
from paramdelta.errors import UsageError


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("5GB", 5 * 10**9),
        ("512MiB", 512 * 2**20),
        ("100kb", 100_000),
        ("1.5GB", 1_500_000_000),
        ("4096", 4096),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text, "--shard-size") == size


@pytest.mark.parametrize("text", ["", "5 parsecs", "-1GB", "0"])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError) as e:
        parse_size(text, "--shard-size")
    assert str(e.value) == f"--shard-size: expected a size like 5GB or 512MiB, not {text!r}"
