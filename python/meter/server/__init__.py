"""The HTTP server: an ASGI app (`app.py`) served by granian, its routes declared once (`routes/`, `table.py`).

The route table generates both the router (`router.py`) and `/openapi.json` (`openapi.py`); see `app.py` for how a
request flows through the modules of this package.
"""

from meter.server.app import MeterApp, create_app

__all__ = ["MeterApp", "create_app"]
