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
4. case-folded.

Decisions (what is NOT a keyword):

- Symbols and emoji are content, not punctuation: "STOP 🛑", "stop 😂" and "STOP <3" are
  not keywords. An emoji usually means the message is conversational, and this keeps the
  rule simple to state: word, then only punctuation.
- Leading punctuation is not ignored: "(STOP)", "-stop", "¿HELP?" are not keywords.
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

# Invisible characters that are not format characters (Cf) but still render as nothing.
_INVISIBLE_MARKS: Final = frozenset(
    ["\u034f"]  # combining grapheme joiner
    + [chr(cp) for cp in range(0xFE00, 0xFE10)]  # variation selectors 1-16 (emoji style)
    + [chr(cp) for cp in range(0xE0100, 0xE01F0)]  # variation selectors 17-256
)


def match_keyword(body: str | None) -> Keyword | None:
    """The keyword family `body` is, or None when it is not exactly one keyword."""
    if not body:
        return None
    # Trimmed before normalising too: a few punctuation marks (‗ U+2017, ‾ U+203E) normalise
    # to a space and a combining mark, which is no longer punctuation.
    text = _trim(body if body.isascii() else _drop_invisible(body))  # ASCII: none invisible
    return _BY_WORD.get(_trim(unicodedata.normalize("NFKC", text)).casefold())


def _drop_invisible(text: str) -> str:
    return "".join(
        ch for ch in text if ch not in _INVISIBLE_MARKS and unicodedata.category(ch) != "Cf"
    )


def _trim(text: str) -> str:
    """Strip surrounding whitespace and a trailing run of punctuation and whitespace."""
    text = text.strip()
    end = len(text)
    while end and (text[end - 1].isspace() or unicodedata.category(text[end - 1])[0] == "P"):
        end -= 1
    return text[:end]
