"""Smart-quote replacement: the table, letters left alone, and the segment guarantees."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smsbridge.policies.quotes import REPLACEMENTS, replace_smart_quotes, segments_saved
from smsbridge.policies.segments import GSM7_BASIC, count_segments, is_gsm7


@pytest.mark.parametrize(
    ("body", "expected", "replaced"),
    [
        ("Plain text, no change.", "Plain text, no change.", 0),
        ("", "", 0),
        ("It’s", "It's", 1),
        ("‘quoted’", "'quoted'", 2),
        ("“Hello,” she said", '"Hello," she said', 2),
        ("„Hallo“", '"Hallo"', 2),
        ("‚Hallo‘", "'Hallo'", 2),
        ("‛x‟", "'x\"", 2),
        ("5′ 11″", "5' 11\"", 2),
        ("«Bonjour»", '"Bonjour"', 2),
        ("‹Bonjour›", "'Bonjour'", 2),
        ("`ticks´", "'ticks'", 2),
        ("9–5, Mon—Fri", "9-5, Mon-Fri", 2),
        ("a‐b‑c‒d―e", "a-b-c-d-e", 4),
        ("−5 °C", "−5 °C", 0),  # "°" is not GSM-7: the minus alone saves nothing
        ("Wait…", "Wait...", 1),
        ("10\u00a0000\u202f€", "10 000 €", 2),  # no-break and narrow no-break spaces
        ("a\u2003b\u3000c\td", "a b c d", 3),  # em space, ideographic space, tab
        ("line\u2028next\u2029para", "line\nnext\npara", 2),
        ("zero\u200bwidth\ufeff\u2060soft\u00adhyphen", "zerowidthsofthyphen", 4),
        # Still UCS-2 afterwards and no segment saved: sent as written.
        ("don’t 😀", "don’t 😀", 0),
        ("ça va? “Très” bien", "ça va? “Très” bien", 0),  # "ç" is not GSM-7, but a letter
        ("你好“世界”\u3000再见—", "你好“世界”\u3000再见—", 0),
        ("Hi “Bob” 😀", "Hi “Bob” 😀", 0),
        # Still UCS-2, but a segment shorter: replaced.
        ("😀" + "x" * 68 + "\u200b\u200b", "😀" + "x" * 68, 2),  # 72 units -> 70
    ],
)
def test_replacements(body: str, expected: str, replaced: int) -> None:
    assert replace_smart_quotes(body) == (expected, replaced)


@pytest.mark.parametrize(
    "body",
    [
        "ʼ modifier letter apostrophe",  # U+02BC is a letter
        "ç ł ő ж 中 ß",
        "👨‍👩‍👧 family",  # the zero-width joiners hold the emoji together
        "کی\u200cخواهی",  # the zero-width non-joiner is part of Persian spelling
        "°",
        "•",
        "½",
    ],
)
def test_letters_and_unlisted_characters_are_kept(body: str) -> None:
    assert replace_smart_quotes(body) == (body, 0)


def test_the_table_only_maps_non_gsm7_non_letters_to_gsm7_basic() -> None:
    for source, target in REPLACEMENTS.items():
        assert not is_gsm7(source), source
        assert not unicodedata.category(source).startswith("L"), source
        assert set(target) <= GSM7_BASIC, source


def test_one_smart_quote_costs_segments_and_replacing_saves_them() -> None:
    body = "Your appointment is tomorrow at 9:30. " * 4 + "Don’t be late."
    after, replaced = replace_smart_quotes(body)
    assert replaced == 1
    assert count_segments(body).count == 3  # 166 characters in UCS-2
    assert count_segments(after).count == 2  # 166 septets in GSM-7
    assert segments_saved(body, after) == 1


def test_the_ellipsis_is_kept_when_expanding_it_would_cost_a_segment() -> None:
    body = "😀" + "x" * 66 + "…’"  # 70 UTF-16 units: one segment
    assert count_segments(body).count == 1
    # "..." would make it 72 units (two segments), and replacing only the quote saves
    # nothing: it stays as written.
    assert replace_smart_quotes(body) == (body, 0)
    body = "€" * 79 + "…’"  # 2 UCS-2 segments; "...'" makes 162 septets, 2 GSM-7 ones
    assert replace_smart_quotes(body) == ("€" * 79 + "...'", 2)  # GSM-7: kept
    body = "…" * 70  # one UCS-2 segment; 210 septets would be two
    assert replace_smart_quotes(body) == (body, 0)
    body = "…" * 53  # one UCS-2 segment, and 159 septets are one too
    assert replace_smart_quotes(body) == ("..." * 53, 53)


def test_segments_saved() -> None:
    assert segments_saved("a", "a") == 0
    assert segments_saved("a" * 161, "a" * 160) == 1
    assert segments_saved("a", "a" * 161) == -1


smart = st.sampled_from(sorted(REPLACEMENTS))
bodies = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.one_of(smart, st.sampled_from(["a", "€", "😀", "ł"])), max_size=300),
    st.lists(st.one_of(smart, st.just("a")), min_size=50, max_size=250).map("".join),
)


@settings(deadline=None)
@given(bodies)
def test_replacing_never_costs_a_segment(body: str) -> None:
    after, replaced = replace_smart_quotes(body)
    assert count_segments(after).count <= count_segments(body).count
    assert segments_saved(body, after) >= 0
    assert (replaced == 0) == (after == body)


@settings(deadline=None)
@given(bodies)
def test_a_replacement_is_kept_only_when_it_pays(body: str) -> None:
    """Only for GSM-7 or for fewer segments is the sender's text changed."""
    after, _ = replace_smart_quotes(body)
    if after != body:
        assert is_gsm7(after) or segments_saved(body, after) > 0


@settings(deadline=None)
@given(bodies)
def test_replacing_is_idempotent(body: str) -> None:
    after, _ = replace_smart_quotes(body)
    assert replace_smart_quotes(after) == (after, 0)
