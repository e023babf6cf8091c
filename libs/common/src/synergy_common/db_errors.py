"""Which Postgres failures are worth retrying, and which come back the same way every time. Pure."""

from __future__ import annotations

import asyncpg

# SQLSTATE classes: 08 connection exception, 53 insufficient resources, 57 operator intervention
# (admin shutdown, crash shutdown, cannot connect now), 58 system error.
_RETRYABLE_CLASSES = ("08", "53", "57", "58")
_RETRYABLE_STATES = frozenset({
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
    "25006",  # read_only_sql_transaction (a failover in progress)
})


def is_retryable_db_error(exc: BaseException) -> bool:
    """True for a lost connection, a server going away, a serialization failure or a deadlock.

    False for data Postgres will never accept (a NUL byte, a constraint, a wrong type): retrying
    such a write only wedges whatever waits behind it.
    """
    if isinstance(exc, (OSError, TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, (asyncpg.InterfaceError, asyncpg.exceptions.ConnectionDoesNotExistError)):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state in _RETRYABLE_STATES or state[:2] in _RETRYABLE_CLASSES
    return False


def strip_nul(text: str) -> str:
    """Postgres text and jsonb cannot hold U+0000; keep it visible as the escape `\\u0000`."""
    return text.replace("\x00", "\\u0000") if "\x00" in text else text
