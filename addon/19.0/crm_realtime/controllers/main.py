from odoo import http

from .token import token_answer


class CrmRealtimeController(http.Controller):
    # Odoo 19.0: type="jsonrpc" (19.0 deprecates "json" in favour of "jsonrpc", which 17.0/18.0 refuse)
    @http.route("/crm_realtime/token", type="jsonrpc", auth="user", methods=["POST"])
    def crm_realtime_token(self, **_kw):
        """The sidecar token of the logged-in user (see token.token_answer)."""
        return token_answer()
