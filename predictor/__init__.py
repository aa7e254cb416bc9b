"""Serving the deployed models: scoring, write-back to the source, and the SQL endpoint.

- ``scoring``: the cache of loaded deployed models and the ``pgml_predict`` DuckDB functions;
- ``score_views``: the ``pgml_scores.<project>`` views on the endpoint;
- ``writeback``: each project's scores kept in the source's ``pgml_scores`` tables;
- ``server``: the SQL endpoint, a PostgreSQL wire-protocol server over the mirror;
- ``session``: one client's protocol state: startup, authentication, simple and extended query;
- ``execution``: running one statement in a session's transaction state;
- ``results``: statement outcomes, rows read lazily, prepared statements and portals;
- ``wire``: the protocol's messages, parsed and encoded as pure functions over bytes;
- ``scram``: SCRAM-SHA-256 authentication, server side;
- ``statements``: SQL from clients, split, checked against the allow-list and translated;
- ``procedures``: PostgresML's procedures (``pgml.train``, ``deploy``...) on the endpoint;
- ``catalog``: PostgreSQL's system catalogs, answered from DuckDB's;
- ``pg_types``: Postgres types, and the Postgres type of each DuckDB and Arrow type;
- ``value_text``, ``column_text``: values and Arrow columns in Postgres text output format;
- ``text_parameters``, ``binary_parameters``: Bind parameters as Python values.
"""
