"""Hyper-V KVP pool files, as bytes: the 2560-byte record, the pools and the limits.

A pool file (``/var/lib/hyperv/.kvp_pool_N``, kept by the kernel's ``hv_kvp_daemon``) is
a bare sequence of ``struct kvp_record { char key[512]; char value[2048]; }``: no header,
no count. Strings are UTF-8, NUL-terminated and zero-padded. Pure code: no I/O.

Bytes that are not UTF-8 are kept through ``surrogateescape``, so a record another
program wrote is written back byte for byte when hvsock rewrites the file around it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator

from .._errors import ArgumentError, KvpError
from .._validate import quote

__all__: list[str] = []  # internal: the public names live in hvsock.kvp

KEY_SIZE = 512
VALUE_SIZE = 2048
RECORD_SIZE = KEY_SIZE + VALUE_SIZE

#: What the host receives intact: the kernel converts to UTF-16 and keeps at most
#: 254 key units and 1022 value units (hv_kvp.c), so longer strings arrive cut.
SAFE_KEY_UNITS = 254
SAFE_VALUE_UNITS = 1022
#: On disk, one byte of each field stays NUL: the daemon copies fields with strcpy,
#: and hyperkv cuts each field at its first NUL (a field with none loses a byte).
FULL_KEY_BYTES = KEY_SIZE - 1
FULL_VALUE_BYTES = VALUE_SIZE - 1

SAFE = "safe"
FULL = "full"
LIMITS = (SAFE, FULL)

_CODEC = "utf-8"
_ERRORS = "surrogateescape"


class Pool(enum.IntEnum):
    """The five pools, by their number in the file name (``.kvp_pool_<n>``)."""

    #: Host -> guest, pushed by the host's administrator (registry ``External``).
    EXTERNAL = 0
    #: Guest -> host: the only pool a guest program should write (``GuestExchangeItems``).
    GUEST = 1
    #: Guest intrinsics; the Linux daemon synthesises them and ignores the file.
    AUTO = 2
    #: Host facts pushed to the guest: HostName, VirtualMachineName, ... (``Guest\\Parameter``).
    AUTO_EXTERNAL = 3
    #: Created by the daemon, unused.
    AUTO_INTERNAL = 4

    @property
    def cli_name(self) -> str:
        """``external``, ``guest``, ``auto``, ``auto-external`` or ``auto-internal``."""
        return self.name.lower().replace("_", "-")

    @property
    def file_name(self) -> str:
        return f".kvp_pool_{int(self)}"


def parse_pool(value: object) -> Pool:
    """A pool from a :class:`Pool`, its number, or its name (``guest``, ``auto-external``,
    ``AUTO_EXTERNAL``, ``"3"``). Raises :class:`ArgumentError` for anything else."""
    if isinstance(value, Pool):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= 4:
            return Pool(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace("_", "-")
        if text.isdigit() and len(text) == 1 and int(text) <= 4:
            return Pool(int(text))
        for pool in Pool:
            if pool.cli_name == text:
                return pool
    names = ", ".join(f"{p.cli_name} ({int(p)})" for p in Pool)
    raise ArgumentError(f"no KVP pool {quote(value)}; use one of {names}")


def utf16_units(text: str) -> int:
    """How many UTF-16 code units *text* takes (characters beyond U+FFFF take two)."""
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def check_limits(limits: object) -> str:
    if limits not in LIMITS:
        raise ArgumentError(f"limits must be 'safe' or 'full', not {quote(limits)}")
    return str(limits)


def _check_text(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ArgumentError(f"a KVP {what} must be text, not {type(value).__name__}")
    if "\0" in value:
        raise ArgumentError(
            f"KVP {what} {quote(value)} contains a NUL character; C readers "
            "would cut it there: remove it"
        )
    try:
        return value.encode(_CODEC)
    except UnicodeEncodeError:
        raise ArgumentError(
            f"KVP {what} {quote(value)} has a lone surrogate; it cannot be written as UTF-8"
        ) from None


def check_item(key: object, value: object, limits: str = SAFE) -> tuple[bytes, bytes]:
    """*key* and *value* as the bytes a record holds, after checking them against *limits*.

    ``safe``: key <= 254 and value <= 1022 UTF-16 units (what the host receives intact),
    and within the on-disk sizes. ``full``: key <= 511 and value <= 2047 UTF-8 bytes.
    Raises :class:`ArgumentError` (nothing is written): an empty key, a NUL, a lone
    surrogate, a string over the limit.
    """
    check_limits(limits)
    raw_key = _check_text(key, "key")
    raw_value = _check_text(value, "value")
    assert isinstance(key, str)
    assert isinstance(value, str)
    if not key:
        raise ArgumentError("a KVP key cannot be empty")
    for what, text, raw, units, size in (
        ("key", key, raw_key, SAFE_KEY_UNITS, FULL_KEY_BYTES),
        ("value", value, raw_value, SAFE_VALUE_UNITS, FULL_VALUE_BYTES),
    ):
        if limits == SAFE and utf16_units(text) > units:
            raise ArgumentError(
                f"KVP {what} {quote(text)} is {utf16_units(text)} UTF-16 units; the host "
                f"receives at most {units} intact (limits='full' / --full allows "
                f"{size} bytes on disk, cut short on the way to the host)"
            )
        if len(raw) > size:
            raise ArgumentError(
                f"KVP {what} {quote(text)} is {len(raw)} bytes in UTF-8; a "
                f"record holds at most {size}"
            )
    return raw_key, raw_value


def encode_record(key: str, value: str, limits: str = SAFE) -> bytes:
    """One 2560-byte record. Raises :class:`ArgumentError` as :func:`check_item` does."""
    raw_key, raw_value = check_item(key, value, limits)
    return raw_key.ljust(KEY_SIZE, b"\0") + raw_value.ljust(VALUE_SIZE, b"\0")


def encode_raw(key: str, value: str) -> bytes:
    """A record for a key and value that came out of :func:`decode_record`, unchecked.

    Used when rewriting a file around records other programs wrote, so that they stay
    byte for byte what they were (up to each field's first NUL).
    """
    raw_key = key.encode(_CODEC, _ERRORS)[:KEY_SIZE]
    raw_value = value.encode(_CODEC, _ERRORS)[:VALUE_SIZE]
    return raw_key.ljust(KEY_SIZE, b"\0") + raw_value.ljust(VALUE_SIZE, b"\0")


def find_key(data: bytes, key: str) -> list[int]:
    """The indices of *key*'s records in *data* (whole records), decoding nothing.

    A record is *key*'s when its key field starts with the key's bytes and a NUL (or is
    exactly them, for a 512-byte key): the same match as decoding and comparing.
    """
    try:
        raw = key.encode(_CODEC, _ERRORS)
    except UnicodeEncodeError:
        return []  # no record decodes to a lone surrogate outside surrogateescape's range
    if len(raw) > KEY_SIZE or b"\0" in raw:
        return []
    field = raw + b"\0" if len(raw) < KEY_SIZE else raw
    return [i for i in range(len(data) // RECORD_SIZE) if data.startswith(field, i * RECORD_SIZE)]


def _field(raw: bytes) -> str:
    end = raw.find(b"\0")
    return (raw if end < 0 else raw[:end]).decode(_CODEC, _ERRORS)


def decode_record(record: bytes) -> tuple[str, str]:
    """``(key, value)`` of one 2560-byte record: each field up to its first NUL.

    Raises :class:`KvpError` when *record* is not 2560 bytes.
    """
    if len(record) != RECORD_SIZE:
        raise KvpError(f"a KVP record is {RECORD_SIZE} bytes, not {len(record)}")
    return _field(record[:KEY_SIZE]), _field(record[KEY_SIZE:])


def check_size(size: int, where: str = "the pool") -> int:
    """The number of records in *size* bytes; :class:`KvpError` when it is not whole."""
    count, rest = divmod(size, RECORD_SIZE)
    if rest:
        raise KvpError(
            f"{where} is {size} bytes, not a multiple of {RECORD_SIZE}: a writer stopped "
            f"half-way or it is not a KVP pool; {count} whole records and {rest} bytes "
            "more. Clear it (`hvsock kvp clear`) or restore it; hvsock will not guess"
        )
    return count


def decode_pool(data: bytes, where: str = "the pool") -> list[tuple[str, str]]:
    """Every record of a pool file, in file order, duplicates kept.

    Raises :class:`KvpError` when the size is not a multiple of 2560 bytes.
    """
    count = check_size(len(data), where)
    view = memoryview(data)
    return [
        decode_record(bytes(view[i * RECORD_SIZE : (i + 1) * RECORD_SIZE])) for i in range(count)
    ]


def iter_records(data: bytes) -> Iterator[tuple[str, str]]:
    """Like :func:`decode_pool`, lazily; the size must already be checked."""
    for start in range(0, len(data) - len(data) % RECORD_SIZE, RECORD_SIZE):
        yield decode_record(data[start : start + RECORD_SIZE])


def encode_pool(items: Iterable[tuple[str, str]], limits: str = SAFE) -> bytes:
    """A whole pool file from ``(key, value)`` pairs, each checked against *limits*."""
    return b"".join(encode_record(k, v, limits) for k, v in items)


def latest(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Key -> value, the last record winning, as the host keeps duplicates."""
    out: dict[str, str] = {}
    for key, value in items:
        out.pop(key, None)  # keep the order of the winning record
        out[key] = value
    return out
