"""Tables for the lab book's cells: HTML in JupyterLab and Voila, plain text elsewhere.

No kernel analogue and no model logic. :func:`show_table` formats rows exactly as
:func:`iovalab.lab.notation.table` does (hex for address-like columns, yes/no for booleans) but renders
as an HTML table whose cells never break inside a word: numbers and identifiers stay on one line,
prose columns wrap only at spaces, URLs are whole links, and a table wider than the column scrolls
sideways instead of squeezing (JupyterLab's text output breaks long lines anywhere, "sour/ce").
"""

from __future__ import annotations

import html
import re
from typing import Any

from iovalab.lab.notation import HEX_WORDS, table

__all__ = ["Table", "show_table", "Shown", "shown"]

_URL = re.compile(r"https?://[^\s),]+")
# a header may wrap at its spaces ("simulator / paddr"): its column is then as wide as its values, so a
# seven-column table of hex numbers fits a 1024 px window with the file browser open
_TH = ("text-align:left;padding:2px 10px 2px 0;border-bottom:1px solid #999;white-space:normal;"
       "word-break:normal;overflow-wrap:normal;vertical-align:bottom;font-size:12px")
_TD = "padding:1px 10px 1px 0;font-size:12px;vertical-align:top;border:none"
_NUM = _TD + ";text-align:right;white-space:nowrap;font-family:monospace"
_WORD = _TD + ";text-align:left;white-space:nowrap;font-family:monospace"
_PROSE = _TD + ";text-align:left;white-space:normal;word-break:normal;overflow-wrap:normal;min-width:22em"


def _cell(k: str, v: Any, hex_cols: set[str] | None) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "yes", False: "no", None: "-"}[v]
    if isinstance(v, int):
        is_hex = k in hex_cols if hex_cols is not None else any(w in k for w in HEX_WORDS)
        return hex(v) if is_hex else f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if v == int(v) or abs(v) >= 100 else f"{v:,.1f}"
    return str(v)


def _words(s: str) -> str:
    """Escaped text whose hyphenated words (message ids, ``smmuv3-4k``) never break at their hyphens."""
    return re.sub(r"\S*-\S*", lambda m: f'<span style="white-space:nowrap">{m.group(0)}</span>', html.escape(s))


def _html_text(s: str) -> str:
    """Escaped text with URLs as links (a URL is never cut: it is the link's own text)."""
    out, last = [], 0
    for m in _URL.finditer(s):
        out.append(_words(s[last:m.start()]))
        url = html.escape(m.group(0))
        out.append(f'<a href="{url}" target="_blank" style="white-space:nowrap">{url}</a>')
        last = m.end()
    out.append(_words(s[last:]))
    return "".join(out)


class Table:
    """Rows shown as an HTML table (``_repr_html_``) or as :func:`~iovalab.lab.notation.table` text."""

    def __init__(self, rows: list[dict], columns: list[str] | None = None, hex_cols: set[str] | None = None,
                 caption: str = ""):
        self.rows = rows
        self.columns = columns or (list(rows[0]) if rows else [])
        self.hex_cols = hex_cols
        self.caption = caption

    def text(self) -> str:
        body = table(self.rows, self.columns, self.hex_cols)
        return f"{self.caption}\n{body}" if self.caption else body

    __str__ = text

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        cols = self.columns
        cells = [[_cell(k, r.get(k), self.hex_cols) for k in cols] for r in self.rows]
        # a column is prose when some cell has a space in it and is long: it may wrap, at spaces only
        prose = {i for i, _ in enumerate(cols) if any(" " in row[i] and len(row[i]) > 24 for row in cells)}
        numeric = {i for i, _ in enumerate(cols)
                   if all(re.fullmatch(r"-?[0-9a-fx,.]+|yes|no|-", row[i]) for row in cells)}
        out = ['<div class="iovalab-table" style="overflow-x:auto;max-width:100%">']
        if self.caption:
            out.append(f'<div style="font-size:12px;margin:2px 0">{html.escape(self.caption)}</div>')
        out.append('<table style="border-collapse:collapse;margin:2px 0;table-layout:auto">')
        out.append("<tr>" + "".join(f'<th style="{_TH}">{html.escape(c)}</th>' for c in cols) + "</tr>")
        for row in cells:
            tds = []
            for i, v in enumerate(row):
                style = _PROSE if i in prose else _NUM if i in numeric else _WORD
                tds.append(f'<td style="{style}">{_html_text(v)}</td>')
            out.append("<tr>" + "".join(tds) + "</tr>")
        out.append("</table></div>")
        return "".join(out)


def show_table(rows: list[dict], columns: list[str] | None = None, hex_cols: set[str] | None = None,
               caption: str = "") -> Table:
    """A :class:`Table` to leave as a cell's last expression (or pass to ``display``)."""
    return Table(rows, columns, hex_cols, caption)


class Shown:
    """A value with its caption: what a cell's last expression should be, so that an app view (Voila,
    code hidden) never shows a bare ``0`` or ``(8, 1)``. HTML: the caption, then the value's repr."""

    def __init__(self, caption: str, value: Any):
        self.caption = caption
        self.value = value

    def _body(self) -> str:
        import pprint

        v = self.value
        if isinstance(v, (tuple, list)) and v and all(isinstance(x, str) for x in v):
            # hex strings read as numbers: ('0xfffff000', ...) would show Python's quotes to the learner
            inner = ", ".join(v)
            return f"({inner})" if isinstance(v, tuple) else f"[{inner}]"
        return pprint.pformat(v, width=100, sort_dicts=False)

    def __repr__(self) -> str:
        return f"{self.caption}:\n{self._body()}"

    def _repr_html_(self) -> str:
        return (f'<div style="font-size:12px;margin:2px 0"><b>{html.escape(self.caption)}</b></div>'
                f'<pre style="margin:0 0 4px 0;white-space:pre-wrap;word-break:normal">'
                f"{html.escape(self._body())}</pre>")


def shown(caption: str, value: Any) -> Shown:
    """``value`` with ``caption`` (say what the number is and which call gave it)."""
    return Shown(caption, value)


class Terminal:
    """What a command printed, as a terminal shows it: the command, its output line for line (a line
    wider than the column scrolls sideways instead of breaking mid-word), and its exit status."""

    def __init__(self, command: str, output: str, status: int):
        self.command = command
        self.output = output
        self.status = status

    def __repr__(self) -> str:
        return f"$ {self.command}\n{self.output}exit status {self.status}"

    def _repr_html_(self) -> str:
        return ('<pre style="margin:0 0 4px 0;white-space:pre;overflow-x:auto;max-width:100%;font-size:12px">'
                f"<b>$ {html.escape(self.command)}</b>\n{html.escape(self.output)}"
                f"<i>exit status {self.status}</i></pre>")

