"""The leaderboard: record store, DuckDB index, comparison reports, plots, the static page,
`regenerate`, and `submit-check` (which ends in recording).

Imports everything below it (task ... scoring), never search or cli.
"""
