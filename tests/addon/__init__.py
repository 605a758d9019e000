"""Tests of addon/crm_realtime that run without Odoo (see addon/crm_realtime/readme/ROADMAP.md)."""
