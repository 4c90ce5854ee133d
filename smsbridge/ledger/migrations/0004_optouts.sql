-- Recipients who texted STOP (or were added by an operator) to one of our numbers: nothing is
-- sent to them from that number until they text START (or are removed).
CREATE TABLE optouts (
    number     text NOT NULL,   -- ours, E.164
    recipient  text NOT NULL,   -- theirs, E.164
    keyword    text,            -- what they texted ('stop', ...), null when an operator added it
    by         text NOT NULL CHECK (by IN ('keyword', 'console', 'cli', 'api')),
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (number, recipient)
);

-- Every change, for the record: who opted whom out or in, how and when.
CREATE TABLE optout_changes (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number     text NOT NULL,
    recipient  text NOT NULL,
    change     text NOT NULL CHECK (change IN ('opted_out', 'opted_in')),
    keyword    text,
    by         text NOT NULL,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX optout_changes_pair ON optout_changes (number, recipient, at);
