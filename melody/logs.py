"""Structured log records: what melody logs about sessions, and a JSON formatter for them.

Every record melody emits about a connection carries its facts as attributes (``logging``'s
``extra=``), so that a JSON or logfmt formatter — :class:`JsonFormatter`, python-json-logger,
structlog's stdlib bridge — writes them as fields instead of parsing the message text:

==================  ==============================================================================
logger              records
==================  ==============================================================================
``melody.session``  ``connect`` and ``disconnect`` (INFO), one each per session
``melody``          ``error``: what goes to ``handle_error`` when no handler is registered
``melody.access``   ``upgrade`` (INFO), one per upgrade request, when
                    :class:`melody.middleware.AccessLog` is used
==================  ==============================================================================

Fields: ``event`` (the names above), ``session_id`` (``session.id``: the same for a session's
records, and the id presence and the application see), ``user`` (``session.user``, when set),
``peer`` (``"host:port"``), ``path``, and per event ``close_code``, ``close_reason``,
``duration`` (seconds, float), ``error`` (the exception's class name), ``outcome``, ``status``.

Silence or redirect them by logger name, e.g.
``logging.getLogger("melody.session").setLevel(logging.WARNING)``. A record is only built when
its logger is enabled for its level.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from melody.session import Session

__all__ = ["JsonFormatter", "SESSION_LOGGER", "session_fields", "error_fields", "peer_text"]

#: The logger of connect and disconnect records.
SESSION_LOGGER = logging.getLogger("melody.session")

# The attributes every LogRecord has; anything else on a record came in through ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}


def peer_text(address: Any) -> str | None:
    """``"host:port"`` for a socket address tuple (``"[v6]:port"`` for IPv6), else None."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{address[1]}"
    return None


def session_fields(session: Session | None) -> dict[str, Any]:
    """The identifying fields of a session's records: ``session_id``, ``peer`` and ``path``,
    and ``user`` when the session has one."""
    if session is None:
        return {"session_id": None, "peer": None, "path": None}
    fields = {"session_id": session.id, "peer": peer_text(session.remote_addr),
              "path": session.request.path}
    if session.user is not None:
        fields["user"] = session.user
    return fields


def error_fields(session: Session | None, error: BaseException) -> dict[str, Any]:
    """``extra=`` for an error record: the session's fields, ``error`` and ``close_code``."""
    fields = session_fields(session)
    fields["event"] = "error"
    fields["error"] = type(error).__name__
    fields["close_code"] = getattr(error, "code", None)
    return fields


def log_connect(session: Session) -> None:
    """Emit the ``connect`` record of ``session`` (INFO on ``melody.session``)."""
    if SESSION_LOGGER.isEnabledFor(logging.INFO):
        fields = session_fields(session)
        fields["event"] = "connect"
        SESSION_LOGGER.info("connect %s %s", fields["peer"], fields["path"], extra=fields)


def log_disconnect(session: Session, duration: float | None) -> None:
    """Emit the ``disconnect`` record of ``session`` with its close code, reason and duration."""
    if SESSION_LOGGER.isEnabledFor(logging.INFO):
        fields = session_fields(session)
        code = session.close_code
        reason = session.close_reason
        fields.update(event="disconnect", close_code=code, close_reason=reason,
                      duration=duration)
        SESSION_LOGGER.info("disconnect %s %s code=%d reason=%r duration=%.3fs",
                            fields["peer"], fields["path"], code, reason, duration or 0.0,
                            extra=fields)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object per line: ``ts``, ``level``, ``logger``, ``message``,
    then every ``extra=`` field (and ``exc_info`` as ``exception`` text).

    ::

        handler = logging.StreamHandler()
        handler.setFormatter(melody.logs.JsonFormatter())
        logging.basicConfig(level=logging.INFO, handlers=[handler])

    Values that JSON cannot hold are written as their ``str``.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)
