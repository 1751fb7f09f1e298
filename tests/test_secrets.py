"""No secret anywhere after a full run with faults and a 401.

The six assets run under Dagster with a real on-disk instance (event log, run storage,
compute logs), the product DB on SQLite, the state DB on PostgreSQL reached with a password
in its URL, and Gradient as the HTTP emulator injecting 5xx, dropped connections and lost
answers; one partner's key is revoked (401). Then every byte of the instance directory, every
row of the state DB, the captured stdout/stderr and log records, and the emulator's request
log are searched for the vendor key, the partner keys, their GRADIENT-TOKEN values, the
partner-key encryption key and the DB password.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from gradient_emulator import EmulatorAdmin, EmulatorServer
from pipeline.demo.data import demo_partner_key
from pipeline.gradient.client import partner_token
from pipeline.store.schema import metadata
from tests.test_gradient_load_e2e import ASSETS, CONNECTED, OCT_KEY, VENDOR_KEY, World, org

pytestmark = pytest.mark.slow

DB_PASSWORD = "Db-pa55word-7e1f0c"


@pytest.fixture
def emulator():
    with EmulatorServer(VENDOR_KEY) as server:
        yield server


def secrets_of(world: World) -> dict[str, str]:
    found = {"vendor key": VENDOR_KEY, "db password": DB_PASSWORD, "encryption key": world.fernet_key}
    for pid in CONNECTED:
        key = demo_partner_key(pid)
        found[f"{pid} key"] = key
        found[f"{pid} token"] = partner_token(VENDOR_KEY, key)
    return found


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value in text]


def test_no_secret_in_any_store_after_a_run_with_faults_and_a_401(tmp_path, emulator, postgres_url, capfd, caplog) -> None:
    state_url = make_url(postgres_url).set(password=DB_PASSWORD).render_as_string(hide_password=False)
    with EmulatorAdmin(emulator.base_url) as admin:
        world = World(f"sqlite:///{tmp_path / 'product.db'}", state_url, emulator, admin)
        world.register()
        admin.revoke_partner(org(CONNECTED[0]))
        admin.set_faults(seed=7, error_rate=0.1, drop_rate=0.03, lost_response_rate=0.03)
        instance_dir = tmp_path / "dagster_home"
        instance_dir.mkdir()
        with dg.DagsterInstance.local_temp(str(instance_dir)) as instance:
            result = dg.materialize(
                ASSETS, partition_key=OCT_KEY, resources=world.resources(), instance=instance,
                raise_on_error=False,
            )
            events = [str(e) for e in instance.all_logs(result.run_id)]
            runs = [str(r) for r in instance.get_runs()]
        request_log = json.dumps(admin.requests())
        admin.reset()
    assert not result.success  # the revoked partner fails the run
    assert any("401" in e for e in events), "the 401 must be in the run's events"
    secrets = secrets_of(world)

    found: dict[str, list[str]] = {}
    for path in Path(instance_dir).rglob("*"):
        if path.is_file():
            text = path.read_bytes().decode("utf-8", errors="replace")
            if hit := leaks(text, secrets):
                found[str(path.relative_to(tmp_path))] = hit
    found["events"] = leaks("\n".join(events), secrets)
    found["run storage"] = leaks("\n".join(runs), secrets)
    engine = sa.create_engine(state_url)
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            rows = conn.execute(sa.text(f'SELECT * FROM "{table.name}"')).all()
            found[f"state table {table.name}"] = leaks(repr(rows), secrets)
    engine.dispose()
    out, err = capfd.readouterr()
    found["stdout"] = leaks(out, secrets)
    found["stderr"] = leaks(err, secrets)
    found["log records"] = leaks(caplog.text, secrets)
    found["emulator request log"] = leaks(request_log, secrets)
    assert {where: hit for where, hit in found.items() if hit} == {}
    assert any(Path(instance_dir).rglob("*")), "the instance wrote nothing to scan"
