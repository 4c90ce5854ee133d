"""Opt-out keywords: tables of what is and is not a keyword, and properties."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smsbridge.policies.keywords import (
    HELP_WORDS,
    KEYWORD_FAMILIES,
    START_WORDS,
    STOP_WORDS,
    Keyword,
    match_keyword,
)


def full_width(text: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in text)


def test_the_documented_tables() -> None:
    assert STOP_WORDS == (
        "STOP",
        "STOPALL",
        "UNSUBSCRIBE",
        "CANCEL",
        "END",
        "QUIT",
        "REVOKE",
        "OPTOUT",
    )
    assert START_WORDS == ("START", "UNSTOP", "YES", "SUBSCRIBE")
    assert HELP_WORDS == ("HELP", "INFO")
    assert dict(KEYWORD_FAMILIES) == {"stop": STOP_WORDS, "start": START_WORDS, "help": HELP_WORDS}


EVERY_WORD = [(word, family) for family, words in KEYWORD_FAMILIES.items() for word in words]


DRESSES: dict[str, Callable[[str], str]] = {
    "as-is": lambda w: w,
    "lower": str.lower,
    "title": str.title,
    "mixed-case": lambda w: w[0].lower() + w[1:],
    "full-width": full_width,
    "spaces": lambda w: f"  {w}\n",
    "tab-crlf": lambda w: f"\t{w.lower()} \r\n",
    "period": lambda w: w + ".",
    "bang": lambda w: w + "!",
    "bang-bang": lambda w: w + "!!",
    "mixed-punctuation": lambda w: w + "?!...",
    "french-spacing": lambda w: w + " !",
    "no-break-space-bang": lambda w: w + "\u00a0!",
    "ellipsis": lambda w: w + "…",
    "ideographic-full-stop": lambda w: w + "。",
    "full-width-bang": lambda w: full_width(w + "!"),
    "no-break-spaces": lambda w: f"\u00a0{w}\u00a0",
    "ideographic-spaces": lambda w: f"\u3000{w}\u3000",
    "zero-width-space-inside": lambda w: w[:1] + "\u200b" + w[1:],
    "byte-order-mark": lambda w: "\ufeff" + w,
    "word-joiner": lambda w: w + "\u2060",
    "variation-selector": lambda w: w + "!\ufe0f",
    "double-quotes": lambda w: f'"{w}"',
    "single-quotes": lambda w: f"'{w.lower()}'",
    "curly-quotes": lambda w: f"“{w}”",
    "curly-single-quotes": lambda w: f"‘{w}’",
    "german-quotes": lambda w: f"„{w}“",
    "guillemets": lambda w: f"« {w} »",
    "corner-brackets": lambda w: f"「{w}」",
    "full-width-quotes": lambda w: f"＂{w}＂",
    "quotes-then-bang": lambda w: f'"{w}"!',
    "bang-inside-quotes": lambda w: f"“{w}!”",
}


@pytest.mark.parametrize(("word", "family"), EVERY_WORD)
@pytest.mark.parametrize("dress", list(DRESSES.values()), ids=list(DRESSES))
def test_keywords_match_their_family(
    word: str, family: Keyword, dress: Callable[[str], str]
) -> None:
    assert match_keyword(dress(word)) == family


@pytest.mark.parametrize(
    ("body", "family"),
    [
        ("ＳＴＯＰ", "stop"),
        ("ｓｔｏｐ！", "stop"),
        ("𝐒𝐓𝐎𝐏", "stop"),  # mathematical bold: NFKC folds it
        ("Ⓗⓔⓛⓟ", "help"),
        ("Stop!!", "stop"),
        ("STOP.", "stop"),
        ("stop :)", "stop"),  # ":)" is punctuation only
        ("Unsubscribe", "stop"),
        ("opt\u00adout", "stop"),  # soft hyphen
        ("yes", "start"),
        ("Info?", "help"),
        ("STOP‼", "stop"),  # U+203C is punctuation
        ("STOP‼️", "stop"),  # ... with its emoji variation selector
        ("ﬅop", "stop"),  # the "st" ligature
    ],
)
def test_keyword_examples(body: str, family: Keyword) -> None:
    assert match_keyword(body) == family


@pytest.mark.parametrize(
    "body",
    [
        None,
        "",
        "   ",
        "!",
        "stop please",
        "please stop",
        "STOP STOP",
        "STOP ALL",
        "OPT OUT",
        "OPT-OUT",
        "don't stop",
        "STOP 🛑",  # symbols and emoji are content, not punctuation
        "stop 😂",
        "STOP🛑",
        "STOP <3",
        "STOP 1",
        "STOP$",
        "(STOP)",  # leading punctuation is not ignored, but for one pair of quotes
        "-stop",
        "¿HELP?",
        '"STOP',  # a quote that is not closed
        "'STOP\"",  # ... or closed by another
        '""STOP""',  # one pair only
        "“'STOP'”",
        "(“STOP”)",
        '"stop please"',  # a quoted sentence is still a sentence
        '"STOP STOP"',
        '"STOP" please',
        '"STOP"🛑',
        "STOPP",
        "STO P",
        "S T O P",
        "sto",
        "stóp",
        "sto\u0301p",  # combining accent
        "СТОП",  # Cyrillic
        "ЅТОР",  # Cyrillic look-alikes of S, T, O, P
        "stop\u0332",  # combining underline
        "YES!!! I'll be there",
        "HELPFUL",
        "Ending soon",
        "stop\nstop",
    ],
)
def test_not_keywords(body: str | None) -> None:
    assert match_keyword(body) is None


KEYWORD_LETTERS = frozenset(
    "".join(word.casefold() for word in map(str, sum(KEYWORD_FAMILIES.values(), ())))
)


def foreign_letters(text: str) -> set[str]:
    """Letters of `text`, normalised, that appear in no keyword."""
    normalised = unicodedata.normalize("NFKC", text).casefold()
    return {ch for ch in normalised if ch.isalpha() and ch not in KEYWORD_LETTERS}


keyword_words = st.sampled_from([word for word, _ in EVERY_WORD])
letters = st.characters(categories=["Lu", "Ll", "Lt", "Lm", "Lo"])
near_misses = st.builds(
    lambda word, at, letter, tail: word[:at] + letter + word[at:] + tail,
    keyword_words,
    st.integers(min_value=0, max_value=11),
    letters,
    st.text(alphabet=st.sampled_from(" .!?\u200b\u00a0"), max_size=3),
)


@settings(deadline=None)
@given(st.one_of(st.text(), near_misses))
def test_a_foreign_letter_is_never_a_keyword(body: str) -> None:
    if foreign_letters(body):
        assert match_keyword(body) is None


@settings(deadline=None)
@given(
    keyword_words,
    st.lists(st.booleans(), min_size=11, max_size=11),
    st.booleans(),
    st.text(alphabet=st.sampled_from(" \t\n\u00a0\u3000\u200b"), max_size=3),
    st.text(alphabet=st.characters(categories=["P"]), max_size=4),
)
def test_dressed_keywords_match(
    word: str, upper: list[bool], wide: bool, space: str, punctuation: str
) -> None:
    cased = "".join(ch.upper() if up else ch.lower() for ch, up in zip(word, upper, strict=False))
    body = space + (full_width(cased) if wide else cased) + space + punctuation + space
    family = next(f for f, words in KEYWORD_FAMILIES.items() if word in words)
    assert match_keyword(body) == family


quote_pairs = st.sampled_from(['""', "''", "“”", "‘’", "„“", "«»", "»«", "‹›", "「」", "＂＂"])


@settings(deadline=None)
@given(keyword_words, quote_pairs, st.text(alphabet=st.sampled_from(" .!?"), max_size=3))
def test_one_pair_of_quotes_is_read_through_and_two_are_not(
    word: str, pair: str, punctuation: str
) -> None:
    family = next(f for f, words in KEYWORD_FAMILIES.items() if word in words)
    opening, closing = pair[0], pair[1]
    assert match_keyword(opening + word + punctuation + closing + punctuation) == family
    assert match_keyword(opening + opening + word + closing + closing + punctuation) is None
