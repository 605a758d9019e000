"""Odoo-framework tests of /crm_realtime/token and of what RPC may call (need a
running Odoo 17.0, 18.0 or 19.0; never run here, see readme/ROADMAP.md)."""
import json

import jwt

from odoo.tests import HttpCase, new_test_user, tagged

SECRET = "odoo-test-secret-" + "s" * 32


@tagged("post_install", "-at_install")
class TestTokenRoute(HttpCase):
    def setUp(self):
        super().setUp()
        params = self.env["ir.config_parameter"].sudo()
        params.set_param("crm_realtime.sidecar_url", "https://rt.example.com")
        params.set_param("crm_realtime.jwt_secret", SECRET)
        params.set_param("crm_realtime.token_lifetime", "120")
        self.other_company = self.env["res.company"].create({"name": "Realtime Other Co"})
        self.all_leads = new_test_user(
            self.env, login="rt_all_leads", groups="sales_team.group_sale_salesman_all_leads",
            company_ids=[(6, 0, [self.env.company.id, self.other_company.id])])
        self.own_leads = new_test_user(
            self.env, login="rt_own_leads", groups="sales_team.group_sale_salesman")
        self.portal = new_test_user(self.env, login="rt_portal", groups="base.group_portal")

    def _call(self, login, context=None, url="/crm_realtime/token", params=None):
        self.authenticate(login, login)
        params = dict(params or {}, **({"context": context} if context else {}))
        response = self.url_open(
            url,
            data=json.dumps({"jsonrpc": "2.0", "method": "call", "params": params}),
            headers={"Content-Type": "application/json"},
        )
        return response.json()

    def test_token_names_the_user_and_the_current_company(self):
        answer = self._call("rt_all_leads")["result"]
        self.assertTrue(answer["enabled"])
        self.assertEqual(answer["url"], "https://rt.example.com")
        claims = jwt.decode(answer["token"], SECRET, algorithms=["HS256"])
        self.assertEqual(claims["sub"], str(self.all_leads.id))
        self.assertEqual(claims["organization_id"], self.all_leads.company_id.id)
        self.assertEqual(claims["exp"], answer["expires_at"])

    def test_active_company_from_the_web_client_context(self):
        answer = self._call("rt_all_leads", {"allowed_company_ids": [self.other_company.id]})["result"]
        claims = jwt.decode(answer["token"], SECRET, algorithms=["HS256"])
        self.assertEqual(claims["organization_id"], self.other_company.id)

    def test_user_limited_to_own_leads_gets_no_token(self):
        self.assertEqual(self._call("rt_own_leads")["result"], {"enabled": False})

    def test_unconfigured_addon_answers_disabled(self):
        self.env["ir.config_parameter"].sudo().set_param("crm_realtime.jwt_secret", False)
        self.assertEqual(self._call("rt_all_leads")["result"], {"enabled": False})

    def test_unconfigured_addon_warns_once(self):
        self.env["ir.config_parameter"].sudo().set_param("crm_realtime.jwt_secret", False)
        with self.assertLogs("odoo.addons.crm_realtime.controllers.token", "WARNING") as logs:
            for _ in range(3):
                self.assertEqual(self._call("rt_all_leads")["result"], {"enabled": False})
        self.assertEqual(len([r for r in logs.records if r.levelname == "WARNING"]), 1)

    def test_notify_is_refused_over_rpc(self):
        model = self.env["crm.realtime.notification"]
        before = model.sudo().search_count([])
        for login in ("rt_portal", "rt_own_leads", "rt_all_leads"):
            for method in ("_notify", "notify"):
                answer = self._call(login, url=f"/web/dataset/call_kw/crm.realtime.notification/{method}",
                                    params={"model": "crm.realtime.notification", "method": method,
                                            "args": ["Forged", "pushed to every socket"], "kwargs": {}})
                self.assertIn("error", answer, (login, method))
        self.assertEqual(model.sudo().search_count([]), before)
