"""The billing-row rules, defined once and evaluated by the product database.

Each rule is a reason code (``pipeline.validation.rows.REASONS`` says it in words) and the SQL
predicate, per dialect, that is true when a row breaks it. From this one list come both
the quarantine (rows breaking any rule, with every code they break, as a bit mask) and the
count (rows breaking none), so validation and counting cannot disagree: the database
compares real dates (far, BC and infinite ones included) and only the failing rows come
back to Python.

Dialects: ``sqlite`` (text timestamps judged by SQLite's own date functions), ``postgresql``
(timestamptz, boolean) and ``mysql`` / ``mariadb`` (DATETIME in UTC, TINYINT(1) booleans).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from dataclasses import dataclass

import sqlalchemy as sa

from pipeline.source.utilization import TIMESTAMP_COLUMNS, sqlite_timestamp_ok

MYSQL_DIALECTS = frozenset({"mysql", "mariadb"})
KEY_COLUMNS = ("partner_id", "company_id", "company_name", "sku", "user_id")
# Ids that name something (a name may be padded; an id with spaces is a look-alike).
IDS = ("partner_id", "company_id", "sku", "user_id")
SQLITE_UTF8_FUNCTION = "gbs_utf8_ok"
# Gradient does not document its limits on ids and names: be strict and say so.
MAX_TEXT_LENGTH = 255


def family(dialect_name: str) -> str:
    """``sqlite``, ``postgresql`` or ``mysql`` (MariaDB included)."""
    if dialect_name in MYSQL_DIALECTS:
        return "mysql"
    if dialect_name.startswith("postgres"):
        return "postgresql"
    if dialect_name == "sqlite":
        return "sqlite"
    raise ValueError(f"unsupported product database dialect {dialect_name!r}: use PostgreSQL, MySQL/MariaDB or SQLite")


def _first(column: str, dialect: str) -> str:
    return f"substr({column}, 1, 1)" if family(dialect) == "sqlite" else f"LEFT({column}, 1)"


def _last(column: str, dialect: str) -> str:
    return f"substr({column}, -1)" if family(dialect) == "sqlite" else f"RIGHT({column}, 1)"


def _starts_with_space(column: str, dialect: str) -> str:
    # PostgreSQL: a prefix LIKE compares bytes; LEFT() builds a new string per row (py-spy/EXPLAIN:
    # the rules' largest CPU cost at 1.6 M rows).
    if family(dialect) == "postgresql":
        return f"{column} LIKE ' %'"
    return f"{_first(column, dialect)} = ' '"


def _ends_with_space(column: str, dialect: str) -> str:
    if family(dialect) == "postgresql":
        return f"{column} LIKE '% '"
    return f"{_last(column, dialect)} = ' '"


def _present(column: str, dialect: str = "postgresql") -> str:
    """Non-null text that is not blank; TRIM only when the value starts with a space."""
    return (
        f"({column} IS NOT NULL AND {column} <> ''"
        f" AND (NOT {_starts_with_space(column, dialect)} OR TRIM({column}) <> ''))"
    )


def _longer_than(column: str, limit: int, dialect: str) -> str:
    """More than ``limit`` characters. PostgreSQL and MySQL count characters of UTF-8 text one
    by one, so the byte length (stored with the value) is asked first: a value of at most
    ``limit`` bytes has at most ``limit`` characters."""
    if family(dialect) == "sqlite":
        return f"length({column}) > {limit}"
    octets = "octet_length" if family(dialect) == "postgresql" else "LENGTH"
    return f"({octets}({column}) > {limit} AND CHAR_LENGTH({column}) > {limit})"


def ident(column: str, dialect: str) -> str:
    """An id as compared exactly (MySQL's default collations fold case and accents)."""
    if family(dialect) == "mysql":
        return f"(CONVERT({column} USING utf8mb4) COLLATE utf8mb4_bin)"
    return column


def ts(column: str, dialect: str) -> str:
    """A timestamp as the database compares it (SQLite reads ISO-8601 text with julianday)."""
    return f"julianday({column})" if family(dialect) == "sqlite" else column


def billable_true(dialect: str) -> str:
    return "billable IS TRUE" if family(dialect) == "postgresql" else "billable = 1"


def _billable_invalid(dialect: str) -> str:
    if family(dialect) == "postgresql":
        return "billable IS NULL"
    return "(billable IS NULL OR billable NOT IN (0, 1))"


def _timestamp_invalid(column: str, dialect: str, nullable: bool) -> str:
    if family(dialect) == "sqlite":
        bad = f"NOT {sqlite_timestamp_ok(column)}"
        return f"({column} IS NOT NULL AND {bad})" if nullable else f"({column} IS NULL OR {bad})"
    return "(1 = 0)" if nullable else f"({column} IS NULL)"


def _span_reversed(dialect: str) -> str:
    return (
        f"(active_from IS NOT NULL AND active_to IS NOT NULL"
        f" AND {ts('active_to', dialect)} < {ts('active_from', dialect)})"
    )


def _padded(dialect: str, columns: tuple[str, ...] = IDS) -> str:
    return (
        "("
        + " OR ".join(
            f"(({_starts_with_space(c, dialect)} OR {_ends_with_space(c, dialect)}) AND {_present(c, dialect)})"
            for c in columns
        )
        + ")"
    )


def _control_characters(dialect: str, columns: tuple[str, ...] = KEY_COLUMNS) -> str:
    kind = family(dialect)
    if kind == "sqlite":
        pattern = "'*[' || char(1) || '-' || char(31) || char(127) || ']*'"
        tests = [f"(instr(CAST({c} AS BLOB), x'00') > 0 OR {c} GLOB {pattern})" for c in columns]
    else:
        # one match per row over the row's text values joined (NULLs are skipped)
        if kind == "postgresql":
            joined = " || ".join(f"COALESCE({c}, '')" for c in columns)
            tests = [f"({joined}) ~ '[\\x01-\\x1f\\x7f]'"]
        else:
            tests = [f"CONCAT_WS('', {', '.join(columns)}) REGEXP '[[:cntrl:]]'"]
    return "(" + " OR ".join(tests) + ")"


def _too_long(dialect: str, columns: tuple[str, ...] = KEY_COLUMNS) -> str:
    return "(" + " OR ".join(_longer_than(c, MAX_TEXT_LENGTH, dialect) for c in columns) + ")"


def _unreadable(dialect: str, columns: tuple[str, ...] = (*KEY_COLUMNS, *TIMESTAMP_COLUMNS)) -> str:
    """SQLite only: text that is not valid UTF-8, or an id/name that is not text at all
    (typed engines cannot hold such values; their drivers read every row). One UTF-8 check
    per row, over the row's text values joined."""
    if family(dialect) != "sqlite":
        return "(1 = 0)"
    not_text = [f"typeof({c}) NOT IN ('text', 'null')" for c in columns if c in KEY_COLUMNS]
    joined = " || ".join(f"COALESCE({c}, '')" for c in columns)
    return "(" + " OR ".join([*not_text, f"NOT {SQLITE_UTF8_FUNCTION}(CAST({joined} AS BLOB))"]) + ")"


@dataclass(frozen=True)
class Rule:
    """A reason code and the SQL, per dialect, that is true when a row breaks the rule.

    ``columns``: the contract columns the rule reads. A rule ``per_column`` is broken when any
    one of its columns breaks it, so it can be asked of part of them (``broken_by``): of the
    group keys once per group, of the other columns once per row."""

    code: str
    columns: tuple[str, ...]
    sql: Callable[..., str]
    per_column: bool = False

    def breaks(self, dialect: str) -> str:
        """True when the row breaks the rule."""
        return self.sql(dialect)

    def broken_by(self, dialect: str, columns: Collection[str]) -> str | None:
        """True when the values of ``columns`` break the rule; None when the rule cannot be
        asked of them alone (it reads none of them, or it is not per column and reads others)."""
        if not self.per_column:
            return self.sql(dialect) if set(self.columns) <= set(columns) else None
        mine = tuple(c for c in self.columns if c in columns)
        return self.sql(dialect, mine) if mine else None


def _missing(column: str) -> Callable[..., str]:
    return lambda d, columns=(column,): " OR ".join(f"NOT {_present(c, d)}" for c in columns)


def _unknown_sku(d: str, columns: tuple[str, ...] = ("sku",)) -> str:
    return " OR ".join(f"({ident(c, d)} NOT IN :known_skus AND {_present(c, d)})" for c in columns)


RULES: tuple[Rule, ...] = (
    Rule("partner_missing", ("partner_id",), _missing("partner_id"), True),
    Rule("company_missing", ("company_id",), _missing("company_id"), True),
    Rule("company_name_missing", ("company_name",), _missing("company_name"), True),
    Rule("sku_missing", ("sku",), _missing("sku"), True),
    Rule("sku_unknown", ("sku",), _unknown_sku, True),
    Rule("user_missing", ("user_id",), _missing("user_id"), True),
    Rule("billable_invalid", ("billable",), _billable_invalid),
    Rule("active_from_invalid", ("active_from",), lambda d: _timestamp_invalid("active_from", d, nullable=False)),
    Rule("active_to_invalid", ("active_to",), lambda d: _timestamp_invalid("active_to", d, nullable=True)),
    Rule("span_reversed", TIMESTAMP_COLUMNS, _span_reversed),
    Rule("id_padded", IDS, _padded, True),
    Rule("control_characters", KEY_COLUMNS, _control_characters, True),
    Rule("value_too_long", KEY_COLUMNS, _too_long, True),
    Rule("value_unreadable", (*KEY_COLUMNS, *TIMESTAMP_COLUMNS), _unreadable, True),
)
RULE_CODES: tuple[str, ...] = tuple(rule.code for rule in RULES)
MASK = "reason_mask"


def codes_of(mask: int) -> list[str]:
    """The reason codes set in a row's bit mask, in rule order."""
    return [rule.code for bit, rule in enumerate(RULES) if mask & (1 << bit)]


def _mask(parts: list[tuple[int, str | None]]) -> str:
    """Bits summed from (bit, SQL true when broken) parts; parts without SQL are left out."""
    return (
        "\n    + ".join(f"(CASE WHEN {sql} THEN {1 << bit} ELSE 0 END)" for bit, sql in parts if sql is not None) or "0"
    )


def reason_mask_sql(dialect: str) -> str:
    """The row's broken rules as a bit mask (0 = a row that can be billed)."""
    return _mask([(bit, rule.breaks(dialect)) for bit, rule in enumerate(RULES)])


def split_reason_mask_sql(dialect: str, keys: Collection[str]) -> tuple[str, str]:
    """The mask in two parts whose bitwise OR is ``reason_mask_sql``: what the ``keys`` alone
    break (to ask once per group of rows sharing them) and what the row's other columns break
    (with every rule that is not per column and reads any of them, whole)."""
    on_keys: list[tuple[int, str | None]] = []
    on_rows: list[tuple[int, str | None]] = []
    for bit, rule in enumerate(RULES):
        by_keys = rule.broken_by(dialect, keys)
        if rule.per_column:
            by_rows = rule.broken_by(dialect, [c for c in rule.columns if c not in keys])
        else:
            by_rows = None if by_keys is not None else rule.breaks(dialect)
        on_keys.append((bit, by_keys))
        on_rows.append((bit, by_rows))
    return _mask(on_keys), _mask(on_rows)


def valid_row_sql(dialect: str) -> str:
    """True for a row that breaks no rule (binds ``:known_skus``)."""
    return "NOT (" + "\n  OR ".join(f"COALESCE({rule.breaks(dialect)}, FALSE)" for rule in RULES) + ")"


def overlap_sql(dialect: str) -> str:
    """Half-open overlap of ``[active_from, active_to)`` with ``[:month_start, :month_end)``;
    an empty span (``active_to = active_from``) overlaps nothing."""
    t = lambda c: ts(c, dialect)  # noqa: E731
    return (
        f"({t('active_from')} < {t(':month_end')}"
        f" AND (active_to IS NULL OR ({t('active_to')} > {t(':month_start')}"
        f" AND {t('active_to')} > {t('active_from')})))"
    )


def flagged_sql(query_sql: str, dialect: str) -> str:
    """The contract query with each row's ``reason_mask`` (see ``pipeline.validation.month`` for
    how PostgreSQL keeps it computed once per row)."""
    return f"SELECT utilization.*,\n    {reason_mask_sql(dialect)} AS {MASK}\nFROM (\n{query_sql}\n) AS utilization"


# A quarantined value longer than this is kept as its first MAX_SHOWN_CHARS characters and a
# note of its length and hash (``SHOWN_NOTE``), cut in the database so a huge value never comes
# back whole: any value the rules accept (at most MAX_TEXT_LENGTH characters) is kept as it is.
MAX_SHOWN_CHARS = MAX_TEXT_LENGTH
SHOWN_HASH_CHARS = 16
SHOWN_NOTE = "…({chars} chars, sha256 {sha256})"
SQLITE_SHOWN_FUNCTION = "gbs_shown"


def shown_value(value: bytes | str) -> bytes:
    """SQLite's ``gbs_shown`` (and the reference for the others): the value's UTF-8 bytes, or
    when longer than MAX_SHOWN_CHARS characters its first ones and ``SHOWN_NOTE``. Invalid
    UTF-8 bytes count as one character each and are kept as they are."""
    raw = value.encode("utf-8", errors="surrogateescape") if isinstance(value, str) else bytes(value)
    if len(raw) <= MAX_SHOWN_CHARS:
        return raw
    text = raw.decode("utf-8", errors="surrogateescape")
    if len(text) <= MAX_SHOWN_CHARS:
        return raw
    note = SHOWN_NOTE.format(chars=len(text), sha256=hashlib.sha256(raw).hexdigest()[:SHOWN_HASH_CHARS])
    return text[:MAX_SHOWN_CHARS].encode("utf-8", errors="surrogateescape") + note.encode()


def _sql_note(chars: str, sha256_hex: str) -> list[str]:
    """``SHOWN_NOTE`` as SQL parts to concatenate."""
    before, between = SHOWN_NOTE.split("{chars}")
    middle, after = between.split("{sha256}")
    return [f"'{before}'", chars, f"'{middle}'", f"LEFT({sha256_hex}, {SHOWN_HASH_CHARS})", f"'{after}'"]


def display(column: str, dialect: str) -> str:
    """A value as text for a person, whatever it holds, at most MAX_SHOWN_CHARS characters and
    a note of its length and hash (``shown_value``): cut in SQL so a huge value never reaches
    Python whole, and cast so the driver never has to decode it (SQLite and MySQL give bytes,
    decoded leniently in Python). The hash is SHA-256 of the value's UTF-8 bytes in all three
    (PostgreSQL ``sha256``, MySQL/MariaDB ``SHA2``, SQLite a function given to the connection)."""
    kind = family(dialect)
    limit = MAX_SHOWN_CHARS
    if kind == "sqlite":
        return f"{SQLITE_SHOWN_FUNCTION}(CAST({column} AS BLOB))"
    if kind == "mysql":
        note = _sql_note(f"CHAR_LENGTH({column})", f"SHA2(CAST({column} AS BINARY), 256)")
        return (
            f"(CASE WHEN LENGTH({column}) > {limit} AND CHAR_LENGTH({column}) > {limit}"
            f" THEN CONCAT(CAST(LEFT({column}, {limit}) AS BINARY), CAST(CONCAT({', '.join(note)}) AS BINARY))"
            f" ELSE CAST({column} AS BINARY) END)"
        )
    text = f"CAST({column} AS TEXT)"
    note = _sql_note(f"char_length({text})", f"encode(sha256(convert_to({text}, 'UTF8')), 'hex')")
    return (
        f"(CASE WHEN octet_length({text}) > {limit} AND char_length({text}) > {limit}"
        f" THEN {' || '.join([f'left({text}, {limit})', *note])}"
        f" ELSE {text} END)"
    )


def shown_longer(column: str, dialect: str) -> str:
    """True when ``display`` cuts the value (PostgreSQL)."""
    text = f"CAST({column} AS TEXT)"
    return f"(octet_length({text}) > {MAX_SHOWN_CHARS} AND char_length({text}) > {MAX_SHOWN_CHARS})"


def bind_known_skus(sql: str) -> sa.TextClause:
    return sa.text(sql).bindparams(sa.bindparam("known_skus", expanding=True))


def _utf8_ok(value: bytes | None) -> bool:
    if value is None:
        return True
    try:
        bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def prepare_connection(conn: sa.Connection) -> None:
    """Give SQLite the UTF-8 check ``value_unreadable`` uses and ``display``'s cut (once per
    DBAPI connection)."""
    if family(conn.dialect.name) != "sqlite":
        return
    raw = conn.connection.driver_connection
    raw.create_function(SQLITE_UTF8_FUNCTION, 1, _utf8_ok, deterministic=True)
    raw.create_function(SQLITE_SHOWN_FUNCTION, 1, _sqlite_shown, deterministic=True)


def _sqlite_shown(value: bytes | None) -> bytes | None:
    return None if value is None else shown_value(value)


def text_of(value: object) -> str | None:
    """A displayed value as text: bytes decoded leniently, invalid bytes and NUL shown as
    escapes (a PostgreSQL state database cannot store NUL)."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", errors="backslashreplace")
    return str(value).replace("\x00", "\\x00")
