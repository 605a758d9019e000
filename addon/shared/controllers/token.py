"""What /crm_realtime/token answers; each version's ``main.py`` only declares the route.

The route's declaration differs per Odoo version (``type='json'`` on 17.0 and
18.0, ``type='jsonrpc'`` on 19.0, which deprecates ``'json'``); the answer does not.
"""
import logging

from odoo.http import request

from ..lib.config import ConfigError, read_config
from ..lib.once import Once
from ..lib.tokens import DISABLED, token_response

_logger = logging.getLogger(__name__)

#: The sidecar sends every lead of a company to every socket of that company;
#: it cannot apply Odoo's record rules. Only users who may read all leads of
#: their company get a token ("own documents only" salesmen do not).
REQUIRED_GROUP = "sales_team.group_sale_salesman_all_leads"

_unconfigured = Once()


def token_answer():
    """Mint a sidecar token for the logged-in user and their current company.

    The company is ``request.env.company``: the first of the
    ``allowed_company_ids`` the web client sends in ``context`` (Odoo
    refuses ids the user may not use), else the user's default company.
    Answers ``{"enabled": false}`` when the addon is not configured or the
    user may not see all leads; the reason goes to the server log only, and
    a configuration problem is logged once per database until it is fixed.
    """
    env = request.env
    user = env.user
    if not user.has_group(REQUIRED_GROUP):
        _logger.debug("crm_realtime: no token for user %s: not in %s", user.id, REQUIRED_GROUP)
        return dict(DISABLED)
    get_param = env["ir.config_parameter"].sudo().get_param
    try:
        config = read_config(get_param)
    except ConfigError as exc:
        if _unconfigured.first(env.cr.dbname, str(exc)):
            _logger.warning("crm_realtime: no token minted: %s (logged once until it is fixed)", exc)
        else:
            _logger.debug("crm_realtime: no token minted: %s", exc)
        return dict(DISABLED)
    _unconfigured.rearm(env.cr.dbname)
    return token_response(config, user.id, env.company.id)
