"""Log a problem once, not on every request.

The token route runs on every backend page load; while the addon is not
configured, one warning per database (and per Odoo worker process) is enough.
Fixing the configuration re-arms it, so a later misconfiguration is logged again.
"""
from __future__ import annotations

import threading
from typing import Hashable, Set, Tuple


class Once:
    def __init__(self) -> None:
        self._seen: Set[Tuple[Hashable, Hashable]] = set()
        self._lock = threading.Lock()

    def first(self, scope: Hashable, what: Hashable) -> bool:
        """True the first time ``what`` happens in ``scope`` (e.g. a database) since it was re-armed."""
        with self._lock:
            if (scope, what) in self._seen:
                return False
            self._seen.add((scope, what))
            return True

    def rearm(self, scope: Hashable) -> None:
        """Forget what happened in ``scope``: the next problem there is reported again."""
        with self._lock:
            self._seen = {key for key in self._seen if key[0] != scope}
