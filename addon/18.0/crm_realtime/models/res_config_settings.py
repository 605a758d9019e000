from odoo import fields, models
from odoo.exceptions import ValidationError

from ..lib import config


class ResConfigSettings(models.TransientModel):
    _inherit = "res.config.settings"

    crm_realtime_sidecar_url = fields.Char(
        string="Sidecar URL",
        config_parameter=config.PARAM_SIDECAR_URL,
        help="Public base URL of the crm-realtime sidecar the browsers connect to, "
        "e.g. https://rt.example.com.",
    )
    crm_realtime_jwt_secret = fields.Char(
        string="Signing secret",
        config_parameter=config.PARAM_JWT_SECRET,
        groups="base.group_system",
        help="The sidecar's SIDECAR_JWT_SECRET (at least 32 bytes). Tokens are signed "
        "with HS256.",
    )
    crm_realtime_token_lifetime = fields.Integer(
        string="Token lifetime (seconds)",
        config_parameter=config.PARAM_TOKEN_LIFETIME,
        default=config.DEFAULT_TOKEN_LIFETIME,
        help="How long a minted token is valid. The web client fetches a new one "
        "before it expires; the sidecar disconnects sockets whose token expired.",
    )

    def set_values(self):
        # sudo: the secret field is restricted to base.group_system; reading it
        # here only validates what this same form is about to store. validate()
        # checks the values stripped, as super().set_values() stores Char values.
        for settings in self.sudo():
            try:
                config.validate(
                    settings.crm_realtime_sidecar_url,
                    settings.crm_realtime_jwt_secret,
                    settings.crm_realtime_token_lifetime,
                )
            except config.ConfigError as exc:
                raise ValidationError(str(exc)) from None
        return super().set_values()
