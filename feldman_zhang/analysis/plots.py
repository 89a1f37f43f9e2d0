"""The analysis commands' figures: made, drawn into, encoded and saved.

Figures are `matplotlib.figure.Figure`s made without pyplot: they render
through the Agg canvas whatever the user's backend, hold no global state, and
the commands either save them (`save_png`) or embed them (`png_bytes`).
"""

import io

from matplotlib import figure as mpl_figure

from feldman_zhang.analysis import outputs


def new_figure(width: float, height: float) -> mpl_figure.Figure:
  return mpl_figure.Figure(figsize=(width, height))


def show_image(ax, x, caption: str = '', color: str = 'black') -> None:
  """Draws one (H, W, C) uint8 image, C = 1 (grey) or 3 (RGB), captioned."""
  if x.shape[-1] == 1:
    ax.imshow(x[..., 0], cmap='gray', vmin=0, vmax=255,
              interpolation='nearest')
  else:
    ax.imshow(x, interpolation='nearest')
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_xlabel(caption, fontsize=7, color=color, linespacing=1.1)


def png_bytes(fig: mpl_figure.Figure, dpi: int = 100) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=dpi)
  return buf.getvalue()


def save_png(fig: mpl_figure.Figure, path: str, dpi: int = 100,
             remedy: str | None = outputs.OUT) -> str:
  """Writes the figure (atomically, as the store does); returns the path.
  OutputError naming it if it cannot be written (outputs.writing)."""
  data = png_bytes(fig, dpi)
  return outputs.write_file(path, lambda f: f.write(data), remedy)
