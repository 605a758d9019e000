"""Tests of the Odoo addon (addon/<version>/crm_realtime) that run without Odoo
(see addon/shared/readme/ROADMAP.md)."""
