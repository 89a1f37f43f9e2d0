"""The report page's HTML: escaped text, tables, and figures embedded as
base64 data: URIs, in one page styled by one stylesheet (STYLE)."""

import base64
import html

from feldman_zhang.analysis import plots

STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f3f3f3; }
td.k { text-align: left; font-family: monospace; }
table.kv td { text-align: left; }
img { max-width: 100%; margin: 0.5em 0; }
.row { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.note { color: #666; }
.caveat { background: #fff4d6; border-left: 4px solid #e0a800;
          padding: 0.5em 0.8em; }
figure { margin: 0.5em 0 1em; }
figcaption { color: #555; font-size: 0.9em; max-width: 700px; }
"""


def escape(x) -> str:
  return html.escape(str(x))


def table(header, rows, key_column=False) -> str:
  """An HTML table; cells are escaped."""
  out = ['<table class="kv">' if key_column else '<table>']
  if header:
    out.append('<tr>' + ''.join(f'<th>{escape(h)}</th>' for h in header) +
               '</tr>')
  for r in rows:
    cells = [f'<td class="k">{escape(c)}</td>' if key_column and n == 0
             else f'<td>{escape(c)}</td>' for n, c in enumerate(r)]
    out.append('<tr>' + ''.join(cells) + '</tr>')
  out.append('</table>')
  return '\n'.join(out)


def image(png: bytes, alt: str) -> str:
  data = base64.b64encode(png).decode('ascii')
  return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def figure(fig, name: str, caption: str) -> str:
  """A Figure embedded, with its one-sentence caption under it."""
  return (f'<figure>{image(plots.png_bytes(fig), name)}'
          f'<figcaption>{escape(caption)}</figcaption></figure>')


def page(title: str, body: list) -> str:
  """The whole document: title as its <title> and <h1>, then the body's
  parts, one a line."""
  return '\n'.join([f'<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
                    f'<title>{escape(title)}</title><style>{STYLE}</style>'
                    '</head><body>', f'<h1>{escape(title)}</h1>', *body,
                    '</body></html>\n'])
