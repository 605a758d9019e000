from datetime import timedelta

from odoo import api, fields, models


class CrmRealtimeNotification(models.Model):
    """A notification published to the browsers through the crm-realtime sidecar.

    Inserting a row is publishing it: the trigger installed by the addon writes
    it to the sidecar's journal in the same transaction. A row naming a user
    reaches that user's sockets opened for the row's company; a row without a
    user reaches every socket of the company. Rows are kept only as long as
    ``RETENTION_DAYS`` (they are a transport, not an inbox).
    """

    _name = "crm.realtime.notification"
    _description = "Realtime notification"
    _order = "id desc"

    RETENTION_DAYS = 7

    company_id = fields.Many2one(
        "res.company", required=True, index=True, ondelete="cascade",
        default=lambda self: self.env.company,
    )
    user_id = fields.Many2one(
        "res.users", index=True, ondelete="cascade",
        help="Recipient; empty: every user of the company.",
    )
    type = fields.Char(required=True, default="info")
    title = fields.Char()
    message = fields.Text()
    meta = fields.Json(help="Free-form JSON object delivered with the notification.")

    @api.model
    def _notify(self, title, message=None, *, type="info", meta=None, user=None, company=None):
        """Publish a notification; ``user`` (a res.users record) narrows it to one person.

        Server-side API only. The leading underscore is what keeps it off RPC:
        ``/web/dataset/call_kw`` and the external API refuse private methods
        (17.0 to 19.0), and it creates with ``sudo()``, so a public method
        would let any logged-in user, portal included, push toasts and
        ``meta`` to every socket of their company.
        """
        if not company:
            company = self.env.company
            if user and company not in user.company_ids:
                company = user.company_id
        return self.sudo().create({
            "company_id": company.id,
            "user_id": user.id if user else False,
            "type": type,
            "title": title,
            "message": message,
            "meta": meta or {},
        })

    @api.autovacuum
    def _gc_published(self):
        limit = fields.Datetime.now() - timedelta(days=self.RETENTION_DAYS)
        self.sudo().search([("create_date", "<", limit)]).unlink()
