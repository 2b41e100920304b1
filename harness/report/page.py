"""The report page: figures (inline PNG, also saved beside the page) and tables (also saved as
CSV), in one self-contained HTML file readable at 1200 px."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd

from harness.report import figures as F


class Page:
    """Collects figures and tables; writes PNGs and CSVs beside the HTML."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        (out_dir / "figures").mkdir(parents=True, exist_ok=True)
        (out_dir / "tables").mkdir(parents=True, exist_ok=True)
        self.parts: list[str] = []

    def h(self, level: int, text: str) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def p(self, raw_html: str) -> None:
        self.parts.append(f"<p>{raw_html}</p>")

    def figure(self, key: str, title: str, caption: str, fig: F.Figure | None, missing: str = "") -> None:
        if fig is None:
            self.p(f"<i>{html.escape(title)}: not drawn ({html.escape(missing or 'no data')}).</i>")
            return
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
        fig.savefig(self.out_dir / "figures" / f"{key}.png", dpi=200, bbox_inches="tight")
        F.plt.close(fig)
        b64 = base64.b64encode(buf.getvalue()).decode()
        self.parts.append(
            f'<figure id="fig-{key}"><img alt="{html.escape(title)}" src="data:image/png;base64,{b64}">'
            f"<figcaption><b>{html.escape(title)}.</b> {html.escape(caption)}"
            f' <a href="figures/{key}.png">PNG</a></figcaption></figure>'
        )

    def table(self, key: str, df: pd.DataFrame, caption: str = "") -> None:
        df.to_csv(self.out_dir / "tables" / f"{key}.csv", index=False)
        body = df.to_html(
            index=False,
            float_format=_number,
            formatters=_formatters(df),  # type: ignore[arg-type]
            classes=f"dataframe {key.split('-')[-1]}",
            border=0,
            na_rep="–",
        )
        body = body.replace("<table ", f'<table id="table-{key}" data-rows="{len(df)}" ', 1)
        link = f' <a href="tables/{key}.csv">CSV</a>'
        self.parts.append(f"<p class='caption'>{caption}{link}</p><div class='scroll'>{body}</div>")

    def html(self, title: str) -> str:
        body = "\n".join(self.parts)
        return (
            f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n<title>{html.escape(title)}'
            f"</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
        )


def _number(v: float) -> str:
    """Integers as such, 4 decimals for metrics, thousands for throughput, scientific for small values."""
    if float(v).is_integer() and abs(v) >= 1:
        return f"{v:,.0f}"
    if v != 0 and abs(v) < 0.01:
        return f"{v:.2e}"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4f}"


def _formatters(df: pd.DataFrame) -> dict[str, object]:
    """Per column, by what it holds: throughput and counts as whole numbers, learning rates in
    scientific notation, loads with one decimal; everything else through ``_number``."""

    def whole(v: float) -> str:
        return "–" if pd.isna(v) else f"{v:,.0f}"

    def sci(v: float) -> str:
        return "–" if pd.isna(v) else f"{v:.2e}"

    def one(v: float) -> str:
        return "–" if pd.isna(v) else f"{v:.1f}"

    out: dict[str, object] = {}
    for c in df.columns:
        name = str(c)
        if not pd.api.types.is_float_dtype(df[c]):
            continue
        if "img" in name or name.startswith(("images", "trials")) or name in ("budget",):
            out[name] = whole
        elif name == "lr":
            out[name] = sci
        elif name.startswith("host_"):
            out[name] = one
    return out


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222 }
table { border-collapse: collapse; font-size: 12px; margin: .3em 0 1.5em }
td, th { padding: 3px 7px; border-bottom: 1px solid #ddd; text-align: right }
figure { display: inline-block; margin: 0 1em 1.5em 0; vertical-align: top; max-width: 100% }
img { max-width: 540px; width: 100% }
figcaption { font-size: 12px; max-width: 540px }
p.caption { font-size: 13px; margin-bottom: 0 }
code { background: #f3f3f3; padding: 0 3px }
div.scroll { overflow-x: auto }
table.test td, table.test th { white-space: normal; min-width: 3em }
p.note { background: #fff4e5; border-left: 4px solid #f0a030; padding: 4px 8px; font-size: 13px }
"""
