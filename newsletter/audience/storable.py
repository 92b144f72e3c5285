"""Text and JSON as every database can store them, the same on SQLite and PostgreSQL.

SQLite keeps whatever it is given; PostgreSQL refuses a NUL in text, a name
longer than its column (`schema.subscribers.name`, 200 characters) and
NaN or Infinity in JSON, and no driver writes a lone surrogate.  One such
cell failed a whole import there, and a SQLite store's data could not move
to PostgreSQL; a lone surrogate stored on either stopped every export.  So names, reasons and decoded JSON are made storable here,
before either database sees them: what is kept is then the same on both.

Pure functions (no database, no I/O): the import's reader process uses them too.
"""

from __future__ import annotations

import math
import re
from typing import Any

# A str can hold lone surrogates, which no encoding writes: a JSON "\ud800",
# or a byte of argv that is not UTF-8 (kept by surrogateescape).  The
# database driver then fails the whole transaction.
_SURROGATES = re.compile("[\ud800-\udfff]")


def storable_name(value: str) -> str:
    """`value` with each lone surrogate as U+FFFD, as a form post's undecodable
    bytes already arrive: what every name is, before it is stored."""
    return _SURROGATES.sub("\ufffd", value)


# Line breaks of every kind, other control characters (NUL, ESC, DEL) and
# whitespace runs.  A name typed into a form or on a command line is one line;
# a bot's name with line breaks would write its own paragraphs into the
# confirmation email, and PostgreSQL refuses NUL in text outright.
_NAME_JUNK = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029]+")
MAX_NAME = 200  # the name column's length (`schema.subscribers`)


def one_line(value: str) -> str:
    """`value` as one printable line: controls and whitespace runs one space."""
    return _NAME_JUNK.sub(" ", storable_name(value)).strip()


def clean_name(value: str) -> str:
    """A name typed by someone (a signup form, `subscribers add --name`, a
    file's name cell), as one printable line of at most MAX_NAME characters."""
    return one_line(value)[:MAX_NAME].rstrip()


# A JSON escape of a UTF-16 surrogate (`\ud83d`): the only way one reaches a
# decoded value, since every file is decoded strictly or with replacements.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def storable_json(text: str, value: Any) -> Any:
    """`value`, decoded from `text`, with lone surrogates as U+FFFD in every
    string and key.  A pair (`\\ud83d\\ude00`) decodes to one character;
    half of one does not, and nothing can write it (export, `--json`)."""
    if _SURROGATE_ESCAPE.search(text) is None:  # the common case: nothing to walk
        return value
    return _without_surrogates(value)


def _without_surrogates(value: Any) -> Any:
    # Recursion is bounded: decoded JSON is at most MAX_JSON_DEPTH deep.
    if isinstance(value, str):
        return storable_name(value)
    if isinstance(value, list):
        return [_without_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {storable_name(k): _without_surrogates(v) for k, v in value.items()}
    return value


def refuse_constant(constant: str) -> Any:
    """`json.loads(parse_constant=…)`: NaN, Infinity and -Infinity are Python's,
    not JSON's (RFC 8259 §6); PostgreSQL's json type refuses them."""
    raise ValueError(f"{constant} is not a JSON number")


def finite_float(text: str) -> float:
    """`json.loads(parse_float=…)`: a number too large for a double (`1e400`)
    is infinity to Python, written back as `Infinity`: refused like it."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large a number")
    return value


def finite(value: Any) -> Any:
    """`value` with each NaN or infinity (what a store may hold from before
    they were refused) as its JSON-ish text, so that it can be written as JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [finite(v) for v in value]
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    return value
