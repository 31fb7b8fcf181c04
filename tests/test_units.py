"""Amounts as the bot writes them: sizes and durations with units, counts with their noun."""

from paramdelta.units import human_bytes, human_seconds, plural


def test_sizes_in_binary_units():
    assert [human_bytes(n) for n in (0, 1023, 1536, 460032, 5 * 2**30)] == [
        "0 B",
        "1023 B",
        "1.50 KiB",
        "449.25 KiB",
        "5.00 GiB",
    ]


def test_durations_at_the_precision_they_deserve():
    seconds = (0.0001, 0.0123, 0.9994, 3.42, 59.9, 125, 3725)
    assert [human_seconds(s) for s in seconds] == [
        "under 1 ms",
        "12 ms",
        "999 ms",
        "3.4 s",
        "59.9 s",
        "2 min 05 s",
        "1 h 02 min",
    ]


def test_a_count_with_its_noun():
    assert [plural(n, "shard") for n in (0, 1, 2)] == ["0 shards", "1 shard", "2 shards"]
