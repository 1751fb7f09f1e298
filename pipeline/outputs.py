"""One escaping path per output format for values that come from the product's data.

Partner ids, company names and the like are written by the vendor's customers; they reach file
names, CSV, HTML, e-mail, Slack-compatible webhooks, Gradient alerts and Dagster's markdown
metadata. Each format has exactly one function here, and every value that leaves goes
through it:

* ``statement_file_stem``: a file name that cannot leave its folder and cannot collide;
  ``contained_path`` checks the resolved path stays inside the folder;
* ``csv_cell``: OWASP's CSV-injection rule (a text cell starting with ``= + - @``, tab or CR
  gets a leading ``'``); the ``csv`` module does the quoting;
* HTML: jinja2 with autoescape (``pipeline/billing/templates``), nothing hand-escaped;
* ``one_line``: text for e-mail headers, plain-text bodies, log lines and Gradient alerts —
  no line breaks or control characters (no header injection, no forged lines), no bidi
  overrides, bounded length;
* ``html_email_body``: Dagster's e-mail sensor sends ``text/html`` as raw ASCII;
* ``slack_text``: Slack mrkdwn's three control characters ``& < >`` as entities, so
  ``<!channel>`` or ``<https://evil.example|Click>`` from product data is inert text;
* ``markdown_cell``: a value inside a Dagster markdown table;
* ``address_problem``: why an e-mail address is refused (CR/LF, several addresses, no domain).
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from email.errors import HeaderParseError
from email.headerregistry import Address
from pathlib import Path

ELLIPSIS = "…"
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
SLUG_MAX = 40
HASH_CHARS = 12
# bidi embeddings, overrides and isolates: they reorder the text around them ("Trojan source")
BIDI_CONTROLS = dict.fromkeys([*range(0x202A, 0x202F), *range(0x2066, 0x206A)], None)
_UNSAFE_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_PLAIN_STEM = re.compile(rf"[a-z0-9][a-z0-9._-]{{0,{SLUG_MAX - 1}}}")
_HASHED_TAIL = re.compile(rf"-[0-9a-f]{{{HASH_CHARS}}}$")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def _missing(value: object) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN, pd.NA raise or compare unequal
    except (TypeError, ValueError):
        return True


def text(value: object) -> str:
    """A value as text; None, NaN and pd.NA as the empty string."""
    return "" if _missing(value) else str(value)


def shorten(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: max(limit - 1, 0)] + ELLIPSIS


# ------------------------------------------------------------------ files


def statement_file_stem(partner_id: str) -> str:
    """The partner's part of its statement file names, safe and collision-free.

    An id that is already a plain file name — lowercase letters, digits, ``.``, ``_``, ``-``,
    starting with a letter or digit, at most 40 characters, not ending in what looks like our
    hash — is used as it is (``p-001``). Any other id becomes ``<slug>-<hash>``: its ASCII
    letters, digits, ``.``, ``_`` and ``-`` (others as ``-``, at most 40 characters), then 12
    hex digits of the SHA-256 of the full id. Plain ids never end in a hash and hashed ones
    always do, so no two ids share a stem (short of a 2^-48 hash collision), also on
    case-insensitive file systems; no stem holds a path separator or a ``..`` segment."""
    if _PLAIN_STEM.fullmatch(partner_id) and not _HASHED_TAIL.search(partner_id):
        return partner_id
    ascii_id = unicodedata.normalize("NFKD", partner_id).encode("ascii", "ignore").decode()
    slug = _UNSAFE_IN_FILE_NAME.sub("-", ascii_id).strip(".-")[:SLUG_MAX].rstrip(".-") or "partner"
    digest = hashlib.sha256(partner_id.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]
    return f"{slug}-{digest}"


class UnsafePathError(ValueError):
    """A file would land outside its folder."""


def contained_path(directory: Path, name: str) -> Path:
    """``directory / name``, refused unless the resolved path is directly inside ``directory``."""
    root = directory.resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise UnsafePathError(f"the file name {one_line(name, 80)!r} would leave {root}; nothing was written")
    return path


# ------------------------------------------------------------------ CSV


def csv_cell(value: object) -> object:
    """A CSV cell: text that a spreadsheet would run as a formula gets a leading ``'``
    (OWASP CSV injection); numbers and empty cells are left as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


# ------------------------------------------------------------------ text: headers, plain bodies, logs, Gradient


def one_line(value: object, limit: int = 200) -> str:
    """One line of plain text: line breaks, tabs and control characters as spaces, bidi
    overrides dropped, at most ``limit`` characters."""
    chars = []
    for ch in text(value).translate(BIDI_CONTROLS):
        category = unicodedata.category(ch)
        chars.append(" " if category in ("Cc", "Zl", "Zp") or ch in "\u0085" else ch)
    return shorten(" ".join("".join(chars).split()), limit)


def html_email_body(value: str) -> str:
    """A ``text/html`` e-mail body sent as raw ASCII: HTML-escaped, other characters as
    character references."""
    return html.escape(value).encode("ascii", "xmlcharrefreplace").decode("ascii")


def address_problem(address: str) -> str | None:
    """Why ``address`` cannot be a recipient, or None when it can: exactly one
    ``local@domain``, no line break or control character (no header injection)."""
    if any(unicodedata.category(ch) == "Cc" for ch in address):
        return "it contains a line break or control character"
    try:
        parsed = Address(addr_spec=address.strip())
    except (HeaderParseError, ValueError, IndexError) as exc:
        return f"it is not one e-mail address ({one_line(exc, 80)})"
    if not parsed.username or not parsed.domain:
        return "it is not of the form name@domain"
    return None


# ------------------------------------------------------------------ Slack-compatible webhooks


def slack_text(value: str) -> str:
    """Text for a Slack-compatible webhook: ``& < >`` as ``&amp; &lt; &gt;`` (Slack's only
    control characters: no mention, link or channel ping can come from the data)."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ------------------------------------------------------------------ Dagster markdown metadata


def markdown_cell(value: object, limit: int = 120) -> str:
    """A value in a Dagster markdown table: one line, HTML-escaped, markdown punctuation
    (``|`` included) backslash-escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(one_line(value, limit), quote=False))
