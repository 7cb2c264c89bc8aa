"""The HTTP server: an ASGI app (`app.py`) served by granian, its routes declared once (`routes/`, `table.py`).

The route table generates both the router (`router.py`) and `/openapi.json` (`openapi.py`); see `app.py` for how a
request flows through the modules of this package.

This ``__init__`` imports nothing (``meter.server.app`` is the entry point, ``create_app`` granian's factory), so that a
package the app serves, such as the console (``meter.console``), can import this package's modules without a circle.
"""
