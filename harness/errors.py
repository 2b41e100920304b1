"""One error type for everything a user can fix; the CLI turns it into one line and exit code 2."""

from __future__ import annotations


class HarnessError(Exception):
    """A problem the user can fix: bad config, missing or corrupt file, unknown name."""


class DataError(HarnessError):
    """Dataset files are missing, corrupt or inconsistent."""


class ConfigError(HarnessError):
    """A study config is invalid."""


def unknown_name(kind: str, name: str, known: list[str] | tuple[str, ...]) -> HarnessError:
    """The error for a registry miss, listing what would have worked."""
    return ConfigError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(known))}")


def first_line(e: BaseException, default: str = "") -> str:
    """The first line of an exception's message (library messages can run to pages), or ``default``."""
    text = str(e).strip()
    return text.splitlines()[0] if text else default


def redact_url(url: str) -> str:
    """Hide a password in error messages: scheme://user:***@host/db."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url
