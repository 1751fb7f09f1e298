"""A snapshot of the asset graph as the Dagster UI shows it, so any change to it is a reviewed diff.

For every asset of ``pipeline.definitions.defs``: key, deps, checks (name, blocking, evaluated per
partition), partitions
(type, start, timezone), metadata keys (not their values), kinds, owners, tags, code_version,
group and description's presence — compared with ``tests/snapshots/asset_specs.json``.

After an intended change (a new asset, check, tag, metadata key, a bumped code_version), rewrite
the snapshot and commit it with the change:

    UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_asset_specs.py

The graph is described in a subprocess with a fixed environment (FIRST_BILLING_MONTH pinned, no
caller settings), so the snapshot does not move with the calendar or the machine.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = REPO_ROOT / "tests" / "snapshots" / "asset_specs.json"
FIRST_BILLING_MONTH = "2024-01"


def describe(defs: Any) -> dict[str, Any]:
    """The asset graph's specs as plain, sorted JSON-able data."""
    graph = defs.resolve_asset_graph()
    assets: dict[str, Any] = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        checks = sorted(
            (
                {
                    "name": ck.name,
                    "blocking": bool(graph.get(ck).blocking),
                    "per_partition": graph.get(ck).partitions_def is not None,
                }
                for ck in node.check_keys
            ),
            key=lambda c: c["name"],
        )
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "checks": checks,
            "partitions": None
            if partitions is None
            else {
                "type": type(partitions).__name__,
                "start": partitions.start.date().isoformat() if hasattr(partitions, "start") else None,
                "timezone": getattr(partitions, "timezone", None),
            },
            "metadata_keys": sorted(node.metadata),
            "kinds": sorted(node.kinds),
            "owners": sorted(node.owners),
            "tags": {k: v for k, v in sorted(node.tags.items()) if not k.startswith("dagster/kind/")},
            "code_version": node.code_version,
            "has_description": bool(node.description),
        }
    return assets


def current_specs() -> dict[str, Any]:
    """``describe(defs)`` computed by a fresh interpreter in a fixed environment."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": str(REPO_ROOT),
        "FIRST_BILLING_MONTH": FIRST_BILLING_MONTH,
        "PYTHONWARNINGS": "ignore",
    }
    result = subprocess.run(
        [sys.executable, __file__],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, f"describing the asset graph failed:\n{result.stderr}"
    return json.loads(result.stdout)


def render(specs: dict[str, Any]) -> str:
    return json.dumps(specs, indent=2, sort_keys=True) + "\n"


def test_asset_specs_match_the_snapshot() -> None:
    rendered = render(current_specs())
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(rendered)
    stored = SNAPSHOT.read_text() if SNAPSHOT.exists() else ""
    diff = "".join(
        difflib.unified_diff(
            stored.splitlines(keepends=True),
            rendered.splitlines(keepends=True),
            "tests/snapshots/asset_specs.json (stored)",
            "asset graph (now)",
        )
    )
    assert not diff, (
        "the asset graph differs from tests/snapshots/asset_specs.json. If the change is intended, "
        "rewrite the snapshot with `UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest "
        f"tests/test_asset_specs.py` and commit it with the change.\n{diff}"
    )


def test_every_asset_has_owners_a_code_version_and_a_stage() -> None:
    """What the UI needs of each billing asset: an owner, a code version, its stage."""
    specs = current_specs()
    missing = {
        key: [field for field in ("owners", "code_version") if not spec[field]]
        + ([] if "stage" in spec["tags"] else ["stage tag"])
        for key, spec in specs.items()
    }
    assert not {k: v for k, v in missing.items() if v}, missing


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    from pipeline.definitions import defs

    sys.stdout.write(render(describe(defs)))
