"""The ground floor: the DuckDB mirror and the vocabulary every part shares.

Everything above stands on this package and nothing here imports from above:

- ``changes``: typed change batches, what the replicator hands the mirror from either source;
- ``column_types``: how a Postgres column type is stored in the mirror;
- ``errors``: the errors a user sees, each with a SQLSTATE;
- ``duckdb_sql``: the bookkeeping schema, quoting, transactions;
- ``tables``: a source table's place in the mirror and how its schema follows the source;
- ``apply``: applying row changes to a mirror table in bulk;
- ``change_log``: which rows each commit changed, for watchers and for replay;
- ``store``: the mirror file itself (``Mirror``): positions, commits, tables, batches;
- ``registry``: the model registry's storage (projects, snapshots, models, deployments).

Import from the submodules (``from mirror.store import Mirror``): importing the package loads
nothing, so a light importer (the CLI's ``--help``, the error types) does not pay for DuckDB.
"""
