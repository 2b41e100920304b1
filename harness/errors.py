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


def failure(e: BaseException, verbose: bool = False) -> tuple[int, str]:
    """The exit code and the one line a command (CLI or pipeline rule) ends with for ``e``: a problem
    the user can fix is 2, Ctrl-C or SIGTERM 130, anything unexpected 1 (its traceback with -v)."""
    if isinstance(e, HarnessError):
        return 2, f"error: {e}"
    if isinstance(e, OSError):  # disk full, read-only or vanished files in the middle of a run
        where = f" {e.filename}" if e.filename else ""
        return 2, (
            f"error: cannot access{where}: {e.strerror or e}; check free space and permissions, then rerun"
            " (finished trials are kept; a killed trial resumes from its checkpoint)"
        )
    if isinstance(e, KeyboardInterrupt):
        return 130, "error: interrupted (Ctrl-C); finished work is kept: rerun the same command to go on"
    first = first_line(e)
    hint = "" if verbose else " (rerun with -v for the traceback)"
    return 1, f"error: unexpected {type(e).__name__}{f': {first}' if first else ''}{hint}"
