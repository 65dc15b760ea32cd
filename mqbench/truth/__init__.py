"""Ground truth: the evaluator that measures one configuration, the table store (load,
verify, ship) and table building (plan, shards, merge, `ensure_table`).

Imports task and quant.
"""
