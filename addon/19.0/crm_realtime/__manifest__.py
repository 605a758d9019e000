# Copyright crm-realtime contributors
# License: MIT, like the rest of the crm-realtime repository.
# The module for Odoo 19.0 (addon/<version>/crm_realtime: one folder per Odoo version).
{
    "name": "CRM Realtime",
    "summary": "Live lead and notification events in the browser through the "
    "crm-realtime Socket.IO sidecar",
    "version": "19.0.1.0.0",
    "category": "Sales/CRM",
    "author": "crm-realtime contributors",
    # MIT is an OSI-approved licence; the manifest has no dedicated value for it.
    "license": "Other OSI approved licence",
    "development_status": "Alpha",
    "depends": ["crm"],
    # The distribution name, not the import name: Odoo looks the name up
    # with importlib.metadata first, and the unrelated PyPI project "jwt" would
    # satisfy a manifest that said "jwt".
    "external_dependencies": {"python": ["PyJWT"]},
    "data": [
        "security/ir.model.access.csv",
        "views/res_config_settings_views.xml",
    ],
    "assets": {
        "web.assets_backend": [
            "crm_realtime/static/src/js/realtime_connection.js",
            "crm_realtime/static/src/js/realtime_web.js",
            "crm_realtime/static/src/js/crm_realtime_service.js",
        ],
    },
    "post_init_hook": "post_init_hook",
    "uninstall_hook": "uninstall_hook",
    "installable": True,
    "application": False,
}
