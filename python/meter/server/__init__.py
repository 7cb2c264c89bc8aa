"""The HTTP server: an ASGI app (`app.py`) served by granian, with errors mapped in one table (`errors.py`)."""

from meter.server.app import MeterApp, create_app

__all__ = ["MeterApp", "create_app"]
