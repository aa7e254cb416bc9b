"""Tests of the predictor: wire protocol, Postgres types, SCRAM and the SQL endpoint."""
