"""Is the tracking server there? Asked first by every command that tracks, before any long work,
without importing MLflow."""

from __future__ import annotations

from harness.errors import HarnessError, redact_url


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """An MLflow server URL must answer its health check now, not after minutes of client retries."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered (a proxy or an older server without /health): reachable
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        raise HarnessError(
            f"MLflow tracking server {redact_url(tracking_uri)} does not answer ({why}); start it, check"
            " mlflow_uri, or set mlflow_uri: null to track in results/mlflow.db"
        ) from None
