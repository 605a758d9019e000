"""Odoo-framework tests: they need a running Odoo (17.0, 18.0 or 19.0, with the
module folder of that version) with this addon installed
(``odoo -i crm_realtime --test-enable``). They have never been run by the
repository's CI, which has no Odoo; see readme/ROADMAP.md."""
from odoo.exceptions import ValidationError
from odoo.tests import TransactionCase, new_test_user, tagged


@tagged("post_install", "-at_install")
class TestCapture(TransactionCase):
    def _journal_rows(self, kind, record_id):
        self.env.flush_all()
        # A test never commits: fire the deferred triggers (the addon's fold of a
        # new lead's events, which normally runs at commit) now.
        self.env.cr.execute("SET CONSTRAINTS ALL IMMEDIATE")
        self.env.cr.execute("SET CONSTRAINTS ALL DEFERRED")
        self.env.cr.execute(
            "SELECT op, organization_id, user_id, data FROM crm_realtime.journal "
            "WHERE kind = %s AND data->>'id' = %s ORDER BY id",
            (kind, str(record_id)),
        )
        return self.env.cr.fetchall()

    def test_hooks_watch_the_lead_and_notification_tables(self):
        self.env.cr.execute(
            "SELECT relation::text, kind, org_column::text FROM crm_realtime.watched_table ORDER BY 1")
        self.assertEqual(self.env.cr.fetchall(), [
            ("crm_lead", "prospect", "company_id"),
            ("crm_realtime_notification", "notification", "company_id"),
        ])

    def test_lead_create_write_unlink_are_journaled_with_the_mapping(self):
        company = self.env.company
        lead = self.env["crm.lead"].create({
            "name": "Realtime test lead",
            "contact_name": "Ada Lovelace",
            "email_from": "ada@example.com",
            "phone": "+33 1 23 45 67 89",
            "description": "<p>hello</p>",
            "company_id": company.id,
        })
        lead_id, stage_id = lead.id, lead.stage_id.id or None
        # the creation, folded: one row, with the stage the ORM computed at flush
        (created,) = self._journal_rows("prospect", lead_id)
        self.assertEqual(created[:2], ("created", str(company.id)))
        self.assertIsNotNone(stage_id)
        self.assertEqual(created[3]["status"], stage_id)
        lead.write({"contact_name": "Ada King"})
        lead.unlink()
        rows = self._journal_rows("prospect", lead_id)
        self.assertEqual([(op, org) for op, org, _user, _data in rows],
                         [("created", str(company.id)), ("updated", str(company.id)),
                          ("deleted", str(company.id))])
        created = rows[0][3]
        self.assertIsNone(created["firstname"])
        self.assertEqual(created["lastname"], "Ada Lovelace")
        self.assertEqual(created["email"], "ada@example.com")
        self.assertIn("hello", created["notes"])
        self.assertEqual(rows[1][3]["lastname"], "Ada King")

    def test_notify_reaches_one_user_or_the_company(self):
        user = new_test_user(self.env, login="rt_notified", groups="sales_team.group_sale_salesman")
        personal = self.env["crm.realtime.notification"]._notify(
            "Lead won", "Grace signed", type="success", meta={"lead_id": 4}, user=user)
        broadcast = self.env["crm.realtime.notification"]._notify("Pipeline review")
        (row,) = self._journal_rows("notification", personal.id)
        self.assertEqual(row[1:3], (str(user.company_id.id), str(user.id)))
        self.assertEqual(row[3]["meta"], {"lead_id": 4})
        (row,) = self._journal_rows("notification", broadcast.id)
        self.assertEqual(row[1:3], (str(self.env.company.id), None))

    def test_settings_refuse_a_short_secret(self):
        for secret in ("too-short", "  " + "s" * 30 + "  "):    # Odoo strips before storing
            settings = self.env["res.config.settings"].create({
                "crm_realtime_sidecar_url": "https://rt.example.com",
                "crm_realtime_jwt_secret": secret,
            })
            with self.assertRaises(ValidationError):
                settings.execute()
