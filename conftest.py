"""Load the test fixtures plugin for every way pytest is started (./run test, plain pytest)."""

pytest_plugins = ["tests.fix_pg"]
