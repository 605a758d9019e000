import logging

from odoo import http
from odoo.http import request

from ..lib.config import ConfigError, read_config
from ..lib.tokens import DISABLED, token_response

_logger = logging.getLogger(__name__)

#: The sidecar sends every lead of a company to every socket of that company;
#: it cannot apply Odoo's record rules. Only users who may read all leads of
#: their company get a token ("own documents only" salesmen do not).
REQUIRED_GROUP = "sales_team.group_sale_salesman_all_leads"


class CrmRealtimeController(http.Controller):
    @http.route("/crm_realtime/token", type="json", auth="user", methods=["POST"])
    def crm_realtime_token(self, **_kw):
        """Mint a sidecar token for the logged-in user and their current company.

        The company is ``request.env.company``: the first of the
        ``allowed_company_ids`` the web client sends in ``context`` (Odoo
        refuses ids the user may not use), else the user's default company.
        Answers ``{"enabled": false}`` when the addon is not configured or the
        user may not see all leads; the reason goes to the server log only.
        """
        user = request.env.user
        if not user.has_group(REQUIRED_GROUP):
            _logger.debug("crm_realtime: no token for user %s: not in %s", user.id, REQUIRED_GROUP)
            return dict(DISABLED)
        get_param = request.env["ir.config_parameter"].sudo().get_param
        try:
            config = read_config(get_param)
        except ConfigError as exc:
            _logger.warning("crm_realtime: no token minted: %s", exc)
            return dict(DISABLED)
        return token_response(config, user.id, request.env.company.id)
