"""Opt-out keywords: STOP, START and HELP and their synonyms.

A body is a keyword only when the whole of it is one keyword; a keyword inside a sentence
("please stop texting me") is conversation, and guessing at intent there would unsubscribe
people who did not ask to be. Before the table lookup the body is:

1. cleared of invisible characters: format characters (Unicode category Cf: zero-width
   space, zero-width joiner, word joiner, BOM, soft hyphen, ...), variation selectors and the
   combining grapheme joiner. Phones and copy-paste insert them; they cannot be seen, so
   "STOP" with a zero-width space in it still reads as STOP to the person who sent it;
2. NFKC-normalised, so full-width ("ＳＴＯＰ"), mathematical ("𝐒𝐓𝐎𝐏") and other
   compatibility forms become plain letters, and non-breaking and other Unicode spaces become
   ordinary spaces;
3. trimmed of surrounding whitespace, and of a trailing run of punctuation (any Unicode
   category P*, as sent or as normalised) and spaces: "STOP.", "Stop!!", "STOP !" (French
   spacing) and even "stop :)" count;
4. read through one pair of quotes around it: "STOP", “STOP”, 'stop', «STOP», „STOP“,
   「STOP」, also with punctuation inside or after the closing quote ("STOP!", "STOP".).
   People quote the word they were told to text. The pairs are `QUOTE_PAIRS`;
5. case-folded.

Decisions (what is NOT a keyword):

- Symbols and emoji are content, not punctuation: "STOP 🛑", "stop 😂" and "STOP <3" are
  not keywords. An emoji usually means the message is conversational, and this keeps the
  rule simple to state: word, then only punctuation.
- Leading punctuation is not ignored, but for one pair of quotes: "(STOP)", "-stop",
  "¿HELP?" are not keywords, and neither are an unclosed quote ("STOP), mismatched quotes
  ('STOP") or two pairs (""STOP"").
- Two words are not a keyword, even two keywords: "STOP STOP", "STOP ALL", "OPT OUT".
- Combining accents are not stripped ("stóp" is not "stop"), and no look-alike (confusable)
  letters from other scripts are mapped (Cyrillic "СТОП" is not "STOP").
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal

Keyword = Literal["stop", "start", "help"]

# The documented tables: every word of a family means the same thing.
STOP_WORDS: Final = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT")
START_WORDS: Final = ("START", "UNSTOP", "YES", "SUBSCRIBE")
HELP_WORDS: Final = ("HELP", "INFO")

KEYWORD_FAMILIES: Final[Mapping[Keyword, tuple[str, ...]]] = MappingProxyType(
    {"stop": STOP_WORDS, "start": START_WORDS, "help": HELP_WORDS}
)

_BY_WORD: Final[Mapping[str, Keyword]] = MappingProxyType(
    {word.casefold(): family for family, words in KEYWORD_FAMILIES.items() for word in words}
)
_SPELLING: Final[Mapping[str, str]] = MappingProxyType(
    {word.casefold(): word for words in KEYWORD_FAMILIES.values() for word in words}
)

# Opening quote -> the quotes that may close it (English, German, French, Scandinavian and
# CJK usage, and full-width forms, which NFKC would turn into ASCII only after this step).
QUOTE_PAIRS: Final[Mapping[str, str]] = MappingProxyType(
    {
        '"': '"',
        "'": "'",
        "“": "”“",
        "”": "”",
        "„": "“”",
        "‘": "’‘",
        "’": "’",
        "‚": "‘’",
        "«": "»",
        "»": "«»",
        "‹": "›",
        "›": "‹›",
        "「": "」",
        "『": "』",
        "\uff02": "\uff02",
        "\uff07": "\uff07",
    }
)

# Invisible characters that are not format characters (Cf) but still render as nothing.
_INVISIBLE_MARKS: Final = frozenset(
    ["\u034f"]  # combining grapheme joiner
    + [chr(cp) for cp in range(0xFE00, 0xFE10)]  # variation selectors 1-16 (emoji style)
    + [chr(cp) for cp in range(0xE0100, 0xE01F0)]  # variation selectors 17-256
)


def match_keyword(body: str | None) -> Keyword | None:
    """The keyword family `body` is, or None when it is not exactly one keyword."""
    return _BY_WORD.get(_normalise(body)) if body else None


def texted_word(body: str | None) -> str | None:
    """The table word `body` is ("UNSUBSCRIBE" for "unsubscribe!"), or None like
    `match_keyword`."""
    return _SPELLING.get(_normalise(body)) if body else None


def _normalise(body: str) -> str:
    # Trimmed before normalising too: a few punctuation marks (‗ U+2017, ‾ U+203E) normalise
    # to a space and a combining mark, which is no longer punctuation. Quotes only here, so
    # that one pair at most is read through.
    text = body if body.isascii() else _drop_invisible(body)  # ASCII: none invisible
    text = _trim(_unquote(text.strip()))
    return _trim(unicodedata.normalize("NFKC", text)).casefold()


def _drop_invisible(text: str) -> str:
    return "".join(
        ch for ch in text if ch not in _INVISIBLE_MARKS and unicodedata.category(ch) != "Cf"
    )


def _unquote(text: str) -> str:
    """`text` (stripped) inside one pair of quotes around it, or `text` when there is none.

    The closing quote may be anywhere in the trailing run of punctuation ("STOP!" and
    "STOP"! both are STOP), which is dropped anyway.
    """
    closing = QUOTE_PAIRS.get(text[:1])
    if closing is None:
        return text
    end = _trailing_end(text)
    if end > 1 and any(ch in closing for ch in text[end:]):
        return text[1:end]
    return text


def _trim(text: str) -> str:
    """Strip surrounding whitespace and a trailing run of punctuation and whitespace."""
    text = text.strip()
    return text[: _trailing_end(text)]


def _trailing_end(text: str) -> int:
    """Where the trailing run of punctuation and whitespace of `text` starts."""
    end = len(text)
    while end and (text[end - 1].isspace() or unicodedata.category(text[end - 1])[0] == "P"):
        end -= 1
    return end
