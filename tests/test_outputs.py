"""The escaping path of each output format, against the hostile corpus (tests/hostile.py)."""

from __future__ import annotations

import csv
import io
import re
from email.message import EmailMessage
from pathlib import Path

import pytest

from pipeline import outputs
from pipeline.mail import MailError, build_message
from tests import hostile


def test_file_stems_are_plain_unique_and_stay_in_their_folder(tmp_path):
    stems = {i: outputs.statement_file_stem(i) for i in hostile.IDS + ("p-001", "p-002", "c.1_x")}
    assert len(set(stems.values())) == len(stems)  # collision-free
    assert len({s.lower() for s in stems.values()}) == len(stems)  # also on case-insensitive file systems
    for partner_id, stem in stems.items():
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", stem), (partner_id, stem)
        assert ".." not in stem.split("-") and len(stem) <= 60
        path = outputs.contained_path(tmp_path, f"{stem}-2026-10.csv")
        assert path.parent == tmp_path.resolve()
    # plain ids keep their name; the others get the hash of the full id
    assert stems["p-001"] == "p-001" and stems["P-001"] != "P-001"
    assert stems["../x"].startswith("x-") and stems["/abs"].startswith("abs-")
    # an id shaped like a hashed stem is hashed itself: it cannot take another id's name
    assert outputs.statement_file_stem(stems["a/b"]) != stems["a/b"]


@pytest.mark.parametrize("name", ["../x.csv", "/etc/passwd", "a/b.csv", "..", ""])
def test_a_path_outside_the_folder_is_refused(tmp_path, name):
    with pytest.raises(outputs.UnsafePathError):
        outputs.contained_path(tmp_path, name)


@pytest.mark.parametrize("value", hostile.FORMULAS)
def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(value):
    cell = outputs.csv_cell(value)
    assert cell == "'" + value
    buffer = io.StringIO()
    csv.writer(buffer).writerow([cell, 3, -2])
    (row,) = csv.reader(io.StringIO(buffer.getvalue()))
    assert row[0] == "'" + value and row[1:] == ["3", "-2"]  # numbers stay numbers


@pytest.mark.parametrize("value", ["Acme", "c-001", "", "'=already quoted", " =space first"])
def test_csv_cells_without_a_formula_prefix_are_unchanged(value):
    assert outputs.csv_cell(value) == value


@pytest.mark.parametrize("value", hostile.NAMES)
def test_one_line_text_has_no_line_break_control_or_bidi_override(value):
    line = outputs.one_line(value, 200)
    assert len(line) <= 200
    assert not any(c in line for c in "\r\n\t\x0b\x0c\x85\u2028\u2029\u202e\u202a\u2066")
    message = EmailMessage()
    message["Subject"] = line  # accepted as a header: no injection possible


@pytest.mark.parametrize("value", [*hostile.SLACK, *hostile.HTML, *hostile.NAMES])
def test_slack_text_leaves_no_control_sequence(value):
    text = outputs.slack_text(f"run failed for {value}")
    assert "<" not in text and ">" not in text
    assert re.sub(r"&(amp|lt|gt);", "", text).count("&") == 0  # every & is an entity
    for raw in hostile.SLACK_CONTROL:
        assert raw not in text
    assert outputs.slack_text("<!channel>") == "&lt;!channel&gt;"
    assert outputs.slack_text("<https://evil.example/pay|Click>") == "&lt;https://evil.example/pay|Click&gt;"


@pytest.mark.parametrize("value", [*hostile.MARKDOWN, *hostile.HTML, *hostile.SLACK, hostile.CRLF])
def test_markdown_cells_cannot_break_the_table_or_inject_html(value):
    cell = outputs.markdown_cell(value)
    assert "\n" not in cell and "<" not in cell
    assert re.search(r"(?<!\\)\|", cell) is None  # every pipe escaped
    assert re.search(r"(?<!\\)[\[\]*`]", cell) is None


def test_html_email_body_is_escaped_ascii():
    body = outputs.html_email_body('<script>x</script> Straße — "q"')
    assert body.isascii() and "<script>" not in body and "&lt;script&gt;" in body and "&#223;" in body


@pytest.mark.parametrize("address", hostile.BAD_ADDRESSES + ("no-at-sign", "", "@example.com"))
def test_bad_addresses_are_refused_before_any_header_is_written(address, tmp_path):
    assert outputs.address_problem(address)
    with pytest.raises(MailError) as refused:
        build_message("billing@vendor.example", ["ok@p.example", address], "Statement", "body")
    assert "\r" not in str(refused.value) and "\n" not in str(refused.value)


def test_a_good_message_has_one_line_headers(tmp_path):
    attachment = tmp_path / "x.csv"
    attachment.write_text("a,b\n")
    message = build_message("gradient-billing-sync@localhost", ["billing@p.example"],
                            f"Statement {hostile.CRLF} {hostile.LONG}", "body", [Path(attachment)])
    assert message["To"] == "billing@p.example" and "Bcc" not in message
    assert "\n" not in message["Subject"] and len(message["Subject"]) <= 200
