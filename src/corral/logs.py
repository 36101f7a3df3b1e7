"""What corral writes to its log: one line per event, tracebacks without local variables,
and no secret (tokens, bearer headers, token parameters, passwords in URLs, keys) in any of it.

`configure(level)` sets up structlog; `RedactFilter` cleans stdlib records (uvicorn's access
and error logs included). `corral serve` and `create_app` use them.
"""

import logging
import re
from collections.abc import MutableMapping
from typing import Any

import structlog

HIDDEN = "[redacted]"
_PATTERNS = (
    # corral's own tokens, wherever they appear
    (re.compile(r"crl_[A-Za-z0-9_\-]{4,}"), "crl_" + HIDDEN),
    # an Authorization header's credential, in any dump of headers or text
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}"), r"\1 " + HIDDEN),
    # ?token=…, &access_token=…, key=… in URLs and query strings
    (
        re.compile(r"(?i)([?&;](?:token|access_token|key|password|secret|sig)=)[^&\s\"'#]+"),
        r"\1" + HIDDEN,
    ),
    # name: value, name=value, 'name': 'value' for fields whose name says secret
    (
        re.compile(
            r"(?i)([\"']?\b(?:authorization|token|secret|password|passwd|credentials|key|sig)"
            r"[\"']?\s*[:=]\s*[\"']?)(?!\[redacted\])[^\s\"',)}&]{6,}"
        ),
        r"\1" + HIDDEN,
    ),
    # user:password@ in URLs (database, broker)
    (re.compile(r"(://[^:/@\s]+:)[^@\s/]+@"), r"\1" + HIDDEN + "@"),
)

# Each pattern above needs one of these words (in any case): ASCII text holding none of them
# is returned as it is, without running the patterns (most log lines and fields).
_WORDS = (
    "crl_",
    "bearer",
    "basic",
    "token",
    "key",
    "secret",
    "passw",
    "credentials",
    "authorization",
    "sig",
    "://",
)


def redact(text: str) -> str:
    """`text` without the secrets it may hold."""
    if text.isascii():
        lowered = text.lower()
        if not any(word in lowered for word in _WORDS):
            return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def _redact_arg(value: Any) -> Any:
    """A log record argument: numbers as they are (for %d), the rest as redacted text."""
    if value is None or isinstance(value, (int, float)):
        return value
    return redact(value if isinstance(value, str) else str(value))


def redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: every text value of the event, the traceback included."""
    for key, value in list(event.items()):
        if isinstance(value, str):
            event[key] = redact(value)
        elif isinstance(value, (list, tuple)):
            event[key] = type(value)(_redact_value(v) for v in value)
        elif not isinstance(value, (int, float, bool)) and value is not None:
            event[key] = redact(repr(value))
    return event


class RedactFilter(logging.Filter):
    """A stdlib filter (for handlers): the record's message and traceback, redacted, with
    the traceback formatted here (stdlib tracebacks hold no local variables)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # The arguments stay arguments (uvicorn's access formatter unpacks them); each text
        # or object among them is redacted as the text it prints as.
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        else:
            record.msg = redact(str(record.msg))
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def configure(level: int = logging.INFO) -> None:
    """structlog: time, level, event and fields on one line; an exception's traceback in
    plain text without local variables (rich would print them, secrets and all); redacted."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.StackInfoRenderer(),
            structlog.dev.set_exc_info,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.processors.format_exc_info,
            redact_event,
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            ),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )


def install_filter(*loggers: str) -> None:
    """Put a RedactFilter on every handler of these loggers (the root logger: "")."""
    for name in loggers:
        for handler in logging.getLogger(name or None).handlers:
            if not any(isinstance(f, RedactFilter) for f in handler.filters):
                handler.addFilter(RedactFilter())
