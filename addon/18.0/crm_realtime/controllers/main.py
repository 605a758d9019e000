from odoo import http

from .token import token_answer


class CrmRealtimeController(http.Controller):
    # Odoo 18.0: type="json"
    @http.route("/crm_realtime/token", type="json", auth="user", methods=["POST"])
    def crm_realtime_token(self, **_kw):
        """The sidecar token of the logged-in user (see token.token_answer)."""
        return token_answer()
