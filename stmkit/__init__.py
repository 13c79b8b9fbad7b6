"""stmkit: reproduce and teach Selective Token Masking (arXiv 2501.14315)."""

__version__ = "0.1.0"
