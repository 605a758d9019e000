"""The addon's logic as plain functions, importable without Odoo.

The Odoo glue (hooks, controller, settings model) only gathers its inputs from
the ORM and calls these:

* ``config``  -- the system parameters and their validation;
* ``tokens``  -- minting the sidecar JWT a logged-in user connects with;
* ``once``    -- report a problem once per database, not on every request;
* ``schema``  -- the SQL the install/uninstall hooks run, and the documented
  mapping of ``crm_lead`` (and of the addon's notification table) to the
  sidecar's event fields.

Keeping them free of ``odoo`` lets the repository's pytest suite run them
against a real PostgreSQL and a real sidecar, which Odoo cannot be here.
"""
