"""Sizes and times as people read them."""

from feldman_zhang import units


def test_the_human_size_of_a_matrix():
  assert units.human_bytes(2.6e6) == '2.6 MB'
  assert units.human_bytes(2.4e9) == '2.4 GB'
  assert units.human_bytes(512) == '512 B'
