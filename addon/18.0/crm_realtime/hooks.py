"""Lifecycle hooks only; the SQL they run lives in ``lib/schema.py``."""
import logging

from .lib import schema

_logger = logging.getLogger(__name__)


def post_init_hook(env):
    """Apply sql/install.sql and watch crm_lead and crm_realtime_notification.

    Runs inside the module-install transaction: a failure rolls the whole
    install back, and nothing is committed before Odoo commits.
    """
    schema.install(env.cr)
    _logger.info("crm_realtime: change capture installed on %s and %s",
                 schema.LEAD_TABLE, schema.NOTIFICATION_TABLE)


def uninstall_hook(env):
    """Apply sql/uninstall.sql: drop the capture triggers and the crm_realtime schema.

    Odoo calls it before dropping the addon's own tables, so the triggers on
    crm_realtime_notification are removed while that table still exists.
    """
    schema.uninstall(env.cr)
    _logger.info("crm_realtime: change capture removed")
