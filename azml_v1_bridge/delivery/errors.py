"""What a failed MLflow call means, and how it is told to the user.

Three kinds, by MLflow error code and exception type:
- about an item (a bad value): retrying cannot help; the batch is split to isolate it;
- about the run (deleted, no permission): that run's work goes to the journal;
- about the store: transient ones (refused, reset, timeout, 5xx) are retried; permanent
  ones (a store that cannot be created, a missing driver, a failed schema migration,
  bad credentials) are not: the store is marked down at once and work is journaled.
"""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from .. import config

# The data sent is wrong: retrying cannot help, splitting the batch isolates it.
ITEM_ERRORS = frozenset({
    "INVALID_PARAMETER_VALUE", "BAD_REQUEST", "MALFORMED_REQUEST", "RESOURCE_ALREADY_EXISTS",
    "ALREADY_EXISTS", "INVALID_STATE", "MAX_READ_SIZE_EXCEEDED", "MAX_BLOCK_SIZE_EXCEEDED",
    "MAX_LIST_SIZE_EXCEEDED",
})
# The store answers but will not take this run's data: journal it, do not retry.
RUN_ERRORS = frozenset({
    "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED",
    "CUSTOMER_UNAUTHORIZED", "ENDPOINT_NOT_FOUND", "FEATURE_DISABLED", "NOT_IMPLEMENTED",
})


class Unreachable(Exception):
    """The store kept failing past the retry window (or cannot work at all): journal."""

    unsent = None  # (metrics, params, tags) a half-sent batch did not deliver
    permanent = False  # retrying cannot help (a missing driver, a read-only folder...)


class Unusable(Exception):
    """A store that cannot work at all (a read-only folder, a missing driver), found before
    MLflow would retry it for a minute; `cause` names why."""

    def __init__(self, cause):
        super().__init__(getattr(cause, "reason", None) or str(cause))
        self.cause = cause


class Refused(Unreachable):
    """The store answers but refuses this run's data (deleted run, no permission)."""


def error_code(exc: BaseException) -> str | None:
    return getattr(exc, "error_code", None)


# A tracking server whose database connection pool is exhausted (more requests at once than
# its pool holds: many ranks into one server) answers BAD_REQUEST with SQLAlchemy's pool
# timeout (its error page 3o7r): the store is busy, the item is fine, a retry will do.
_OVERLOADED = ("QueuePool limit", "sqlalche.me/e/14/3o7r", "sqlalche.me/e/20/3o7r",
               "sqlalche.me/e/21/3o7r")


def is_overloaded(exc: BaseException) -> bool:
    """A store too busy to take the request now (transient), whatever code it answered."""
    text = str(exc)
    return any(mark in text for mark in _OVERLOADED)


def is_item_error(exc: BaseException) -> bool:
    """An error about the data sent (retrying cannot help), not about the store."""
    return error_code(exc) in ITEM_ERRORS and not is_overloaded(exc)


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def cause_of(exc: BaseException, uri: str | None = None):
    """The classified cause (azml_v1_bridge.causes), or None where it cannot be had."""
    try:
        from .. import causes
    except ImportError:
        return None
    try:
        return causes.classify(exc, uri)
    except Exception:
        return None


def is_permanent(exc: BaseException, uri: str | None = None) -> bool:
    """A store failure that retrying within seconds cannot mend."""
    if isinstance(exc, Unusable):
        return True
    cause = cause_of(exc, uri)
    if cause is not None:
        return not cause.transient
    for link in _chain(exc):
        if isinstance(link, ImportError):
            return True
        text = str(link).lower()
        if ("unable to open database file" in text or "readonly database" in text
                or "read-only file system" in text):
            return True
    return False


def is_sign_in_refusal(exc: BaseException, uri: str | None = None) -> bool:
    """A refused sign-in, whatever error code MLflow gave it (Azure ML's JSON refusal becomes
    INTERNAL_ERROR): retrying cannot mend it."""
    cause = cause_of(exc, uri)
    return cause is not None and getattr(cause, "kind", None) == "authentication"


def describe_error(exc: BaseException, uri: str | None = None) -> str:
    """A store failure in one line, naming its cause where it is known; credentials redacted."""
    cause = cause_of(exc, uri)
    if cause is not None and getattr(cause, "kind", "other") != "other":
        return config.redact(getattr(cause, "reason", None) or cause.message)
    return plain_error(exc)


def plain_error(exc: BaseException) -> str:
    """Any other failure (a chart, a bug) as it is; credentials redacted."""
    text = f"{type(exc).__name__}: {exc}"
    return config.redact(text if len(text) < 500 else text[:500] + "...")


def strip_credentials(uri: str | None) -> str | None:
    """The URI without user:password@ (the journal never stores credentials)."""
    if not uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return config.redact(uri)
    if parts.netloc and "@" in parts.netloc:
        parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
        return urlunsplit(parts)
    return config.redact(uri)
