"""What can be checked of the Odoo glue without Odoo: the manifest and the files it names.

These are static checks (the files parse and agree with each other); whether
Odoo 17 accepts them is only known by installing the addon in Odoo.
"""
import ast
import csv
import py_compile
import re
import xml.etree.ElementTree as ET

import pytest

from .support import ADDON, config, schema

MANIFEST = ast.literal_eval((ADDON / '__manifest__.py').read_text())


def test_manifest_has_the_usual_keys():
    for key in ('name', 'summary', 'version', 'category', 'author', 'license', 'depends',
                'external_dependencies', 'data', 'assets', 'installable'):
        assert key in MANIFEST, key
    assert re.fullmatch(r'17\.0\.\d+\.\d+\.\d+', MANIFEST['version'])
    assert MANIFEST['depends'] == ['crm']
    assert MANIFEST['external_dependencies'] == {'python': ['PyJWT']}


def test_manifest_files_exist():
    for name in MANIFEST['data'] + MANIFEST['assets']['web.assets_backend']:
        path = ADDON / name if not name.startswith('crm_realtime/') else ADDON.parent / name
        assert path.is_file(), name
    for fragment in ('DESCRIPTION.md', 'CONFIGURE.md', 'USAGE.md', 'ROADMAP.md'):
        assert (ADDON / 'readme' / fragment).is_file(), fragment


def test_hooks_are_exported_by_the_package():
    init = (ADDON / '__init__.py').read_text()
    hooks = (ADDON / 'hooks.py').read_text()
    for key in ('post_init_hook', 'uninstall_hook'):
        assert f'def {MANIFEST[key]}(env):' in hooks
        assert MANIFEST[key] in init


@pytest.mark.parametrize('path', sorted(p.relative_to(ADDON).as_posix() for p in ADDON.rglob('*.py')))
def test_python_files_compile(path, tmp_path):
    py_compile.compile(str(ADDON / path), cfile=str(tmp_path / 'x.pyc'), doraise=True)


def test_settings_view_shows_the_settings_fields():
    model = (ADDON / 'models' / 'res_config_settings.py').read_text()
    declared = set(re.findall(r'^    (crm_realtime_\w+) = fields\.', model, re.M))
    view = ET.parse(ADDON / 'views' / 'res_config_settings_views.xml').getroot()
    shown = {f.get('name') for f in view.iter('field') if f.get('name', '').startswith('crm_realtime_')}
    assert declared == shown == {'crm_realtime_sidecar_url', 'crm_realtime_jwt_secret',
                                 'crm_realtime_token_lifetime'}
    secret = [f for f in view.iter('field') if f.get('name') == 'crm_realtime_jwt_secret'][0]
    assert secret.get('password') == 'True'
    # each field stores the parameter the controller reads
    for attr, param in (('PARAM_SIDECAR_URL', config.PARAM_SIDECAR_URL),
                        ('PARAM_JWT_SECRET', config.PARAM_JWT_SECRET),
                        ('PARAM_TOKEN_LIFETIME', config.PARAM_TOKEN_LIFETIME)):
        assert f'config_parameter=config.{attr}' in model, param


def test_access_rules_name_the_notification_model():
    with open(ADDON / 'security' / 'ir.model.access.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [r['model_id:id'] for r in rows] == ['model_crm_realtime_notification']


def test_notification_model_has_the_columns_the_capture_reads():
    model = (ADDON / 'models' / 'crm_realtime_notification.py').read_text()
    assert '_name = "crm.realtime.notification"' in model
    fields = set(re.findall(r'^    (\w+) = fields\.', model, re.M)) | {'id', 'create_date'}
    needed = {c for c in schema.NOTIFICATION_FIELDS.values() if c}
    assert needed | {schema.NOTIFICATION_ORG_COLUMN, schema.NOTIFICATION_USER_COLUMN} <= fields


def test_web_service_calls_the_controller_route():
    service = (ADDON / 'static' / 'src' / 'js' / 'crm_realtime_service.js').read_text()
    controller = (ADDON / 'controllers' / 'main.py').read_text()
    route = re.search(r'@http\.route\("([^"]+)"', controller).group(1)
    assert f'const TOKEN_ROUTE = "{route}";' in service
    # the client build comes from the sidecar, not from a vendored copy
    assert not (ADDON / 'static' / 'lib').exists()
    assert '/client/socket.io.min.js' in (ADDON / 'static' / 'src' / 'js' / 'crm_realtime_service.js').read_text()


def _documented_mapping(text):
    rows = re.findall(r'^\| `(\w+)`\s*\| (`\w+`|always `null`)', text, re.M)
    return {field: None if column == 'always `null`' else column.strip('`') for field, column in rows}


def test_readme_documents_the_lead_mapping_and_the_settings():
    documented = _documented_mapping((ADDON / 'readme' / 'DESCRIPTION.md').read_text())
    assert documented == {'id': schema.LEAD_PK_COLUMN, **schema.LEAD_FIELDS}
    configure = (ADDON / 'readme' / 'CONFIGURE.md').read_text()
    for param in (config.PARAM_SIDECAR_URL, config.PARAM_JWT_SECRET, config.PARAM_TOKEN_LIFETIME):
        assert f'`{param}`' in configure, param
    assert f'default {config.DEFAULT_TOKEN_LIFETIME}' in configure
    assert f'from {config.MIN_TOKEN_LIFETIME} to {config.MAX_TOKEN_LIFETIME}' in configure
