"""The KVP record codec (hvsock._core.kvp): exact bytes, limits, pools; sans I/O."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvsock import ArgumentError, HvsockError, KvpError
from hvsock._core import kvp as codec
from hvsock.kvp import RECORD_SIZE, Pool, decode_pool, decode_record, encode_record, parse_pool

# Text the safe limits take: no NUL, no lone surrogates, short enough in UTF-16 and UTF-8.
safe_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"))
safe_key = safe_text.filter(lambda s: 0 < codec.utf16_units(s) <= 254 and len(s.encode()) <= 511)
safe_value = safe_text.filter(lambda s: codec.utf16_units(s) <= 1022 and len(s.encode()) <= 2047)


def test_record_layout_is_the_daemons_struct() -> None:
    record = encode_record("Key", "Välue")
    assert len(record) == RECORD_SIZE == 2560
    assert record[:4] == b"Key\0"
    assert record[512:519] == "Välue".encode() + b"\0"
    assert record[3:512] == b"\0" * 509
    assert decode_record(record) == ("Key", "Välue")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(safe_key, safe_value), max_size=8))
def test_pool_round_trip(items: list[tuple[str, str]]) -> None:
    data = codec.encode_pool(items)
    assert len(data) == RECORD_SIZE * len(items)
    assert decode_pool(data) == items


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3 * RECORD_SIZE + 7))
def test_any_bytes_give_records_or_only_kvp_error(data: bytes) -> None:
    if len(data) % RECORD_SIZE:
        with pytest.raises(KvpError, match="not a multiple of 2560"):
            decode_pool(data)
        return
    items = decode_pool(data)
    assert len(items) == len(data) // RECORD_SIZE
    # Records written back come out byte for byte up to each field's first NUL.
    for i, (key, value) in enumerate(items):
        original = data[i * RECORD_SIZE : (i + 1) * RECORD_SIZE]
        again = codec.encode_raw(key, value)
        assert decode_record(again) == (key, value)
        assert again[:512].split(b"\0")[0] == original[:512].split(b"\0")[0]
        assert again[512:].split(b"\0")[0] == original[512:].split(b"\0")[0]


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=RECORD_SIZE, max_size=RECORD_SIZE))
def test_any_single_record_decodes(record: bytes) -> None:
    key, value = decode_record(record)
    assert "\0" not in key
    assert "\0" not in value


def test_fields_without_nul_use_the_whole_field() -> None:
    record = b"k" * 512 + b"v" * 2048
    assert decode_record(record) == ("k" * 512, "v" * 2048)


def test_non_utf8_bytes_survive_a_rewrite() -> None:
    record = b"\xffkey".ljust(512, b"\0") + b"\xc3(".ljust(2048, b"\0")
    assert codec.encode_raw(*decode_record(record)) == record


@pytest.mark.parametrize("size", [1, 2559, 2561, 5119])
def test_size_not_a_multiple_is_reported_not_guessed(size: int) -> None:
    with pytest.raises(KvpError, match=f"{size} bytes, not a multiple of 2560"):
        decode_pool(b"\0" * size, "pool 1")


def test_decode_record_wrong_length() -> None:
    with pytest.raises(KvpError, match="2560 bytes, not 10"):
        decode_record(b"x" * 10)


LIMIT_CASES = [
    # (key, value, limits, error fragment or None)
    ("k" * 254, "v" * 1022, "safe", None),
    ("k" * 255, "v", "safe", "255 UTF-16 units"),
    ("k", "v" * 1023, "safe", "1023 UTF-16 units"),
    ("\U0001f600" * 127, "v", "safe", None),  # 254 units: two per emoji
    ("\U0001f600" * 128, "v", "safe", "256 UTF-16 units"),
    ("é" * 254, "v", "safe", None),  # 508 UTF-8 bytes: fits
    ("€" * 254, "v", "safe", "762 bytes in UTF-8"),  # 254 units, too many bytes
    ("k" * 511, "v" * 2047, "full", None),
    ("k" * 512, "v", "full", "512 bytes in UTF-8"),
    ("k", "v" * 2048, "full", "2048 bytes in UTF-8"),
    ("", "v", "safe", "cannot be empty"),
    ("a\0b", "v", "safe", "NUL"),
    ("k", "a\0", "full", "NUL"),
    ("k\udc80", "v", "safe", "lone surrogate"),
    (b"k", "v", "safe", "must be text"),
    ("k", 5, "safe", "must be text"),
    ("k", "v", "huge", "'safe' or 'full'"),
]


@pytest.mark.parametrize(("key", "value", "limits", "error"), LIMIT_CASES)
def test_limits(key: object, value: object, limits: str, error: str | None) -> None:
    if error is None:
        assert len(codec.encode_record(key, value, limits)) == RECORD_SIZE  # type: ignore[arg-type]
        return
    with pytest.raises(ArgumentError, match=error) as info:
        codec.encode_record(key, value, limits)  # type: ignore[arg-type]
    assert isinstance(info.value, HvsockError)
    assert isinstance(info.value, ValueError)
    assert len(str(info.value)) < 400  # user input is quoted cut short


@pytest.mark.parametrize(
    ("text", "pool"),
    [
        ("guest", Pool.GUEST),
        ("1", Pool.GUEST),
        (1, Pool.GUEST),
        ("external", Pool.EXTERNAL),
        ("auto", Pool.AUTO),
        ("auto-external", Pool.AUTO_EXTERNAL),
        ("AUTO_EXTERNAL", 3),
        ("auto-internal", Pool.AUTO_INTERNAL),
        (" 4 ", Pool.AUTO_INTERNAL),
        (Pool.AUTO, 2),
    ],
)
def test_parse_pool(text: object, pool: int) -> None:
    assert parse_pool(text) == pool


@pytest.mark.parametrize("bad", ["5", "-1", "gust", "", 7, True, None, 1.0, "01"])
def test_parse_pool_bad(bad: object) -> None:
    with pytest.raises(ArgumentError, match="no KVP pool"):
        parse_pool(bad)


def test_pool_names() -> None:
    assert [p.cli_name for p in Pool] == [
        "external",
        "guest",
        "auto",
        "auto-external",
        "auto-internal",
    ]
    assert Pool.AUTO_EXTERNAL.file_name == ".kvp_pool_3"


def test_latest_keeps_the_last_duplicate() -> None:
    assert codec.latest([("a", "1"), ("b", "2"), ("a", "3")]) == {"b": "2", "a": "3"}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "ab", "é", "k" * 512, "k" * 511]), max_size=6),
    st.sampled_from(["a", "ab", "é", "k" * 512, "k" * 511, "k" * 513, "b\0", "\ud800"]),
)
def test_find_key_matches_decoding(keys: list[str], key: str) -> None:
    data = b"".join(codec.encode_raw(k, "v") for k in keys)
    assert codec.find_key(data, key) == [
        i for i, (k, _) in enumerate(decode_pool(data)) if k == key
    ]
