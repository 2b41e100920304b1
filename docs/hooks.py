"""MkDocs hook: the config reference page is made from the code (harness.study.reference)."""

from __future__ import annotations

from typing import Any

MARK = "<!-- config-reference -->"


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARK not in markdown:
        return markdown
    from harness.study.reference import config_reference

    return markdown.replace(MARK, config_reference())
