"""partner_statements: per partner, the month's CSV and HTML statement (and e-mail, when set up).

Thin: the statement itself is ``pipeline.billing.statements``.
"""

import dagster as dg

from assets import specs
from assets.gradient_load import GROUP, LEDGER_ASSET
from assets.month_end import billing_month, no_retry
from pipeline.billing import statements as st
from pipeline.mail import MailError
from pipeline.partitions import monthly_partitions
from pipeline.resources import BillingRules, ProductDatabase, StateDatabase
from pipeline.settings import ConfigurationError


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
    """Per partner, a CSV and an HTML statement of the month (STATEMENTS_DIR/<YYYY-MM>/): billable
    users per company and service, the change against last month, and what Gradient acknowledged
    per the ledger. Made for superseded months too. When the push step fails in a run this step
    is skipped: materialize partner_statements alone for the month (it reads the ledger, so it
    shows what failed), or `gradient-billing-sync statement --month YYYY-MM`. E-mailed to
    PARTNER_CONTACTS_SQL's addresses when STATEMENTS_SMTP_URL is set. (A preview is its own op
    job, gradient_preview: it never reaches this asset.)"""
    month = billing_month(context, billing_rules)
    try:
        config = st.StatementSettings.from_env()
    except ConfigurationError as exc:
        raise no_retry(exc) from None
    state = state_db.engine()
    statements = st.partner_statements(state, month.month)
    directory = config.month_dir(month.month)
    files: dict[str, list] = {}
    for statement in statements:
        files[statement.partner_id] = [st.write_csv(statement, directory), st.write_html(statement, directory)]
    emailed = _email(context, config, product_db, statements, files)
    metadata: dict[str, object] = {
        "month": month.label,
        "partners": len(statements),
        "directory": dg.MetadataValue.path(str(directory)),
        "emailed": emailed,
        "preview": dg.MetadataValue.md(st.preview_markdown(statements)),
        "superseded_partners": dg.MetadataValue.text(
            ", ".join(s.partner_id for s in statements if s.newer_month_in_gradient) or "none"
        ),
    }
    for partner_id, (csv_path, html_path) in files.items():
        metadata[f"{partner_id}_csv"] = dg.MetadataValue.path(str(csv_path))
        metadata[f"{partner_id}_html"] = dg.MetadataValue.path(str(html_path))
    context.log.info(f"{month.label}: {len(statements)} partner statements in {directory}; {emailed} e-mailed")
    return dg.MaterializeResult(metadata=metadata)


def _email(context, config: st.StatementSettings, product_db: ProductDatabase, statements, files) -> int:
    """Send each partner its statement when e-mail is configured; a refused mail fails the step
    after the others were tried (a re-run sends again)."""
    if not config.emails or not statements:
        return 0
    try:
        with product_db.connect() as conn:
            contacts = st.load_contacts(conn, config.contacts_sql)
    except ConfigurationError as exc:
        raise no_retry(exc) from None
    sent, errors = 0, []
    for statement in statements:
        recipients = contacts.get(statement.partner_id)
        if not recipients:
            context.log.warning(f"partner {statement.partner_id} has no contact in PARTNER_CONTACTS_SQL; not e-mailed")
            continue
        try:
            st.email_statement(config.smtp, config.sender, recipients, statement, files[statement.partner_id])
            sent += 1
        except MailError as exc:
            errors.append(f"{statement.partner_id}: {exc}")
    if errors:
        raise dg.Failure(
            description="statements written but not all e-mailed: " + "; ".join(errors)
            + ". Check STATEMENTS_SMTP_URL and re-materialize partner_statements for the month.",
        )
    return sent
