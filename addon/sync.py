#!/usr/bin/env python3
"""Refresh the copies each per-version module folder ships.

Odoo modules are per version, and an addons path holds module folders copied
on their own, so every ``addon/<version>/crm_realtime`` must be complete by
itself. What is the same for every version is kept once and copied:

* ``addon/shared/**``            -> ``addon/<version>/crm_realtime/**``
  (the Odoo-free ``lib/``, the hooks, models, views, readme, the connection JS, ...)
* ``sql/install.sql``, ``sql/uninstall.sql``
                                 -> ``addon/<version>/crm_realtime/data/``

Each version folder adds only its own files (``VERSION_OWN``: the manifest,
the controller, the web-client service). Files that are neither copied nor the
version's own are removed.

    python addon/sync.py           # write the copies
    python addon/sync.py --check   # list what differs, exit 1 if anything does

``tests/addon/test_packaging.py`` runs the check, so a copy that drifted fails CI.
"""
from __future__ import annotations

import filecmp
import shutil
import sys
from pathlib import Path
from typing import Dict, List

ADDON_DIR = Path(__file__).resolve().parent
ROOT = ADDON_DIR.parent
SHARED = ADDON_DIR / 'shared'
SQL = ROOT / 'sql'
MODULE = 'crm_realtime'
VERSIONS = ('17.0', '18.0', '19.0')
SQL_FILES = ('install.sql', 'uninstall.sql')
#: files each version folder writes itself (relative to the module folder)
VERSION_OWN = ('__manifest__.py', 'controllers/main.py', 'static/src/js/crm_realtime_service.js')


def module_dir(version: str) -> Path:
    return ADDON_DIR / version / MODULE


def _skipped(path: Path) -> bool:
    return '__pycache__' in path.parts or path.suffix == '.pyc'


def expected_copies(version: str) -> Dict[Path, Path]:
    """target file -> source file, for one version."""
    target = module_dir(version)
    copies = {target / p.relative_to(SHARED): p
              for p in sorted(SHARED.rglob('*')) if p.is_file() and not _skipped(p)}
    for name in SQL_FILES:
        copies[target / 'data' / name] = SQL / name
    own = {target / name for name in VERSION_OWN}
    clash = own & set(copies)
    if clash:
        raise SystemExit(f'sync: {sorted(map(str, clash))} is both shared and version-own')
    return copies


def differences() -> List[str]:
    """One line per copy that is missing, differs from its source, or should not be there."""
    problems = []
    for version in VERSIONS:
        target = module_dir(version)
        copies = expected_copies(version)
        for dst, src in copies.items():
            if not dst.is_file():
                problems.append(f'{dst.relative_to(ROOT)} is missing (copy of {src.relative_to(ROOT)})')
            elif not filecmp.cmp(dst, src, shallow=False):
                problems.append(f'{dst.relative_to(ROOT)} differs from {src.relative_to(ROOT)}')
        for name in VERSION_OWN:
            if not (target / name).is_file():
                problems.append(f'{(target / name).relative_to(ROOT)} is missing (the version\'s own file)')
        allowed = set(copies) | {target / name for name in VERSION_OWN}
        if target.is_dir():
            for path in sorted(target.rglob('*')):
                if path.is_file() and not _skipped(path) and path not in allowed:
                    problems.append(f'{path.relative_to(ROOT)} is neither shared nor the version\'s own')
    return problems


def sync() -> List[str]:
    """Write every copy; returns what changed."""
    changed = []
    for version in VERSIONS:
        target = module_dir(version)
        copies = expected_copies(version)
        for dst, src in copies.items():
            if dst.is_file() and filecmp.cmp(dst, src, shallow=False):
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            changed.append(f'copied {src.relative_to(ROOT)} -> {dst.relative_to(ROOT)}')
        allowed = set(copies) | {target / name for name in VERSION_OWN}
        for path in sorted(target.rglob('*')):
            if path.is_file() and not _skipped(path) and path not in allowed:
                path.unlink()
                changed.append(f'removed {path.relative_to(ROOT)}')
    return changed


def main(argv: List[str]) -> int:
    if argv not in ([], ['--check']):
        print('usage: python addon/sync.py [--check]', file=sys.stderr)
        return 2
    if argv == ['--check']:
        problems = differences()
        for line in problems:
            print(line)
        if problems:
            print('sync: the module copies are stale; run python addon/sync.py', file=sys.stderr)
        return 1 if problems else 0
    for line in sync() or ['sync: every copy is up to date']:
        print(line)
    problems = differences()
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
