"""The report's blocks and their two renderings: Markdown beside its plots/ folder, and one self-contained HTML
page with the plots embedded. A section is a list of blocks, so both documents always say the same."""

from __future__ import annotations

import base64
import dataclasses
import html
import pathlib
from collections.abc import Sequence

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;"
    "text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}"
    "img{max-width:100%}figure{margin:1em 0}figcaption{color:#666;font-size:13px}"
    "code{background:#f4f4f4;padding:1px 3px}"
)


@dataclasses.dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclasses.dataclass(frozen=True)
class Paragraph:
    text: str


@dataclasses.dataclass(frozen=True)
class BulletList:
    items: Sequence[str]


@dataclasses.dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclasses.dataclass(frozen=True)
class Image:
    path: pathlib.Path
    alt: str


Block = Heading | Paragraph | BulletList | Table | Image  # one piece of the report, in Markdown and HTML alike


def _md_lines(b: Block, out: pathlib.Path) -> list[str]:
    """One block as Markdown lines, ending with a blank line; images relative to `out`."""
    match b:
        case Heading():
            return ["#" * b.level + " " + b.text, ""]
        case Paragraph():
            return [b.text, ""]
        case BulletList():
            return [f"- {item}" for item in b.items] + [""]
        case Table():
            head = ["| " + " | ".join(b.header) + " |", "|" + "---|" * len(b.header)]
            return head + ["| " + " | ".join(row) + " |" for row in b.rows] + [""]
        case Image():
            return [f"![{b.alt}]({b.path.relative_to(out).as_posix()})", ""]


def markdown(blocks: Sequence[Block], out: pathlib.Path) -> str:
    """The report as Markdown, for a file in `out` (its images linked by relative path)."""
    return "\n".join(line for b in blocks for line in _md_lines(b, out))


def _inline_md(text: str) -> str:
    """The only Markdown the blocks use inline: **bold** and `code`."""
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html_element(b: Block) -> str:
    """One block as an HTML element; an image embedded as base64 PNG."""
    match b:
        case Heading():
            return f"<h{b.level}>{html.escape(b.text)}</h{b.level}>"
        case Paragraph():
            return f"<p>{_inline_md(b.text)}</p>"
        case BulletList():
            return "<ul>" + "".join(f"<li>{_inline_md(i)}</li>" for i in b.items) + "</ul>"
        case Table():
            head = "".join(f"<th>{_inline_md(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline_md(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        case Image():
            data = base64.b64encode(b.path.read_bytes()).decode()
            return (
                f'<figure><img alt="{html.escape(b.alt)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(b.alt)}</figcaption></figure>"
            )


def html_page(blocks: Sequence[Block], title: str) -> str:
    """The report as one HTML page that needs no other file."""
    body = "\n".join(_html_element(b) for b in blocks)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n" + body + "\n</body></html>\n"
    )
