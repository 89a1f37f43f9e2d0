"""Sizes and durations as people read them."""


def human_bytes(n: float) -> str:
  """2.6 MB, 2.4 GB: the unit that fits."""
  for unit in ('B', 'kB', 'MB', 'GB', 'TB'):
    if n < 1000 or unit == 'TB':
      return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
    n /= 1000
  return ''


def duration(s: float) -> str:
  """45 s, 12 min, 3.5 h, 2.1 days; '?' for an unknown (infinite) time."""
  if s == float('inf'):
    return '?'
  if s < 120:
    return f'{s:.0f} s'
  if s < 7200:
    return f'{s / 60:.0f} min'
  if s < 2 * 86400:
    return f'{s / 3600:.1f} h'
  return f'{s / 86400:.1f} days'
