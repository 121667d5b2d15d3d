"""Read a handful of top-level elements from the start of a Part 10 file, fast.

Why by hand: the store indexes every received instance before it is acknowledged, and
``pydicom.dcmread(stop_before_pixels=True)`` on a CT slice costs about 0.5-0.7 ms (it
builds a Dataset of every element), a tenth of the whole per-instance budget. The index
needs about fifteen short values, all near the start of the file, so this walks the
encoded elements, keeps the raw bytes of the wanted tags and stops at the first tag past
the last one wanted.

It only answers when it is sure. Anything it does not handle exactly like pydicom
(big endian or deflated transfer syntaxes, character sets other than ASCII, Latin-1 and
UTF-8, multi-valued text, malformed or truncated encodings) makes it return None, and the
caller parses with pydicom instead. tests/core/test_dicomscan.py checks that both give
the same values.
"""

from __future__ import annotations

import struct

_PREAMBLE = 128
_IMPLICIT_LE = "1.2.840.10008.1.2"
_NOT_EXPLICIT_LE = frozenset({
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
})
# VRs whose explicit encoding has two reserved bytes and a 32-bit length.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
# pydicom's Python codec for each character set handled here (absent means ISO_IR 6).
_CODECS = {"": "iso8859", "ISO_IR 6": "iso8859", "ISO_IR 100": "latin_1", "ISO_IR 192": "UTF8"}
_SPECIFIC_CHARACTER_SET = 0x00080005

_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
                        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")
_EXPLICIT_HEADER = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length


class _Unsure(Exception):
    """The encoding is not one this module reads exactly like pydicom."""


def _element_at(buf: memoryview, pos: int, implicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR or b"", value offset, value length) of the element at ``pos``."""
    if pos + 8 > len(buf):
        raise _Unsure("truncated element header")
    group, elem, vr, short_length = _EXPLICIT_HEADER.unpack_from(buf, pos)
    tag = (group << 16) | elem
    if implicit or group == 0xFFFE:  # items and delimiters have no VR in any syntax
        return tag, b"", pos + 8, _U32.unpack_from(buf, pos + 4)[0]
    if vr in _LONG_VRS:
        if pos + 12 > len(buf):
            raise _Unsure("truncated element header")
        return tag, vr, pos + 12, _U32.unpack_from(buf, pos + 8)[0]
    if vr not in _SHORT_VRS:
        raise _Unsure(f"not a VR: {vr!r}")
    return tag, vr, pos + 8, short_length


def _skip_undefined(buf: memoryview, pos: int, implicit: bool, closer: int, depth: int) -> int:
    """Position after the delimiter ``closer`` that ends an undefined-length value at ``pos``."""
    if depth > 16:
        raise _Unsure("sequences nested too deep")
    while True:
        tag, _, value, length = _element_at(buf, pos, implicit)
        if tag == closer:
            return value
        if length == _UNDEFINED:
            inner_closer = _ITEM_END if tag == _ITEM else _SEQ_END
            pos = _skip_undefined(buf, value, implicit, inner_closer, depth + 1)
        else:
            pos = value + length
        if pos > len(buf):
            raise _Unsure("truncated sequence")


def _meta(buf: memoryview) -> tuple[dict[int, bytes], int]:
    """The File Meta Information elements (always explicit VR little endian) and where the dataset starts."""
    if len(buf) < _PREAMBLE + 4 or bytes(buf[_PREAMBLE:_PREAMBLE + 4]) != b"DICM":
        raise _Unsure("no DICM prefix")
    meta: dict[int, bytes] = {}
    pos = _PREAMBLE + 4
    while pos + 8 <= len(buf) and _U16.unpack_from(buf, pos)[0] == 0x0002:
        tag, _, value, length = _element_at(buf, pos, False)
        if length == _UNDEFINED or value + length > len(buf):
            raise _Unsure("bad file meta element")
        meta[tag] = bytes(buf[value:value + length])
        pos = value + length
    return meta, pos


def scan_part10(data: bytes | bytearray | memoryview, wanted: frozenset[int], *,
                complete: bool) -> tuple[dict[int, bytes], dict[int, bytes], str] | None:
    """The File Meta elements, the raw values of the ``wanted`` top-level tags, and the codec.

    Returns (meta, values, codec): ``meta`` maps group 2 tags to their raw bytes,
    ``values`` each wanted dataset tag present to its raw bytes (a wanted tag that is
    absent is missing), ``codec`` the Python codec pydicom would decode text with.
    ``complete`` says whether ``data`` is the whole file or only its start. Returns None
    when unsure (see the module docstring), including when a partial ``data`` ends before
    the dataset reaches the last wanted tag.
    """
    try:
        return _scan(memoryview(data).cast("B"), wanted, complete)
    except (_Unsure, struct.error, UnicodeDecodeError):
        return None


def _scan(buf: memoryview, wanted: frozenset[int], complete: bool) -> tuple[dict[int, bytes], dict[int, bytes], str]:
    meta, pos = _meta(buf)
    syntax = meta.get(0x00020010, b"").decode("ascii").strip("\x00 ")
    if not syntax or syntax in _NOT_EXPLICIT_LE:
        raise _Unsure(f"transfer syntax {syntax!r}")
    implicit = syntax == _IMPLICIT_LE
    last = max(wanted)
    raw: dict[int, bytes] = {}
    previous = -1
    while True:
        if pos == len(buf):
            if complete:
                break  # a dataset without pixel data: every element was seen
            raise _Unsure("the start of the file ends before the last wanted element")
        tag, vr, value, length = _element_at(buf, pos, implicit)
        if tag <= previous:
            raise _Unsure("elements out of order")
        previous = tag
        if tag > last or tag == _PIXEL_DATA:
            break
        if length == _UNDEFINED:
            pos = _skip_undefined(buf, value, implicit, _SEQ_END, 0)
            continue
        end = value + length
        if end > len(buf):
            raise _Unsure("data ends inside an element")
        if tag in wanted or tag == _SPECIFIC_CHARACTER_SET:
            if vr in (b"SQ", b"UN"):
                raise _Unsure(f"wanted element {tag:08X} has VR {vr!r}")
            raw[tag] = bytes(buf[value:end])
        pos = end
    charset = raw.pop(_SPECIFIC_CHARACTER_SET, b"").decode("ascii").strip("\x00 ")
    codec = _CODECS.get(charset)
    if codec is None:
        raise _Unsure(f"character set {charset!r}")
    return meta, raw, codec


def text(value: bytes, codec: str) -> str:
    """A single-valued text element as pydicom gives it, stripped; raises ValueError if unsure."""
    decoded = value.decode(codec)
    if "\\" in decoded:
        raise ValueError("multi-valued text")  # pydicom would give a MultiValue
    return decoded.strip("\x00 ")


def us(value: bytes) -> int:
    """A single US value; raises ValueError for any other length."""
    if len(value) != 2:
        raise ValueError(f"US value of length {len(value)}")
    return int(_U16.unpack(value)[0])
