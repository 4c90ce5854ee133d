"""Smart-quote replacement: typographic punctuation that needlessly forces UCS-2.

One curly apostrophe from a phone keyboard or a word processor turns a 160-character GSM-7
message into a UCS-2 one that holds 70; replacing it with "'" keeps the message in GSM-7.
Only characters with an obvious ASCII equivalent are replaced, and never a letter (so
"modifier letter apostrophe" U+02BC stays, and so do accented letters and emoji).

The table, `REPLACEMENTS`:

- single quotes and primes ‘ ’ ‚ ‛ ′ ‵ → ', and the backtick ` and acute accent ´, which
  are typed as apostrophes (the backtick is ASCII, but not in GSM-7);
- double quotes and primes “ ” „ ‟ ″ ‶ → ";
- guillemets « » → " and ‹ › → ': they are quotation marks, and a quotation mark keeps
  the meaning and the length (rather than "<<" ">>");
- dashes and minus ‐ ‑ ‒ – — ― − → -;
- ellipsis … → ... (the only replacement longer than one character);
- no-break and other Unicode spaces, and the tab, → a space; line and paragraph separators
  → a newline;
- invisible characters that only get in the way of GSM-7 (zero-width space, word joiner,
  byte-order mark, soft hyphen) are removed. Zero-width (non-)joiners are kept: they change
  how emoji and some scripts render.

Only for a gain: the replacement is kept when the result is GSM-7 or costs fewer segments.
A body that stays UCS-2 anyway ("Hi “Bob” 😀", or Chinese text with a curly quote) is sent as
written, not rewritten for nothing.

Never costing a segment: replacing one character by one (or by none) can never add a
segment, whether the body stays UCS-2 (one code unit for one) or becomes GSM-7 (a GSM-7
segment holds at least 76 characters, a UCS-2 one at most 67). "…" → "..." can: in a body
that stays UCS-2, or one full of ellipses, the two extra characters may cross a segment
boundary. When replacing everything would cost a segment, the ellipses are kept and only
the one-for-one replacements are made.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from smsbridge.policies.segments import count_segments, is_gsm7

_SINGLE_QUOTES = "‘’‚‛′‵`´‹›"
_DOUBLE_QUOTES = "“”„‟″‶«»"
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"
_SPACES = "\t\u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u202f\u205f\u3000"
_LINE_BREAKS = "\u2028\u2029"
_INVISIBLE = "\u200b\u2060\ufeff\u00ad"

REPLACEMENTS: Final[Mapping[str, str]] = MappingProxyType(
    {ch: "'" for ch in _SINGLE_QUOTES}
    | {ch: '"' for ch in _DOUBLE_QUOTES}
    | {ch: "-" for ch in _DASHES}
    | {"…": "..."}
    | {ch: " " for ch in _SPACES}
    | {ch: "\n" for ch in _LINE_BREAKS}
    | {ch: "" for ch in _INVISIBLE}
)

# Replacements that cannot cost a segment (see the module docstring).
_NEVER_LONGER: Final[Mapping[str, str]] = MappingProxyType(
    {ch: to for ch, to in REPLACEMENTS.items() if len(to) <= 1}
)

_ANY: Final = re.compile("[" + re.escape("".join(REPLACEMENTS)) + "]")
_NEVER_LONGER_ANY: Final = re.compile("[" + re.escape("".join(_NEVER_LONGER)) + "]")


def replace_smart_quotes(body: str) -> tuple[str, int]:
    """`body` with typographic punctuation made ASCII, and how many characters were replaced.

    Changes `body` only when the result is GSM-7 or shorter in segments; never costs a
    segment, and is idempotent: replacing again changes nothing.
    """
    if is_gsm7(body):  # the common case: nothing in the table is GSM-7
        return body, 0
    after, replaced = _ANY.subn(lambda m: REPLACEMENTS[m.group()], body)
    if not replaced:
        return body, 0
    before_count = count_segments(body).count
    after_count = count_segments(after).count
    if after_count > before_count:
        after, replaced = _NEVER_LONGER_ANY.subn(lambda m: _NEVER_LONGER[m.group()], body)
        after_count = count_segments(after).count
    # The sender's text is changed only for a gain: GSM-7 (room for more in each segment) or
    # fewer segments. A body that stays UCS-2 at the same length is sent as written.
    if replaced and (is_gsm7(after) or after_count < before_count):
        return after, replaced
    return body, 0


def segments_saved(before: str, after: str) -> int:
    """Segments `after` costs fewer than `before` (negative if it costs more)."""
    return count_segments(before).count - count_segments(after).count
