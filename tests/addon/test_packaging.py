"""What can be checked of the Odoo glue without Odoo: the module folders and the files they name.

These are static checks (the files parse and agree with each other and with
Odoo's source as read for each version, see ``ODOO_JS_MODULES``); whether Odoo
accepts them is only known by installing the addon in that Odoo.
"""
import ast
import csv
import importlib.util
import py_compile
import re
import shutil
import xml.etree.ElementTree as ET

import pytest

from .support import ADDON, ROOT, VERSIONS, config, module_dir, schema

MANIFESTS = {v: ast.literal_eval((module_dir(v) / '__manifest__.py').read_text()) for v in VERSIONS}


def _load_sync():
    spec = importlib.util.spec_from_file_location('addon_sync', ROOT / 'addon' / 'sync.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SYNC = _load_sync()


def test_each_version_folder_is_complete_and_its_copies_are_current():
    """addon/shared and sql/ copied into every version folder, byte for byte (python addon/sync.py)."""
    assert SYNC.VERSIONS == VERSIONS
    assert SYNC.differences() == []
    for version in VERSIONS:
        for name in schema.SHIPPED_SQL:
            assert (module_dir(version) / 'data' / name).read_bytes() == (ROOT / 'sql' / name).read_bytes()


def test_sync_check_reports_a_stale_copy(tmp_path, monkeypatch):
    for name in ('addon', 'sql'):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns('__pycache__'))
    monkeypatch.setattr(SYNC, 'ROOT', tmp_path)
    monkeypatch.setattr(SYNC, 'ADDON_DIR', tmp_path / 'addon')
    monkeypatch.setattr(SYNC, 'SHARED', tmp_path / 'addon' / 'shared')
    monkeypatch.setattr(SYNC, 'SQL', tmp_path / 'sql')
    (tmp_path / 'sql' / 'install.sql').write_text('-- rewritten\n')
    (tmp_path / 'addon' / '18.0' / 'crm_realtime' / 'lib' / 'stray.py').write_text('')
    assert SYNC.differences() == [
        'addon/17.0/crm_realtime/data/install.sql differs from sql/install.sql',
        'addon/18.0/crm_realtime/data/install.sql differs from sql/install.sql',
        'addon/18.0/crm_realtime/lib/stray.py is neither shared nor the version\'s own',
        'addon/19.0/crm_realtime/data/install.sql differs from sql/install.sql']
    assert SYNC.main(['--check']) == 1
    assert SYNC.main([]) == 0
    assert SYNC.differences() == []
    assert (tmp_path / 'addon' / '19.0' / 'crm_realtime' / 'data' / 'install.sql').read_text() == '-- rewritten\n'


@pytest.mark.parametrize('version', VERSIONS)
def test_manifest_of_each_version(version):
    manifest = MANIFESTS[version]
    for key in ('name', 'summary', 'version', 'category', 'author', 'license', 'depends',
                'external_dependencies', 'data', 'assets', 'installable'):
        assert key in manifest, key
    # Odoo refuses a module whose version does not start with its own series
    # (odoo/modules/module.py check_version / adapt_version)
    assert re.fullmatch(re.escape(version) + r'\.\d+\.\d+\.\d+', manifest['version'])
    assert manifest['depends'] == ['crm']
    assert manifest['external_dependencies'] == {'python': ['PyJWT']}
    assert {k: v for k, v in manifest.items() if k != 'version'} == \
        {k: v for k, v in MANIFESTS['17.0'].items() if k != 'version'}


@pytest.mark.parametrize('version', VERSIONS)
def test_manifest_files_exist(version):
    module = module_dir(version)
    manifest = MANIFESTS[version]
    for name in manifest['data'] + manifest['assets']['web.assets_backend']:
        path = module / name if not name.startswith('crm_realtime/') else module.parent / name
        assert path.is_file(), name
    # every JS file of the module is in the bundle (an unlisted one is never loaded)
    listed = {module.parent / name for name in manifest['assets']['web.assets_backend']}
    assert listed == set((module / 'static' / 'src').rglob('*.js'))
    for fragment in ('DESCRIPTION.md', 'CONFIGURE.md', 'USAGE.md', 'ROADMAP.md'):
        assert (module / 'readme' / fragment).is_file(), fragment


@pytest.mark.parametrize('version', VERSIONS)
def test_hooks_are_exported_by_the_package(version):
    init = (module_dir(version) / '__init__.py').read_text()
    hooks = (module_dir(version) / 'hooks.py').read_text()
    for key in ('post_init_hook', 'uninstall_hook'):
        assert f'def {MANIFESTS[version][key]}(env):' in hooks
        assert MANIFESTS[version][key] in init


@pytest.mark.parametrize('path', sorted(p.relative_to(ROOT / 'addon').as_posix()
                                        for p in (ROOT / 'addon').rglob('*.py') if '__pycache__' not in p.parts))
def test_python_files_compile(path, tmp_path):
    py_compile.compile(str(ROOT / 'addon' / path), cfile=str(tmp_path / 'x.pyc'), doraise=True)


#: The route type each version accepts for a JSON-RPC route: 19.0 deprecates
#: type='json' for 'jsonrpc' (its own controllers, e.g. odoo/addons/base/controllers/rpc.py
#: and jsonrpc.py, declare type='jsonrpc'), which 17.0 and 18.0 do not know.
ROUTE_TYPE = {'17.0': 'json', '18.0': 'json', '19.0': 'jsonrpc'}


@pytest.mark.parametrize('version', VERSIONS)
def test_token_route_has_the_versions_type(version):
    controller = (module_dir(version) / 'controllers' / 'main.py').read_text()
    routes = re.findall(r'@http\.route\("([^"]+)", type="(\w+)", auth="user", methods=\["POST"\]\)', controller)
    assert routes == [('/crm_realtime/token', ROUTE_TYPE[version])]
    web = (module_dir(version) / 'static' / 'src' / 'js' / 'realtime_web.js').read_text()
    assert 'export const TOKEN_ROUTE = "/crm_realtime/token";' in web


# --------------------------------------------------------------------------- JS imports

#: Every module path the addon's JS imports, per Odoo version, with the names
#: it imports, and where it was checked in Odoo's source (Odoo maps
#: <addon>/static/src/<path>.js to "@<addon>/<path>": odoo/tools/js_transpiler.py
#: url_to_module_path, odoo/odoo @ 02c2e4ac). Read with the search tools:
#:   17.0  addons/web/static/src/core/registry.js (export const registry),
#:         addons/web/static/src/core/assets.js (loadJS), and the *services* "rpc"
#:         (core/network/rpc_service.js, odoo/odoo @ 00753fba) and "user"
#:         (core/user_service.js, odoo/odoo @ 0f2bec25), which 17.1 replaced by modules;
#:   18.0  addons/web/static/src/core/user.js (export const user; it imports
#:         { rpc } from "@web/core/network/rpc") in informaticeng0011/odoo_18.0
#:         (tracks upstream 18.0) @ 011dedd5, and odoo/odoo core/user.js @ 0015a6bd;
#:   19.0  addons/web/static/src/core/network/rpc.js (export function rpc(url,
#:         params, settings), "silent" a valid setting) in a 19.0 tree
#:         (IamGoatCoder/ErpBizzLocal, release.py version_info 19.0) @ ec0952ad,
#:         and odoo/odoo core/network/rpc.js @ 0434633f.
#:   all   the "company" service (webclient/company_service.js, odoo/odoo @
#:         f804e89b) sets user.updateContext({ allowed_company_ids }) before
#:         dependants start; "notification" is core/notifications/notification_service.js.
ODOO_JS_MODULES = {
    '17.0': {
        '@web/core/registry': {'registry'},
        '@web/core/assets': {'loadJS'},
    },
    '18.0': {
        '@web/core/registry': {'registry'},
        '@web/core/assets': {'loadJS'},
        '@web/core/network/rpc': {'rpc'},
        '@web/core/user': {'user'},
    },
    '19.0': {
        '@web/core/registry': {'registry'},
        '@web/core/assets': {'loadJS'},
        '@web/core/network/rpc': {'rpc'},
        '@web/core/user': {'user'},
    },
}
#: Services the addon's service depends on, per version (17.0 still has "rpc"
#: and "user" services; on 18.0 and later asking for them blanks the backend).
ODOO_SERVICES = {
    '17.0': {'rpc', 'user', 'company', 'notification'},
    '18.0': {'company', 'notification'},
    '19.0': {'company', 'notification'},
}

IMPORT_RE = re.compile(r'^import\s+\{([^}]*)\}\s+from\s+"([^"]+)";', re.M)


def _imports(js_text):
    found = {}
    for names, path in IMPORT_RE.findall(js_text):
        found.setdefault(path, set()).update(n.strip().split(' as ')[0] for n in names.split(',') if n.strip())
    return found


def _exports(js_text):
    return set(re.findall(r'^export (?:async )?(?:const|let|function|class) (\w+)', js_text, re.M))


@pytest.mark.parametrize('version', VERSIONS)
def test_each_versions_js_imports_only_paths_that_exist_in_that_odoo(version):
    module = module_dir(version)
    js_files = sorted((module / 'static' / 'src').rglob('*.js'))
    own = {'@crm_realtime/' + p.relative_to(module / 'static' / 'src').with_suffix('').as_posix(): p
           for p in js_files}
    for path in js_files:
        text = path.read_text()
        assert not re.search(r'^\s*import\s+(?!\{)', text, re.M), f'{path.name}: only named imports are checked'
        assert 'require(' not in text
        for source, names in _imports(text).items():
            if source in own:
                assert names <= _exports(own[source].read_text()), (path.name, source, names)
            else:
                assert source in ODOO_JS_MODULES[version], f'{version} {path.name}: {source} not checked in Odoo'
                assert names <= ODOO_JS_MODULES[version][source], (version, path.name, source, names)


@pytest.mark.parametrize('version', VERSIONS)
def test_each_versions_service_depends_only_on_services_of_that_odoo(version):
    service = (module_dir(version) / 'static' / 'src' / 'js' / 'crm_realtime_service.js').read_text()
    (deps,) = re.findall(r'dependencies: \[([^\]]*)\]', service)
    assert set(re.findall(r'"(\w+)"', deps)) == ODOO_SERVICES[version]
    assert 'registry.category("services").add("crm_realtime", crmRealtimeService);' in service
    for path in (module_dir(version) / 'static' / 'src').rglob('*.js'):
        assert path.read_text().startswith('/** @odoo-module **/'), path.name


# --------------------------------------------------------------------------- models, views, readme

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
    assert [r['group_id:id'] for r in rows] == ['base.group_system']


def test_notification_model_has_the_columns_the_capture_reads():
    model = (ADDON / 'models' / 'crm_realtime_notification.py').read_text()
    assert '_name = "crm.realtime.notification"' in model
    fields = set(re.findall(r'^    (\w+) = fields\.', model, re.M)) | {'id', 'create_date'}
    needed = {c for c in schema.NOTIFICATION_FIELDS.values() if c}
    assert needed | {schema.NOTIFICATION_ORG_COLUMN, schema.NOTIFICATION_USER_COLUMN} <= fields


def _rpc_callable_methods(path, class_name):
    """Methods of ``class_name`` that /web/dataset/call_kw would run.

    Odoo refuses a method over RPC when its name starts with "_" (all of 17.0,
    18.0, 19.0: odoo/service/model.py, "Private methods (such as %s) cannot be
    called remotely"), or, from 19.0, when it is decorated with @api.private.
    """
    tree = ast.parse(path.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    public = set()
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith('_'):
            public.add(node.name)
    return public


def test_notify_cannot_be_called_over_rpc():
    """Security: it creates with sudo(), so RPC access would let any user (portal
    included) push toasts and meta to every socket of their company."""
    path = ADDON / 'models' / 'crm_realtime_notification.py'
    assert _rpc_callable_methods(path, 'CrmRealtimeNotification') == set()
    assert 'def _notify(self, title' in path.read_text()
    for doc in ('USAGE.md', 'DESCRIPTION.md'):
        text = (ADDON / 'readme' / doc).read_text()
        assert '.notify(' not in text.replace('._notify(', ''), doc


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


def test_usage_says_the_token_route_serves_same_origin_pages_only():
    usage = (ADDON / 'readme' / 'USAGE.md').read_text()
    assert 'same-origin' in usage and 'CORS' in usage
    assert 'An SPA outside Odoo can fetch a token the same way' not in usage
    # the documented way for a separate SPA: its own backend signs with the shared secret
    assert 'SIDECAR_JWT_SECRET' in usage and 'organization_id' in usage


def test_the_client_build_comes_from_the_sidecar():
    assert not (ADDON / 'static' / 'lib').exists()
    assert 'export const CLIENT_SCRIPT = "/client/socket.io.min.js";' in (
        ADDON / 'static' / 'src' / 'js' / 'realtime_connection.js').read_text()
