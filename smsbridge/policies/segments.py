"""SMS segment counting, the way carriers split and bill a message.

A body is sent in GSM-7 when every character is in the GSM 03.38 default alphabet or its
extension table, otherwise in UCS-2 (in practice UTF-16: characters outside the Basic
Multilingual Plane, such as most emoji, travel as surrogate pairs).

A concatenated message spends part of each segment on its User Data Header, so:

========  ================  ==========================================================
encoding  one segment       each segment of a longer message
========  ================  ==========================================================
GSM-7     up to 160 septets 153 septets; an escape pair (extension character) is never
                            split, so a segment may hold 152
UCS-2     up to 70 units    67 UTF-16 code units; a surrogate pair is never split, so a
                            segment may hold 66
========  ================  ==========================================================

Decisions:

- An empty body is one segment of 0 units in GSM-7: an SMS with no text is still a message
  that the carrier delivers and bills.
- Only CAPITAL C with cedilla (Ç) is in the alphabet, as in 3GPP TS 23.038 and Unicode's
  GSM0338 mapping; "ç" forces UCS-2 (some handsets fold it to Ç, carriers do not promise to).
- The escape character itself (U+001B) is not text: a body that contains it is UCS-2, so a
  stray ESC can never be read by a handset as the start of an extension character.
- A lone surrogate (possible in a Python str, never in valid text) counts as one code unit.

This runs on every outbound message, so the common cases (only default-alphabet characters,
or UCS-2 without surrogate pairs) are computed from `len` and `str.count` without a Python
loop; only bodies that are long and contain wide characters are packed one by one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

Encoding = Literal["GSM-7", "UCS-2"]

# The GSM 03.38 default alphabet, in code order (0x00-0x7F), without 0x1B (the escape to the
# extension table, which is not a character of its own).
GSM7_BASIC: Final[frozenset[str]] = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ"  # 0x10-0x1A; 0x1B is the escape
    "ÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)

# The extension table: each of these is sent as ESC + character, two septets.
GSM7_EXTENSION: Final[frozenset[str]] = frozenset("\f^{}\\[~]|€")

GSM7_ALL: Final[frozenset[str]] = GSM7_BASIC | GSM7_EXTENSION

GSM7_SINGLE_SEGMENT: Final = 160
GSM7_PER_SEGMENT: Final = 153
UCS2_SINGLE_SEGMENT: Final = 70
UCS2_PER_SEGMENT: Final = 67

# `str.count` per extension character beats a Python loop over the body.
_EXTENSION_CHARS: Final = tuple(GSM7_EXTENSION)


@dataclass(frozen=True)
class Segments:
    """How a body is encoded and how many segments it costs."""

    encoding: Encoding
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    count: int


def is_gsm7(body: str) -> bool:
    """True when every character is in the GSM-7 default alphabet or its extension table."""
    return GSM7_ALL.issuperset(body)


def count_segments(body: str) -> Segments:
    """Encoding, units and segment count of `body` (see the module docstring for the rules)."""
    if is_gsm7(body):
        wide = sum(body.count(ch) for ch in _EXTENSION_CHARS)
        units = len(body) + wide
        if units <= GSM7_SINGLE_SEGMENT:
            count = 1
        elif wide == 0:
            count = _ceil_div(units, GSM7_PER_SEGMENT)
        else:
            count = _pack((2 if ch in GSM7_EXTENSION else 1 for ch in body), GSM7_PER_SEGMENT)
        return Segments("GSM-7", units, count)

    # Each character outside the BMP is two UTF-16 code units; "surrogatepass" lets a lone
    # surrogate through as one unit instead of raising.
    units = len(body.encode("utf-16-le", "surrogatepass")) // 2
    if units <= UCS2_SINGLE_SEGMENT:
        count = 1
    elif units == len(body):  # no surrogate pairs: nothing can straddle a boundary
        count = _ceil_div(units, UCS2_PER_SEGMENT)
    else:
        count = _pack((2 if ord(ch) > 0xFFFF else 1 for ch in body), UCS2_PER_SEGMENT)
    return Segments("UCS-2", units, count)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _pack(widths: Iterable[int], capacity: int) -> int:
    """Segments needed when characters of these widths are packed in order, none split."""
    count, used = 1, 0
    for width in widths:
        if used + width > capacity:
            count += 1
            used = 0
        used += width
    return count
