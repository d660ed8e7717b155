"""The gateway's HTTP routes, one module per concern; `init_app` registers them all."""

from __future__ import annotations

from flask import Flask

from gateway.routes import health, legacy, predict, predictions, rollouts, scorecard, web


def init_app(app: Flask) -> None:
    for module in (predict, predictions, scorecard, legacy, rollouts, health, web):
        app.register_blueprint(module.bp)
