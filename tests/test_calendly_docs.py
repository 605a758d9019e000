"""The README's Calendly section documents what the code defines."""
import argparse
import re

import pytest

from conftest import ROOT
from sidecar.calendly import booking, crm
from sidecar.calendly.web import ROUTE
from sidecar.cli import build_parser
from sidecar.settings import SETTINGS


@pytest.fixture(scope='module')
def section():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    match = re.search(r'<!-- calendly:begin -->(.*)<!-- calendly:end -->', readme, re.S)
    assert match, 'README.md lost its calendly markers'
    return match.group(1)


@pytest.mark.parametrize('setting', [s for s in SETTINGS if s.name.startswith('calendly_')
                                     or s.name == 'public_url'], ids=lambda s: s.env)
def test_every_calendly_setting_is_explained(section, setting):
    assert setting.env in section


def test_the_webhook_url_is_documented(section):
    assert ROUTE.startswith('/webhooks/calendly/')
    assert '<SIDECAR_PUBLIC_URL>/webhooks/calendly/<connection id>' in section


def test_every_calendly_command_is_documented(section):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    calendly = sub.choices['calendly']
    commands = next(a for a in calendly._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == {'connect', 'list', 'disconnect', 'poll'}
    for command in commands:
        assert f'crm-realtime calendly {command}' in section


@pytest.mark.parametrize('text', [
    booking.TYPE_PROSPECT_CREATED, booking.TYPE_APPOINTMENT_BOOKED, booking.TITLE_PROSPECT_CREATED,
    booking.TITLE_APPOINTMENT_BOOKED, '`source` = `calendly`', 'crm_realtime_calendly_bookings_total',
    'crm_realtime_calendly_polls_total', 'crm_realtime_calendly_connections_needing_reauth', 'needs_reauth',
    'docs/calendly.md',
])
def test_booking_effects_and_metrics_are_documented(section, text):
    assert text in section


@pytest.mark.parametrize('outcome', [crm.PROSPECT_CREATED, crm.APPOINTMENT_ADDED, crm.CANCELLATION_NOTED,
                                     crm.PROSPECT_MISSING, crm.DUPLICATE])
def test_every_outcome_is_documented(outcome):
    assert f'`{outcome}`' in (ROOT / 'docs' / 'calendly.md').read_text(encoding='utf-8')
