"""The study config's key reference, made from the schema, the defaults and the hyperparameter table
(the docs site's "Config reference" page is this text): it cannot drift from what is validated."""

from __future__ import annotations

import json
from typing import Any

from harness.params import TABLE, HyperParam, Name
from harness.registry import DATASETS
from harness.study.config import DEFAULTS, schema


def _show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict | list):
        return json.dumps(v)
    return str(v)


def _cell(text: str) -> str:
    """Text for a table cell (a bare | would end it)."""
    return text.replace("|", "\\|")


def _kind(prop: dict) -> str:
    """What a key takes, from its schema entry."""
    if "enum" in prop:
        return " \\| ".join(f"`{_show(v)}`" for v in prop["enum"])
    types = prop.get("type", "object")
    types = types if isinstance(types, list) else [types]
    out = " or ".join(t for t in types)
    bounds = [
        f"≥ {prop['minimum']}" if "minimum" in prop else "",
        f"> {prop['exclusiveMinimum']}" if "exclusiveMinimum" in prop else "",
        f"< {prop['exclusiveMaximum']}" if "exclusiveMaximum" in prop else "",
    ]
    return out + "".join(f", {b}" for b in bounds if b)


def _row(key: str, prop: dict, default: Any, required: bool = False) -> str:
    text = prop.get("description", "")
    if key == "dataset":
        text += f" One of: {', '.join(DATASETS.names())}."
    kind = prop.get("type")
    types: list = kind if isinstance(kind, list) else [kind]
    blank = default in ("", None) and "null" not in types
    shown = "required" if required else "–" if blank else f"`{_show(default)}`"
    return f"| `{key}` | {_kind(prop)} | {shown} | {_cell(text)} |"


def _param_row(p: HyperParam) -> str:
    d = p.domain
    if isinstance(d, Name):
        takes = "a name: " + ", ".join(f"`{n}`" for n in d.known())
    else:
        takes = "an integer" if d.integer else "a number"
        if d.minimum is not None:
            takes += f" {'>' if d.exclusive else '≥'} {d.minimum:g}"
    trunks = ", ".join(p.trunks)
    when = f"; only when `{p.when[0]}` makes it apply" if p.when else ""
    return f"| `{p.name}` | {takes} | `{_show(p.default)}` | {trunks}{when} | {_cell(p.doc)} |"


def config_reference() -> str:
    """Markdown: every top-level key, every key of each section, every search-space parameter."""
    s = schema()
    props, required = s["properties"], set(s.get("required", []))
    head = "| key | takes | default | what it is |\n|---|---|---|---|"
    out = ["## Top-level keys", "", head]
    sections = []
    for key, prop in props.items():
        if key == "search_space":
            continue
        out.append(_row(key, prop, DEFAULTS.get(key), key in required))
        if prop.get("type") == "object" and "properties" in prop:
            sections.append((key, prop))
    for key, prop in sections:
        out += ["", f"## `{key}`", "", prop.get("description", ""), "", head]
        out += [_row(k, p, (DEFAULTS.get(key) or {}).get(k)) for k, p in prop["properties"].items()]
    out += [
        "",
        "## `search_space`",
        "",
        props["search_space"]["description"],
        "A parameter left out takes its default where its trunk mode uses it.",
        "",
        "| parameter | takes | default | trunk modes | what it is |",
        "|---|---|---|---|---|",
    ]
    out += [_param_row(p) for p in TABLE.values()]
    return "\n".join(out) + "\n"
