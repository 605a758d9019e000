"""Calendly bookings become CRM prospects: signed webhooks plus a poller.

Modules: ``signature`` and ``booking`` (pure), ``client`` (Calendly API),
``store`` (connections, encrypted secrets), ``crm`` (writes to the CRM tables,
exactly once), ``poller``, ``web`` (webhook handler), ``component`` (wiring),
``cli`` (``crm-realtime calendly ...``). See docs/calendly.md.
"""
