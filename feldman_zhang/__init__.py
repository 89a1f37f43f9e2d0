"""feldman_zhang: what neural networks memorize, estimated by subset training.

Feldman & Zhang, "What Neural Networks Memorize and Why" (NeurIPS 2020).
"""

__version__ = '0.1.0'
