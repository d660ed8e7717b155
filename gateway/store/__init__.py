"""The prediction log in Cassandra: the store the gateway writes through, its records, and schema migrations.

`PredictionStore` (store.py) is the only code that reads or writes prediction tables; `migrate.py` (`mnist-
migrate`) owns the schema. Importing this package does not connect to anything."""

from gateway.store.records import PredictionRecord
from gateway.store.store import Page, PredictionStore

__all__ = ["Page", "PredictionRecord", "PredictionStore"]
