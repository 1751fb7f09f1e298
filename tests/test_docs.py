"""The documentation that is generated stays generated: docs/configuration.md is what
``python -m pipeline.settings_doc`` prints from the settings object."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.settings import ENV_NAMES
from pipeline.settings_doc import configuration_markdown

REPO = Path(__file__).resolve().parents[1]
REGENERATE = "python -m pipeline.settings_doc > docs/configuration.md"


def test_configuration_doc_is_generated_from_the_settings_object() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == configuration_markdown(), (
        f"docs/configuration.md is stale (a setting changed in pipeline/settings.py); run `{REGENERATE}` "
        "and commit the result."
    )


def test_configuration_doc_lists_every_variable_with_default_and_example() -> None:
    rows = {
        line.split("|")[1].strip().strip("`"): [cell.strip() for cell in line.split("|")[2:5]]
        for line in configuration_markdown().splitlines()
        if line.startswith("| `")
    }
    assert sorted(rows) == sorted(ENV_NAMES)
    for name, (meaning, default, example) in rows.items():
        assert meaning and default and example, f"{name}: meaning, default and example must all be given"
    assert rows["GRADIENT_VENDOR_API_KEY"][0].endswith("*secret*")
    assert rows["BILLING_TIMEZONE"][1] == "`America/New_York`"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {
        re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in markdown.splitlines()
        if line.startswith("#")
    }


def test_readme_and_docs_link_only_to_files_and_headings_that_exist() -> None:
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]:
        for target, anchor in re.findall(r"\]\(([^)#:]*)(?:#([^)]*))?\)", doc.read_text()):
            linked = (doc.parent / target) if target else doc
            assert linked.exists(), f"{doc.relative_to(REPO)} links to missing {target}"
            if anchor:
                assert anchor in _anchors(linked.read_text()), (
                    f"{doc.relative_to(REPO)} links to #{anchor}, which is no heading of {linked.relative_to(REPO)}"
                )
