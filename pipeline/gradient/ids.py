"""What ids and names may travel to Gradient, and why the others are refused.

Gradient does not document limits for account ids, account names or service names. These
rules are deliberately strict guesses, so that a value Gradient might mangle, truncate or route
elsewhere is refused here with a reason instead of being sent:

* account ids (the vendor's company ids): 1-128 characters, printable (no control, format,
  surrogate or unassigned characters), no leading/trailing whitespace, not ``.`` or ``..``
  (dot segments, which URL layers may collapse even when percent-encoded). ``/``, ``%``, ``?``
  and the like are allowed: the client percent-encodes every path segment, dots included;
* account and service names: 1-255 characters after trimming, printable;
* service ids (Gradient's own): 1-128 characters of letters, digits, ``-`` and ``_``.
"""

from __future__ import annotations

import re
import unicodedata

ACCOUNT_ID_MAX = 128
NAME_MAX = 255
SERVICE_ID_MAX = 128
_SERVICE_ID = re.compile(r"[A-Za-z0-9_-]+")
_UNPRINTABLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def _unprintable(value: str) -> str | None:
    for ch in value:
        if unicodedata.category(ch) in _UNPRINTABLE:
            return f"U+{ord(ch):04X}"
    return None


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def account_id_problem(value: object) -> str | None:
    """Why ``value`` cannot be a Gradient account id, or None when it can."""
    if _missing(value):
        return "the company id is NULL"
    if not isinstance(value, str):
        return f"the company id is a {type(value).__name__}, not text"
    if not value:
        return "the company id is empty"
    if len(value) > ACCOUNT_ID_MAX:
        return f"the company id is {len(value)} characters long (at most {ACCOUNT_ID_MAX})"
    if value != value.strip():
        return "the company id has leading or trailing whitespace"
    if value in (".", ".."):
        return f"the company id {value!r} is a URL dot segment"
    bad = _unprintable(value)
    if bad:
        return f"the company id contains the control/unprintable character {bad}"
    return None


def name_problem(value: object, what: str = "company name") -> str | None:
    """Why ``value`` cannot be a Gradient account or service name, or None when it can."""
    if _missing(value):
        return f"the {what} is NULL"
    if not isinstance(value, str):
        return f"the {what} is a {type(value).__name__}, not text"
    if not value.strip():
        return f"the {what} is blank"
    if len(value.strip()) > NAME_MAX:
        return f"the {what} is {len(value.strip())} characters long (at most {NAME_MAX})"
    bad = _unprintable(value)
    if bad:
        return f"the {what} contains the control/unprintable character {bad}"
    return None


def service_id_problem(value: object) -> str | None:
    """Why a Gradient service id cannot be used in a path, or None when it can."""
    if not isinstance(value, str) or not value:
        return "Gradient returned no service id"
    if len(value) > SERVICE_ID_MAX or not _SERVICE_ID.fullmatch(value):
        return f"Gradient returned the service id {value[:40]!r}, which is not [A-Za-z0-9_-]{{1,128}}"
    return None


def company_problem(company_id: object, company_name: object) -> str | None:
    """The first reason a (company id, name) pair cannot become a Gradient account."""
    return account_id_problem(company_id) or name_problem(company_name)
