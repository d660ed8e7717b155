"""The prediction log in Cassandra: schema migrations (`migrate`) and, for the gateway, the store."""
