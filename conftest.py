"""Load the test fixture plugins for every way pytest is started (./run test, plain pytest)."""

pytest_plugins = ["tests.fix_pg", "tests.fix_pgvector", "tests.fix_sidecar", "tests.fix_kafka"]
