-- When each pair's newest change was made, whether or not it changed anything. optout_changes
-- keeps only the changes that did: a STOP that found the recipient opted out already is not
-- there, yet a START texted before it and handled after it must still lose to it.
CREATE TABLE optout_latest (
    number     text NOT NULL,
    recipient  text NOT NULL,
    at         timestamptz NOT NULL,
    PRIMARY KEY (number, recipient)
);

INSERT INTO optout_latest (number, recipient, at)
SELECT number, recipient, max(at) FROM optout_changes GROUP BY number, recipient;
