"""AutoMixQ: weight-only 2/4-bit mixed precision with channel protection, its search,
and the Table-1-style comparison.
"""
