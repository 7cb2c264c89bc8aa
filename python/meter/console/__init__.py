"""The web console (``/console``): the pages people read, served by the same process as the API.

Server-rendered HTML (Jinja2 templates, autoescaped), with a small script that only adds to pages that work without
it. Nothing is fetched from elsewhere at run time: the stylesheet and the script are files of this package.

- :mod:`meter.console.app` owns what every page shares: signing in with an API key, the session cookie, CSRF tokens,
  the security headers (a Content-Security-Policy with no inline script), the dispatch and the error pages.
- :mod:`meter.console.pages` holds the pages: customers, invoices (with their actions and PDFs), usage, revenue.
- :mod:`meter.console.charts` draws their charts (SVG, on the server).
- ``templates/`` and ``static/`` are what they say.

A page reads and writes through the same stores and the same invoicer as the API, with the tenant of the key that
signed in, so a page shows exactly what the API answers and a tenant never reaches another's data.
"""
