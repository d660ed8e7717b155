"""Shared fixtures. Each real component has its own plugin module in tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.paths",
    "tests.fixtures.models",
    "tests.fixtures.cassandra_node",
    "tests.fixtures.cassandra_cluster",
    "tests.fixtures.model_server",
    "tests.fixtures.gateway_server",
    "tests.fixtures.photos",
]
