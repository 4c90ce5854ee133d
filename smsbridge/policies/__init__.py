"""Per-number sending policies: pure functions, no I/O, called by the workers.

A PBX number may have a policy (`smsbridge.config.PolicyConfig`). Each rule family lives in
its own module, whose docstring states its edge cases:

- `keywords`: opt-out keywords. `match_keyword` says whether an inbound body is a STOP,
  START or HELP keyword (the tables: `STOP_WORDS`, `START_WORDS`, `HELP_WORDS`), and
  `texted_word` which word of the tables it is.
- `countries`: allowed destination countries. `country_of` gives the ISO 3166 country of an
  E.164 number, `country_allowed` applies a policy's `allowed_countries`.
- `quiet_hours`: a local-time window during which nobody is texted. `quiet_until` says when
  the current window ends (DST-correct), `in_quiet_hours` whether `now` is inside one.
- `segments`: the maximum number of segments. `count_segments` counts SMS segments the way
  carriers do (GSM-7 or UCS-2), `is_gsm7` says which alphabet a body needs.
- `quotes`: smart-quote replacement. `replace_smart_quotes` turns typographic quotes, dashes
  and spaces into ASCII so they do not force UCS-2; `segments_saved` reports the gain.
"""

from smsbridge.policies.countries import country_allowed, country_of
from smsbridge.policies.keywords import Keyword, match_keyword, texted_word
from smsbridge.policies.quiet_hours import in_quiet_hours, quiet_until
from smsbridge.policies.quotes import replace_smart_quotes, segments_saved
from smsbridge.policies.segments import Segments, count_segments, is_gsm7

__all__ = [
    "Keyword",
    "Segments",
    "count_segments",
    "country_allowed",
    "country_of",
    "in_quiet_hours",
    "is_gsm7",
    "match_keyword",
    "quiet_until",
    "replace_smart_quotes",
    "segments_saved",
    "texted_word",
]
