"""partner_statements: per partner, the month's CSV and HTML statement (and e-mail, when set up).

Thin: the statement itself is ``pipeline.billing.statements``; every value from the product
leaves through ``pipeline.outputs``.
"""

from pathlib import Path

import dagster as dg

from assets import specs
from assets.gradient_load import GROUP, LEDGER_ASSET
from assets.month_end import billing_month, no_retry
from pipeline import outputs
from pipeline.billing import statements as st
from pipeline.mail import MailError
from pipeline.partitions import monthly_partitions
from pipeline.resources import BillingRules, ProductDatabase, StateDatabase
from pipeline.settings import ConfigurationError

PROBLEMS_IN_DESCRIPTION = 10


@dg.asset(
    owners=specs.OWNERS,
    tags=specs.stage_tags("report"),
    code_version="1",
    partitions_def=monthly_partitions,
    group_name=GROUP,
    kinds={"csv", "html"},
    deps=[LEDGER_ASSET],
)
def partner_statements(
    context: dg.AssetExecutionContext,
    product_db: ProductDatabase,
    state_db: StateDatabase,
    billing_rules: BillingRules,
) -> dg.MaterializeResult:
    """Per partner, a CSV and an HTML statement of the month (STATEMENTS_DIR/<YYYY-MM>/), titled
    with the partner's name: billable users per company and service with the change against last
    month, and separately the units in Gradient (what Gradient answered, and what it holds now).
    Made for superseded months too. When the push step fails in a run this step is skipped:
    materialize partner_statements alone for the month (it reads the ledger, so it shows what
    failed), or `gradient-billing-sync statement --month YYYY-MM`. E-mailed to
    PARTNER_CONTACTS_SQL's addresses when STATEMENTS_SMTP_URL is set. Each partner is handled on
    its own: one that cannot be written or e-mailed is reported and the others go on, then the
    step fails naming it. A month never counted fails with how to count it. (A preview is its own
    op job, gradient_preview: it never reaches this asset.)"""
    month = billing_month(context, billing_rules)
    try:
        config = st.StatementSettings.from_env()
    except ConfigurationError as exc:
        raise no_retry(exc) from None
    state = state_db.engine()
    try:
        st.require_counted(state, month.month)
        names, contacts = _partner_data(context, config, product_db)
    except (st.MonthNotCountedError, ConfigurationError) as exc:
        raise no_retry(exc, context) from None

    directory = config.month_dir(month.month)
    summaries: list[tuple[str, str, dict[str, int]]] = []
    superseded: list[str] = []
    problems: dict[str, str] = {}
    stems: dict[str, str] = {}  # file stem -> the partner written under it
    emailed = 0
    for statement in st.iter_partner_statements(state, month.month, names):
        pid = statement.partner_id
        summaries.append((pid, statement.title, statement.totals()))
        if statement.newer_month_in_gradient:
            superseded.append(pid)
        if statement.file_stem in stems:  # only if two ids' SHA-256 share 48 bits: never overwrite
            problems[pid] = f"statement not written: its file name is taken by partner {stems[statement.file_stem]!r}"
            context.log.error(f"partner {outputs.one_line(pid, 80)!r}: {problems[pid]}")
            continue
        stems[statement.file_stem] = outputs.one_line(pid, 80)
        try:
            files = [st.write_csv(statement, directory), st.write_html(statement, directory)]
        except (OSError, outputs.UnsafePathError) as exc:
            problems[pid] = f"statement not written: {outputs.one_line(exc, 300)}"
            context.log.error(f"partner {outputs.one_line(pid, 80)!r}: {problems[pid]}")
            continue
        if contacts is not None and not contacts.get(pid):
            context.log.warning(
                f"partner {outputs.one_line(pid, 80)!r} has no contact in PARTNER_CONTACTS_SQL; not e-mailed"
            )
        elif contacts is not None:
            sent, problem = _email(config, contacts.get(pid, []), statement, files)
            emailed += sent
            if problem:
                problems[pid] = problem
                context.log.error(f"partner {outputs.one_line(pid, 80)!r}: {problem}")

    metadata: dict[str, object] = {
        "month": month.label,
        "partners": len(summaries),
        "directory": dg.MetadataValue.path(str(directory)),
        "emailed": emailed,
        "preview": dg.MetadataValue.md(st.preview_markdown(summaries)),
        "superseded_partners": dg.MetadataValue.text(
            outputs.shorten(", ".join(outputs.one_line(p, 80) for p in superseded), 2000) or "none"
        ),
        "partners_with_problems": len(problems),
    }
    if problems:
        metadata["problems"] = dg.MetadataValue.md(st.problems_markdown(problems))
        listed = "; ".join(
            f"{outputs.one_line(pid, 60)!r}: {problem}"
            for pid, problem in list(problems.items())[:PROBLEMS_IN_DESCRIPTION]
        )
        more = len(problems) - PROBLEMS_IN_DESCRIPTION
        raise dg.Failure(
            description=(
                f"{month.label}: {len(summaries) - len(problems)} of {len(summaries)} partner statements written"
                f"{' and e-mailed' if contacts is not None else ''}; {len(problems)} partner(s) not: {listed}"
                + (f"; and {more} more (see the metadata)" if more > 0 else "")
                + ". Fix the partner's contact address (PARTNER_CONTACTS_SQL) or the named problem, then "
                "re-materialize partner_statements for the month (the others' files are rewritten and "
                "their e-mails sent again)."
            ),
            metadata=metadata,
            allow_retries=not all(p.startswith(REFUSED) for p in problems.values()),
        )
    context.log.info(f"{month.label}: {len(summaries)} partner statements in {directory}; {emailed} e-mailed")
    return dg.MaterializeResult(metadata=metadata)


REFUSED = "e-mail address refused"


def _partner_data(context, config: st.StatementSettings, product_db: ProductDatabase):
    """Partner names for the titles, and the contacts (None when e-mail is off)."""
    with product_db.connect() as conn:
        names, warning = st.partner_names(conn, config.partners_sql)
        if warning:
            context.log.warning(warning)
        contacts = st.load_contacts(conn, config.contacts_sql) if config.emails else None
    return names, contacts


def _email(
    config: st.StatementSettings, addresses: list[str], statement: st.Statement, files: list[Path]
) -> tuple[int, str | None]:
    """E-mail one partner's statement to its valid addresses: (1 if sent, the problem if any).
    A refused address is reported; the partner's other addresses still get the mail."""
    if not addresses:
        return 0, None  # no contact: nothing to send, the statement is on disk (not a failure)
    recipients, refused = st.split_recipients(addresses)
    problem = None
    if refused:
        problem = f"{REFUSED}: " + "; ".join(
            f"{outputs.one_line(address, 80)!r} ({reason})" for address, reason in refused.items()
        )
    if not recipients:
        return 0, problem
    try:
        st.email_statement(config.smtp, config.sender, recipients, statement, files)
    except MailError as exc:
        return 0, "; ".join(filter(None, [problem, f"not e-mailed: {exc}"]))
    return 1, problem
