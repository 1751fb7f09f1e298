"""Alerts a person receives: run failures by e-mail (Dagster's own e-mail sensor) and/or a
Slack-compatible webhook, and a warning when a billing month ends partial or superseded.

All off by default; each sensor is added to the code location only when its settings are there:
``ALERT_SMTP_URL`` + ``ALERT_EMAIL_TO`` (e-mail), ``ALERT_WEBHOOK_URL`` (webhook). Neither the
SMTP password nor the webhook URL (its path is a secret token) is ever logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from urllib.parse import urlsplit

import dagster as dg
import httpx

from pipeline import outputs, settings
from pipeline.automation.jobs import TAG_OUTCOME, gradient_load_job, monthly_billing_job
from pipeline.automation.sensors import default_sensor_status
from pipeline.gradient import ledger
from pipeline.mail import DEFAULT_SENDER, MailError, SmtpTarget, build_message, parse_smtp_url, send
from pipeline.resources import StateDatabase
from pipeline.settings import ConfigurationError

OUTCOME_TAG = TAG_OUTCOME  # set by the Gradient load with the month's outcome
PARTITION_TAG = "dagster/partition"
DELIVERED, PARTIAL, SUPERSEDED, FAILED = "delivered", "partial", "superseded", "failed"
DELIVERED_WITH_UNMAPPED = ledger.DELIVERED_WITH_UNMAPPED
WARN_OUTCOMES = (PARTIAL, SUPERSEDED, DELIVERED_WITH_UNMAPPED)
MAX_CAUSE_CHARS = 600


@dataclass(frozen=True)
class AlertSettings:
    smtp: SmtpTarget | None
    email_to: list[str]
    email_from: str
    webhook_url: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls) -> AlertSettings:
        config = settings.load_settings()
        smtp_url = config.alert_smtp_url
        smtp = parse_smtp_url(smtp_url.get_secret_value(), "ALERT_SMTP_URL") if smtp_url else None
        if smtp is not None and smtp.security == "plain":
            raise ConfigurationError(
                "ALERT_SMTP_URL must use TLS for Dagster's e-mail sensor: smtps://user:password@host:465 "
                "or smtp://user:password@host:587?starttls=true."
            )
        if smtp is not None and not (smtp.user and smtp.password):
            raise ConfigurationError(
                "ALERT_SMTP_URL needs a user and a password (Dagster's e-mail sensor always logs in): "
                "smtps://user:password@host:465."
            )
        to = [a.strip() for a in (config.alert_email_to or "").split(",") if a.strip()]
        if smtp is not None and not to:
            raise ConfigurationError(
                "ALERT_SMTP_URL is set but ALERT_EMAIL_TO is empty; give comma-separated addresses."
            )
        webhook = config.alert_webhook_url.get_secret_value() if config.alert_webhook_url else None
        return cls(
            smtp=smtp,
            email_to=to,
            email_from=config.alert_email_from
            or (smtp.user if smtp and smtp.user and "@" in smtp.user else DEFAULT_SENDER),
            webhook_url=webhook,
        )

    @property
    def emails(self) -> bool:
        return self.smtp is not None and bool(self.email_to)


def webhook_host(url: str) -> str:
    """Where a webhook goes, safe to show: scheme and host, no path (the token lives there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


class WebhookError(RuntimeError):
    """The webhook refused the alert or is unreachable; the message never holds the URL's path."""


def post_webhook(url: str, text: str, timeout: float = 10.0) -> None:
    """POST ``{"text": ...}`` (what Slack, Mattermost, Teams' Slack-compatible hooks take).
    ``text`` is plain text: it is escaped here for Slack's mrkdwn, so nothing in it (ids, names,
    causes from the product's data) can ping a channel or make a link."""
    try:
        response = httpx.post(url, json={"text": outputs.slack_text(text)}, timeout=timeout)
    except httpx.HTTPError as exc:
        raise WebhookError(f"the alert webhook at {webhook_host(url)} is unreachable ({type(exc).__name__})") from None
    if response.status_code >= 300:
        raise WebhookError(f"the alert webhook at {webhook_host(url)} answered HTTP {response.status_code}")


def first_paragraph(text: str, limit: int = MAX_CAUSE_CHARS) -> str:
    """A failure's message up to its first blank line, as one line (causes often continue on
    a second line: "Gradient is not ready; nothing was sent:" / "- GRADIENT_BASE_URL=...")."""
    lines = []
    for line in text.strip().splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
    joined = " ".join(lines)
    return joined if len(joined) <= limit else joined[: limit - 1] + "…"


def failure_cause(context: dg.RunFailureSensorContext) -> str:
    """Each failed step's own message (first line), else Dagster's summary."""
    reasons = []
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        text = ""
        if data is not None and data.user_failure_data is not None and data.user_failure_data.description:
            text = data.user_failure_data.description
        elif data is not None and data.error is not None:
            text = data.error.message
        reasons.append(f"{event.step_key}: {first_paragraph(text or event.message or '') or 'failed'}")
    # one line: a cause quoting product data cannot forge further lines of the alert
    cause = "; ".join(reasons) or (context.failure_event.message or "run failed")
    return outputs.one_line(cause, MAX_CAUSE_CHARS)


def failure_text(context: dg.RunFailureSensorContext) -> str:
    run = context.dagster_run
    partition = run.tags.get(PARTITION_TAG)
    month = f" {partition[:7]}" if partition else ""
    return (
        f"gradient-billing-sync: {run.job_name}{month} FAILED (run {run.run_id}). {failure_cause(context)}. "
        "Re-running the month completes what was left; the ledger keeps what was delivered."
    )


def month_outcome(state, run: dg.DagsterRun) -> tuple[str | None, dict[str, dict[str, int]]]:
    """The month's outcome for this run: the run's gbs/outcome tag when set, else derived from
    the ledger entries the run recorded. None when the run recorded nothing."""
    partition = run.tags.get(PARTITION_TAG)
    if not partition:
        return run.tags.get(OUTCOME_TAG), {}
    per_partner = ledger.month_outcomes(state, date.fromisoformat(partition[:10]), run.run_id)
    tagged = run.tags.get(OUTCOME_TAG)
    if tagged:
        return tagged, per_partner
    return derive_outcome(per_partner), per_partner


def partner_outcome(outcomes: dict[str, int]) -> str:
    """One partner's outcome in a run, as the gbs/outcome tag counts it (``ledger.partner_status``)."""
    return ledger.partner_status({o: n for o, n in outcomes.items() if n})


def derive_outcome(per_partner: dict[str, dict[str, int]]) -> str | None:
    """The month's outcome from the run's ledger entries (``ledger.month_outcome``). None when
    the run recorded nothing."""
    statuses = [partner_outcome(outcomes) for outcomes in per_partner.values() if any(outcomes.values())]
    return ledger.month_outcome(statuses) if statuses else None


def warning_text(run: dg.DagsterRun, outcome: str, per_partner: dict[str, dict[str, int]]) -> str:
    month = (run.tags.get(PARTITION_TAG) or "")[:7] or "the month"
    not_delivered = {
        partner_id: outcomes
        for partner_id, outcomes in sorted(per_partner.items())
        if partner_outcome(outcomes) != DELIVERED
    }
    detail = "; ".join(
        f"{outputs.one_line(partner_id, 80)}: " + ", ".join(f"{o} {n}" for o, n in sorted(outcomes.items()))
        for partner_id, outcomes in not_delivered.items()
    )
    advice = []
    if any(outcomes.get(ledger.SUPERSEDED) for outcomes in not_delivered.values()):
        advice.append(
            "Superseded lines were not pushed: Gradient already holds a newer month for those partners. "
            "Their statement still has this month's numbers; to overwrite Gradient anyway: "
            f"gradient-billing-sync run --month {month} --force-superseded."
        )
    if any(outcomes.get(ledger.FAILED) for outcomes in not_delivered.values()):
        advice.append("Failed lines are sent again by a re-run of the month.")
    if any(outcomes.get(ledger.UNMAPPED) for outcomes in not_delivered.values()):
        advice.append(
            "Unmapped lines were answered 404: the partner has not mapped those accounts or services "
            "in Gradient, so their units are not billed; they are sent again every run until mapped."
        )
    return (
        f"gradient-billing-sync: {run.job_name} {month} ended {outcome.upper()} (run {run.run_id}). "
        + (f"{detail}. " if detail else "")
        + " ".join(advice)
    ).strip()


def alert_sensors(settings: AlertSettings | None = None) -> list[dg.SensorDefinition]:
    """The alert sensors the environment asks for (none by default)."""
    settings = settings or AlertSettings.from_env()
    sensors: list[dg.SensorDefinition] = []
    if settings.emails:
        smtp = settings.smtp
        sensors.append(
            dg.make_email_on_run_failure_sensor(
                name="failure_email_alert_sensor",
                email_from=settings.email_from,
                email_password=smtp.password or "",
                email_to=settings.email_to,
                # Dagster pastes the subject into the raw message: one line, no header injection
                email_subject_fn=lambda context: outputs.one_line(
                    f"gradient-billing-sync: {context.dagster_run.job_name} failed", 150
                ),
                email_body_fn=lambda context: outputs.html_email_body(failure_text(context)),
                smtp_host=smtp.host,
                smtp_port=smtp.port,
                smtp_type=smtp.dagster_smtp_type,
                smtp_user=smtp.user or settings.email_from,
                default_status=default_sensor_status(),
            )
        )
    if settings.webhook_url:
        sensors.append(_failure_webhook_sensor(settings.webhook_url))
    if settings.emails or settings.webhook_url:
        sensors.append(_month_outcome_sensor(settings))
    return sensors


def _failure_webhook_sensor(url: str) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name="failure_webhook_alert_sensor",
        default_status=default_sensor_status(),
        description="Posts every failed run, with its cause, to ALERT_WEBHOOK_URL (Slack-compatible JSON).",
    )
    def failure_webhook_alert_sensor(context: dg.RunFailureSensorContext) -> None:
        post_webhook(url, failure_text(context))
        context.log.info(f"failure of run {context.dagster_run.run_id} posted to {webhook_host(url)}")

    return failure_webhook_alert_sensor


def _month_outcome_sensor(settings: AlertSettings) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        name="month_outcome_alert_sensor",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[monthly_billing_job, gradient_load_job],
        default_status=default_sensor_status(),
        description="Warns (webhook and/or e-mail) when a billing run succeeded but its month ended "
        "delivered_with_unmapped (Gradient answered 404 for some lines), partial, or superseded "
        "(not pushed: Gradient holds a newer month).",
    )
    def month_outcome_alert_sensor(context: dg.RunStatusSensorContext, state_db: StateDatabase) -> None:
        run = context.dagster_run
        outcome, per_partner = month_outcome(state_db.engine(), run)
        if outcome not in WARN_OUTCOMES:
            return
        text = warning_text(run, outcome, per_partner)
        errors = []
        if settings.webhook_url:
            try:
                post_webhook(settings.webhook_url, text)
            except WebhookError as exc:
                errors.append(str(exc))
        if settings.emails:
            subject = f"gradient-billing-sync: {(run.tags.get(PARTITION_TAG) or '')[:7]} ended {outcome}"
            try:
                send(settings.smtp, build_message(settings.email_from, settings.email_to, subject, text))
            except MailError as exc:
                errors.append(str(exc))
        if errors:
            raise RuntimeError("; ".join(errors))
        context.log.info(f"run {run.run_id}: month {outcome}; warning sent")

    return month_outcome_alert_sensor
