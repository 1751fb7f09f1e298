"""Outgoing e-mail over SMTP, configured by one URL: ``smtp://user:password@host:port``.

``smtps://`` connects with TLS from the start; ``smtp://...?starttls=true`` upgrades a plain
connection. The password is only ever handed to ``smtplib``: ``SmtpTarget.safe()`` and
``repr`` show host and port, never the credentials.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from pipeline.outputs import address_problem, one_line
from pipeline.settings import ConfigurationError

DEFAULT_SENDER = "gradient-billing-sync@localhost"
ATTACHMENT_TYPES = {".csv": ("text", "csv"), ".html": ("text", "html")}


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    security: str  # "plain", "starttls" or "ssl"
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def safe(self) -> str:
        """Where mail goes, for logs and messages: no user, no password."""
        return f"{self.host}:{self.port} ({self.security})"

    @property
    def dagster_smtp_type(self) -> str:
        """The ``smtp_type`` Dagster's e-mail sensor takes."""
        return "SSL" if self.security == "ssl" else "STARTTLS"


def parse_smtp_url(url: str, setting: str) -> SmtpTarget:
    """``smtp://[user:password@]host[:port][?starttls=true]`` or ``smtps://...``."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigurationError(
            f"{setting} must look like smtp://user:password@host:587?starttls=true or "
            "smtps://user:password@host:465 (the value is not shown: it may hold a password)."
        )
    query = parse_qs(parts.query)
    starttls = query.get("starttls", ["false"])[0].lower() in {"1", "true", "yes"}
    security = "ssl" if parts.scheme == "smtps" else ("starttls" if starttls else "plain")
    try:
        port = parts.port or (465 if security == "ssl" else 25)
    except ValueError:
        raise ConfigurationError(f"{setting} has a port that is not a number.") from None
    return SmtpTarget(
        host=parts.hostname,
        port=port,
        security=security,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def build_message(
    sender: str,
    recipients: Sequence[str],
    subject: str,
    body: str,
    attachments: Sequence[Path] = (),
) -> EmailMessage:
    """A message to ``recipients``; an address that is not exactly one ``name@domain`` (a line
    break, a second address smuggled in) is refused with a MailError, nothing is sent."""
    for address in (sender, *recipients):
        problem = address_problem(address)
        if problem:
            raise MailError(f"the e-mail address {one_line(address, 80)!r} is refused: {problem}")
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = one_line(subject, 200)
    message.set_content(body)
    for path in attachments:
        maintype, subtype = ATTACHMENT_TYPES.get(path.suffix.lower(), ("application", "octet-stream"))
        message.add_attachment(path.read_bytes(), maintype=maintype, subtype=subtype, filename=path.name)
    return message


def send(target: SmtpTarget, message: EmailMessage, timeout: float = 30.0) -> None:
    """Deliver one message; errors name the server (never the credentials)."""
    try:
        if target.security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                target.host, target.port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            client = smtplib.SMTP(target.host, target.port, timeout=timeout)
        with client:
            if target.security == "starttls":
                client.starttls(context=ssl.create_default_context())
            if target.user:
                client.login(target.user, target.password or "")
            client.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise MailError(
            f"the SMTP server at {target.safe()} refused or is unreachable ({type(exc).__name__}: {_first_line(exc)})"
        ) from None


class MailError(RuntimeError):
    """Mail could not be sent; the message names the server, never its credentials."""


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
