"""``crm-realtime demo``: the self-contained demo, apart from the product.

``demo.py`` (the command: embedded PostgreSQL, reference CRM, tokens),
``demo_web.py`` (the demo page and its tiny CRM API), ``demo_calendly.py``
(demo Calendly connections and a Calendly stand-in) and ``static/`` (the page).
``serve`` never imports this package; it uses the product through
``sidecar.runner`` and ``sidecar.settings`` like ``serve`` does.
"""
