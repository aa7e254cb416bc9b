"""Load the test fixture plugins for every way pytest is started (./run test, plain pytest)."""

import pytest

pytest_plugins = ["tests.fix_pg", "tests.fix_pgvector", "tests.fix_sidecar", "tests.fix_kafka"]

_ONE_WORKER_FIXTURES = frozenset({"kafka_stack"})
"""Fixtures of a server too heavy to start twice (Kafka with Kafka Connect, two JVMs)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``./run test`` runs two workers, ``--dist loadgroup``), the tests
    that need such a server run in one worker, which starts it once."""
    for item in items:
        if _ONE_WORKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("kafka"))
