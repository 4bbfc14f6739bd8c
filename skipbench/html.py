"""Self-contained HTML pages: one file, inline CSS and script, no fetches, works from file://.

`page` wraps sections into a document; `table` renders rows as a sortable table (click a
header: numbers sort by the leading number of a cell, "1.01 [0.95, 1.07]" by 1.01, other cells
as text). The CSS reads well on a laptop screen (tables scroll sideways inside their section,
figures shrink to the column) and prints (no scrolling boxes, figures kept on one page).
"""

from __future__ import annotations

import html as _html
from typing import Any, Iterable

STYLE = """
:root { color-scheme: light; --fg: #1d2430; --muted: #5b6472; --line: #d9dee5; --band: #f4f6f9;
        --bad: #b42318; --good: #067647; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1200px; padding: 1.2rem 1.5rem 3rem; }
h1 { font-size: 1.6rem; margin: 0.2rem 0 0.6rem; }
h2 { font-size: 1.25rem; margin: 2rem 0 0.6rem; border-bottom: 1px solid var(--line); padding-bottom: 0.2rem; }
h3 { font-size: 1.05rem; margin: 1.3rem 0 0.4rem; }
p, li { max-width: 75ch; }
.muted, .note { color: var(--muted); font-size: 0.9rem; }
nav ul { columns: 3 14rem; padding-left: 1.2rem; margin: 0.3rem 0; }
.scroll { overflow-x: auto; margin: 0.4rem 0 0.8rem; }
table { border-collapse: collapse; font-size: 0.86rem; font-variant-numeric: tabular-nums; }
th, td { padding: 0.25rem 0.6rem; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--band); position: sticky; top: 0; }
th.sortable { cursor: pointer; user-select: none; }
th.sortable::after { content: " \\2195"; color: var(--muted); font-size: 0.8em; }
th[aria-sort="ascending"]::after { content: " \\2191"; }
th[aria-sort="descending"]::after { content: " \\2193"; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.flag, .flag { color: var(--bad); font-weight: 600; }
.good { color: var(--good); }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 0.15rem 1rem; font-size: 0.9rem; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
.summary { background: var(--band); border: 1px solid var(--line); border-radius: 6px; padding: 0.6rem 1rem; }
figure { margin: 0.8rem 0 1.4rem; }
figure svg { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 0.9rem; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.85rem; }
pre { background: var(--band); padding: 0.5rem; overflow-x: auto; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  nav, .noprint { display: none; }
  .scroll { overflow: visible; }
  th { position: static; }
  figure, table { break-inside: avoid; }
  h2 { break-after: avoid; }
}
"""

SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead ? table.tHead.rows[0].cells : [];
  Array.prototype.forEach.call(heads, function (th, col) {
    th.classList.add("sortable");
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var up = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      function key(row) {
        var text = row.cells[col] ? row.cells[col].textContent.trim() : "";
        var num = parseFloat(text.replace(/,/g, ""));
        return isNaN(num) ? text.toLowerCase() : num;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), c;
        if (typeof x === typeof y) { c = x < y ? -1 : x > y ? 1 : 0; }
        else { c = typeof x === "number" ? -1 : 1; }
        return up ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def escape(value: Any) -> str:
    """Text for HTML: escaped, None as an empty string."""
    return "" if value is None else _html.escape(str(value))


def table(headers: list[str], rows: Iterable[Iterable[Any]], classes: dict[int, Any] | None = None,
          caption: str = "") -> str:
    """A sortable table of text cells (escaped), in a box that scrolls sideways on narrow screens.

    `classes` maps a row number to a CSS class for that row's cells, or to a dict {column: class}.
    """
    classes = classes or {}
    head = "".join(f"<th scope=\"col\">{escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = classes.get(i)
        cells = []
        for j, cell in enumerate(row):
            c = cls.get(j) if isinstance(cls, dict) else cls
            cells.append(f"<td class=\"{c}\">{escape(cell)}</td>" if c else f"<td>{escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption class=\"note\">{escape(caption)}</caption>" if caption else ""
    return (f"<div class=\"scroll\"><table class=\"sortable\">{cap}<thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def page(title: str, body: str) -> str:
    """A complete self-contained HTML document: `body` (HTML) under the title, with the style
    and the table-sorting script inline."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n"
            f"<script>{SCRIPT}</script>\n</body>\n</html>\n")
