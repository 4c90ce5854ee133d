"""SMS segment counting: a hand-checked reference table, and properties against a slow
reference implementation written here, independently of the module's tables and shortcuts."""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from smsbridge.policies.segments import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    Encoding,
    Segments,
    count_segments,
    is_gsm7,
)

# GSM 03.38 default alphabet as printed in 3GPP TS 23.038, column by column (0x00-0x0F,
# 0x10-0x1F, ...). "\x1b" (position 0x1B) is the escape to the extension table.
REFERENCE_BASIC_COLUMNS = [
    "@Δ 0¡P¿p",
    "£_!1AQaq",
    '$Φ"2BRbr',
    "¥Γ#3CScs",
    "èΛ¤4DTdt",
    "éΩ%5EUeu",
    "ùΠ&6FVfv",
    "ìΨ'7GWgw",
    "òΣ(8HXhx",
    "ÇΘ)9IYiy",
    "\nΞ*:JZjz",
    "Ø\x1b+;KÄkä",
    "øÆ,<LÖlö",
    "\ræ-=MÑmñ",
    "Åß.>NÜnü",
    "åÉ/?O§oà",
]
REFERENCE_BASIC = frozenset("".join(REFERENCE_BASIC_COLUMNS)) - {"\x1b"}
REFERENCE_EXTENSION = frozenset(["\f", "^", "{", "}", "\\", "[", "~", "]", "|", "€"])


def reference_count(body: str) -> Segments:
    """Split `body` into segments character by character, the slow and obvious way."""
    encoding: Encoding
    if all(ch in REFERENCE_BASIC or ch in REFERENCE_EXTENSION for ch in body):
        encoding = "GSM-7"
        single, per_segment = 160, 153

        def width(ch: str) -> int:
            return 2 if ch in REFERENCE_EXTENSION else 1
    else:
        encoding = "UCS-2"
        single, per_segment = 70, 67

        def width(ch: str) -> int:
            return 2 if ord(ch) > 0xFFFF else 1

    units = sum(width(ch) for ch in body)
    if units <= single:
        return Segments(encoding, units, 1)
    segments: list[list[str]] = [[]]
    for ch in body:
        if sum(width(c) for c in segments[-1]) + width(ch) > per_segment:
            segments.append([])
        segments[-1].append(ch)
    assert "".join("".join(s) for s in segments) == body
    assert all(sum(width(c) for c in s) <= per_segment for s in segments)
    return Segments(encoding, units, len(segments))


A, EURO, L_STROKE, GRIN = "a", "€", "ł", "😀"  # basic, extension, not GSM-7, outside the BMP

REFERENCE_TABLE = [
    # body, encoding, units, count
    ("", "GSM-7", 0, 1),  # an empty SMS is still one message
    ("a", "GSM-7", 1, 1),
    ("Hello world", "GSM-7", 11, 1),
    ("\r\n", "GSM-7", 2, 1),
    ("ΔΦΓΛΩΠΨΣΘΞ", "GSM-7", 10, 1),  # the Greek capitals are in the default alphabet
    ("ÄÖÑÜäöñüàèéùìòÇØøÅåÆæßÉ¡¿§¤£¥", "GSM-7", 29, 1),
    ("\f^{}\\[~]|€", "GSM-7", 20, 1),  # the whole extension table, two septets each
    (A * 160, "GSM-7", 160, 1),
    (A * 161, "GSM-7", 161, 2),
    (A * 306, "GSM-7", 306, 2),  # 153 x 2
    (A * 307, "GSM-7", 307, 3),  # 153 x 2 + 1
    (A * 1530, "GSM-7", 1530, 10),
    (A * 1531, "GSM-7", 1531, 11),
    (EURO * 80, "GSM-7", 160, 1),
    (EURO * 81, "GSM-7", 162, 2),  # 76 + 5: a segment of escape pairs holds 152 septets
    (A * 158 + EURO, "GSM-7", 160, 1),
    (A * 159 + EURO, "GSM-7", 161, 2),
    (A * 152 + EURO + A * 152, "GSM-7", 306, 3),  # the escape pair straddles 153: moved
    (A * 153 + EURO + A * 151, "GSM-7", 306, 2),  # the same total, no straddle
    (EURO * 76 + A * 77, "GSM-7", 229, 2),  # 152 + one 'a' fill the first segment
    ("ç", "UCS-2", 1, 1),  # only the capital Ç is GSM-7
    ("`", "UCS-2", 1, 1),  # the one printable ASCII character GSM-7 lacks
    ("\t", "UCS-2", 1, 1),
    ("\x1b", "UCS-2", 1, 1),  # a bare escape is not text
    ("Hello 👋", "UCS-2", 8, 1),
    (L_STROKE * 70, "UCS-2", 70, 1),
    (L_STROKE * 71, "UCS-2", 71, 2),
    (L_STROKE * 134, "UCS-2", 134, 2),  # 67 x 2
    (L_STROKE * 135, "UCS-2", 135, 3),  # 67 x 2 + 1
    (A * 69 + L_STROKE, "UCS-2", 70, 1),  # one non-GSM character makes the whole body UCS-2
    (A * 70 + L_STROKE, "UCS-2", 71, 2),
    (A * 160 + L_STROKE, "UCS-2", 161, 3),  # one GSM-7 segment becomes three UCS-2 ones
    (EURO * 70 + L_STROKE, "UCS-2", 71, 2),  # "€" is one UTF-16 unit in UCS-2
    (GRIN * 35, "UCS-2", 70, 1),
    (GRIN * 36, "UCS-2", 72, 2),  # 33 emoji (66 units) + 3
    (L_STROKE * 66 + GRIN + L_STROKE * 66, "UCS-2", 134, 3),  # the pair straddles 67: moved
    (L_STROKE * 67 + GRIN + L_STROKE * 65, "UCS-2", 134, 2),  # the same total, no straddle
]


@pytest.mark.parametrize(("body", "encoding", "units", "count"), REFERENCE_TABLE)
def test_reference_table(body: str, encoding: Encoding, units: int, count: int) -> None:
    assert count_segments(body) == Segments(encoding, units, count)
    assert reference_count(body) == Segments(encoding, units, count)


def test_alphabet_matches_the_standard() -> None:
    assert GSM7_BASIC == REFERENCE_BASIC
    assert len(GSM7_BASIC) == 127  # 128 positions, less the escape
    assert GSM7_EXTENSION == REFERENCE_EXTENSION


@pytest.mark.parametrize(
    ("body", "expected"),
    [("", True), ("Hi {name} €5", True), ("ç", False), ("`", False), ("😀", False)],
)
def test_is_gsm7(body: str, expected: bool) -> None:
    assert is_gsm7(body) is expected


def test_lone_surrogate_counts_as_one_unit() -> None:
    assert count_segments("\ud83d") == Segments("UCS-2", 1, 1)


# Property tests run with deadline=None: the slow reference implementation on long bodies
# must not make them flaky on a busy machine.
GSM_CHARS = sorted(REFERENCE_BASIC | REFERENCE_EXTENSION)
# Lengths cluster around the boundaries, with extension characters dense enough to straddle.
gsm_chars = st.one_of(st.sampled_from(GSM_CHARS), st.sampled_from(sorted(REFERENCE_EXTENSION)))
gsm_bodies = st.one_of(
    st.lists(gsm_chars, max_size=480),
    st.lists(gsm_chars, min_size=75, max_size=320),  # around the 160 and 2 x 153 boundaries
).map("".join)
basic_bodies = st.text(alphabet=sorted(REFERENCE_BASIC), max_size=480)
any_chars = st.characters(codec="utf-8")  # everything but surrogates
astral_chars = st.characters(min_codepoint=0x10000, max_codepoint=0x1FFFF)
ucs2_bodies = st.builds(
    lambda head, odd, tail: head + odd + tail,
    st.text(alphabet=st.one_of(any_chars, astral_chars, st.just("a")), max_size=240),
    st.sampled_from(["ł", "ç", "😀", "`", "中"]),
    st.text(alphabet=st.one_of(astral_chars, st.just("ł")), min_size=30, max_size=150),
)
bodies = st.one_of(gsm_bodies, ucs2_bodies, st.text(max_size=400))


@settings(deadline=None)
@given(gsm_bodies)
def test_gsm7_matches_the_reference(body: str) -> None:
    result = count_segments(body)
    event(f"GSM-7 count {result.count}")
    assert result == reference_count(body)
    assert result.encoding == "GSM-7"
    assert result.units == sum(2 if ch in REFERENCE_EXTENSION else 1 for ch in body)


@settings(deadline=None)
@given(ucs2_bodies)
def test_ucs2_matches_the_reference(body: str) -> None:
    result = count_segments(body)
    event(f"UCS-2 count {result.count}")
    assert result == reference_count(body)
    assert result.encoding == "UCS-2"
    assert result.units == len(body.encode("utf-16-le")) // 2


@settings(deadline=None)
@given(basic_bodies)
def test_basic_characters_are_never_ucs2(body: str) -> None:
    assert count_segments(body).encoding == "GSM-7"
    assert count_segments(body).units == len(body)


@settings(deadline=None)
@given(bodies, st.one_of(any_chars, astral_chars, st.sampled_from(GSM_CHARS)))
def test_count_is_positive_and_never_drops_when_appending(body: str, extra: str) -> None:
    before = count_segments(body).count
    assert before >= 1
    assert count_segments(body + extra).count >= before
