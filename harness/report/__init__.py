"""The comparison report."""

from harness.report.build import build_report

__all__ = ["build_report"]
