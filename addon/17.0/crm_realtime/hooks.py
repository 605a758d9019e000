"""Lifecycle hooks only; the SQL they run lives in ``lib/schema.py``."""
import logging

from .lib import schema

_logger = logging.getLogger(__name__)


def post_init_hook(env):
    """Apply the module's copy of sql/install.sql (data/), watch crm_lead and
    crm_realtime_notification, and add the fold that publishes a new lead once, at commit.

    Runs inside the module-install transaction: a failure rolls the whole
    install back, and nothing is committed before Odoo commits.
    """
    schema.install(env.cr)
    _logger.info("crm_realtime: change capture installed on %s and %s",
                 schema.LEAD_TABLE, schema.NOTIFICATION_TABLE)


def uninstall_hook(env):
    """Drop the addon's lead trigger, then apply data/uninstall.sql (the capture
    triggers and the crm_realtime schema).

    Odoo calls it before dropping the addon's own tables, so the triggers on
    crm_realtime_notification are removed while that table still exists.
    """
    schema.uninstall(env.cr)
    _logger.info("crm_realtime: change capture removed")
