"""The hostile-data corpus: ids, names and addresses the vendor's customers can type, shared by
the tests of every output (file names, CSV, HTML, e-mail, webhooks, Gradient, metadata).

``IDS`` are values a product database may hold as partner or company ids; ``STORABLE_IDS`` are
those that pass the month-end validation (at most 255 characters, no control characters), so
they reach counts, the ledger and statements; the others are quarantined there but still reach
code that takes ids from elsewhere. ``NAMES`` are display names (never validated: a partner's
name comes from PARTNERS_SQL as it is).
"""

from __future__ import annotations

PATH_TRAVERSAL = ("../x", "../../escape", "/abs", "a/b", "..", ".hidden", "C:\\evil", "a\\b")
FORMULAS = ("=cmd", "+x", "@x", "-1+1", '=HYPERLINK("http://x","y")', "\tx", "\rx")
SLACK = ("<!channel>", "<https://evil.example/pay|Click>", "<@U123> & <#C1|general>")
HTML = ('<script>alert("x")</script>', "<img src=x onerror=alert(1)>", "a & b \"c\" 'd'")
MARKDOWN = ("| a | b |", "[Click](https://evil.example)", "**bold** `code` # h")
CRLF = "a\r\nBcc: evil@attacker.example"
LONG = "x" * 10_240
RTL_EMOJI = ("\u202eexe.txt", "مرحبا بالعالم", "שלום", "👩‍💻🚀", "Ünïcödé Straße")
CASE_TWINS = ("P-001", "p-001")

IDS: tuple[str, ...] = (*PATH_TRAVERSAL, *FORMULAS, *SLACK, *HTML, *MARKDOWN, CRLF, LONG, *RTL_EMOJI, *CASE_TWINS)
STORABLE_IDS: tuple[str, ...] = tuple(
    i for i in IDS if len(i) <= 255 and not any(ord(c) < 32 or ord(c) == 127 for c in i) and i.strip() == i
)
NAMES: tuple[str, ...] = (*IDS, "x" * 255 + "<!channel>", "Acme\nSecond line")

# e-mail addresses: one header injection and one smuggled second address; both refused
BAD_ADDRESSES = ("billing@p.example\r\nBcc: evil@attacker.example", "billing@p.example, evil@attacker.example")

# what must never appear raw in an output of its format
SLACK_CONTROL = ("<!channel>", "<https://evil.example", "<@U123>", "<#C1")
