"""Reading the change journal by transaction snapshot.

A reader's position is a PostgreSQL snapshot (``pg_snapshot`` text,
``xmin:xmax:xip,...``): "everything visible in this snapshot has been read".
The next read takes a new snapshot and returns exactly the rows visible in it
and not in the old one. Journal ids are taken inside the writing transaction,
so a transaction with a smaller id can commit after one with a larger id; a
snapshot position gets that right where an id watermark would skip the row.
Positions are plain database facts, so any replica can continue from a position
another replica produced.
"""
from __future__ import annotations

import functools
import re
from typing import List, Tuple

from .events import Change, fill_gone

#: pg_snapshot text form; validated before it is ever cast in SQL.
SNAPSHOT_RE = re.compile(r'^(\d{1,20}):(\d{1,20}):((?:\d{1,20})(?:,\d{1,20})*)?$')

CURRENT_SNAPSHOT_SQL = 'SELECT pg_catalog.pg_current_snapshot()::text'

# The current snapshot, as the journal's reader: the journal is named (so a
# missing schema or grant fails here as in any read) and no row is scanned.
READER_SNAPSHOT_SQL = """
SELECT pg_catalog.pg_current_snapshot()::text,
       EXISTS (SELECT FROM "crm_realtime"."journal" WHERE false)
"""

# One statement, so the returned snapshot is the one the rows were read with.
# The upper bound on txid changes no result (a row visible in the statement's
# snapshot has a txid below its xmax) but gives the planner a bounded range:
# the listener runs it as a prepared statement (pgchannel.py), and with a one-sided range on a
# parameter PostgreSQL's generic plan guessed a third of the journal, so it
# kept planning every read afresh (measured: 345-435 µs of backend CPU per
# read of 20 rows, 170-210 µs with the bound).
# A compact row (op 'created_many': the keys of many rows one INSERT statement
# wrote for one organization, see sql/install.sql) is expanded here, in the same
# statement and so with the same snapshot as the journal rows read with it: one
# result row per key still in that organization, op 'created', its current
# payload, and ``part``, the key's place in the compact row (NULL for a plain
# row). A compact row none of whose keys is left stays one row with op
# 'created_many', which causes no event. The WHERE inside the LATERAL is a
# one-time filter: other rows never call the function.
_EXPAND = """
  LEFT JOIN LATERAL (SELECT e.part, e.data FROM "crm_realtime"."expand"(j.organization_id, j.data) AS e
                      WHERE j.op IN ('created_many', 'updated_many') OFFSET 0) AS x ON true"""
_COLUMNS = """j.id, j.kind, CASE WHEN x.part IS NULL THEN j.op WHEN j.op = 'updated_many' THEN 'updated' ELSE 'created' END, j.organization_id,
       j.user_id, coalesce(x.data, j.data)::text, extract(epoch FROM j.recorded_at)::float8, x.part"""

# One statement, so the returned snapshot is the one the rows were read with.
# The upper bound on txid changes no result (a row visible in the statement's
# snapshot has a txid below its xmax) but gives the planner a bounded range:
# the listener runs it as a prepared statement (pgchannel.py), and with a one-sided range on a
# parameter PostgreSQL's generic plan guessed a third of the journal, so it
# kept planning every read afresh (measured: 345-435 µs of backend CPU per
# read of 20 rows, 170-210 µs with the bound).
READ_SINCE_SQL = f"""
SELECT s.snap, {_COLUMNS}
  FROM (SELECT pg_catalog.pg_current_snapshot()::text AS snap) AS s
  LEFT JOIN "crm_realtime"."journal" AS j
    ON j.txid >= pg_catalog.pg_snapshot_xmin(%(since)s::pg_snapshot)
   AND j.txid < pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())
   AND NOT pg_catalog.pg_visible_in_snapshot(j.txid, %(since)s::pg_snapshot){_EXPAND}
 ORDER BY j.id, x.part
"""

# The same, returning only the rows of organizations ``orgs`` (somebody listens
# to or recovers in them), plus how many rows the range holds in all (the
# listener's "is the CRM busy" signal). The other rows never leave the server
# (nor are compact rows of other organizations expanded).
READ_SINCE_FOR_SQL = f"""
SELECT s.snap, s.total, {_COLUMNS}
  FROM (SELECT pg_catalog.pg_current_snapshot()::text AS snap,
               (SELECT count(*) FROM "crm_realtime"."journal" AS a
                 WHERE a.txid >= pg_catalog.pg_snapshot_xmin(%(since)s::pg_snapshot)
                   AND a.txid < pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())
                   AND NOT pg_catalog.pg_visible_in_snapshot(a.txid, %(since)s::pg_snapshot))::int8
               AS total) AS s
  LEFT JOIN "crm_realtime"."journal" AS j
    ON j.txid >= pg_catalog.pg_snapshot_xmin(%(since)s::pg_snapshot)
   AND j.txid < pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())
   AND NOT pg_catalog.pg_visible_in_snapshot(j.txid, %(since)s::pg_snapshot)
   AND j.organization_id = ANY(%(orgs)s::text[]){_EXPAND}
 ORDER BY j.id, x.part
"""

# The rows of organizations ``orgs`` between two snapshots this reader already
# took: visible in ``upto`` and not in ``since``. Used when somebody started
# listening to an organization while a read that left it out was in flight.
READ_BETWEEN_SQL = f"""
SELECT {_COLUMNS}
  FROM "crm_realtime"."journal" AS j{_EXPAND}
 WHERE j.txid >= pg_catalog.pg_snapshot_xmin(%(since)s::pg_snapshot)
   AND j.txid < pg_catalog.pg_snapshot_xmax(%(upto)s::pg_snapshot)
   AND NOT pg_catalog.pg_visible_in_snapshot(j.txid, %(since)s::pg_snapshot)
   AND pg_catalog.pg_visible_in_snapshot(j.txid, %(upto)s::pg_snapshot)
   AND j.organization_id = ANY(%(orgs)s::text[])
 ORDER BY j.id, x.part
"""


def valid_snapshot(text: object) -> bool:
    if not isinstance(text, str):
        return False
    m = SNAPSHOT_RE.match(text)
    return bool(m) and int(m.group(1)) <= int(m.group(2))


def _numbered(sql: str, *names: str) -> str:
    """``sql`` with its ``%(name)s`` placeholders as libpq's ``$n``, in the order given."""
    for n, name in enumerate(names, 1):
        sql = sql.replace(f'%({name})s', f'${n}')
    assert '%(' not in sql, sql
    return sql


# The statements as the listener's channel (pgchannel.py) prepares them
_READ_SINCE = _numbered(READ_SINCE_SQL, 'since')
_READ_SINCE_FOR = _numbered(READ_SINCE_FOR_SQL, 'since', 'orgs')
_READ_BETWEEN = _numbered(READ_BETWEEN_SQL, 'since', 'upto', 'orgs')


#: the last snapshots the reads below returned (PostgreSQL's own text): a position the
#: listener hands back is one of them, and is not parsed again (``_valid``)
_returned: List[str] = ['', '', '']


def _snapshot(result) -> str:
    snap = result.get_value(0, 0).decode()
    _returned.pop(0)
    _returned.append(snap)
    return snap


def _valid(text: str) -> bool:
    for known in _returned:
        if text is known:
            return True
    return valid_snapshot(text)


def _changes(result, first: int, encoding: str) -> List[Change]:
    """The rows of a text-format ``result`` whose journal id (column ``first``) is set, as
    Changes: columns id, kind, op, organization_id, user_id, data (JSON text, decoded
    only if routed), recorded_at, part, from ``first`` on."""
    value = result.get_value
    changes = []
    for i in range(result.ntuples):
        jid = value(i, first)
        if jid is None:
            continue
        user, part = value(i, first + 4), value(i, first + 7)
        changes.append(Change(
            int(jid), value(i, first + 1).decode(encoding), value(i, first + 2).decode(encoding),
            value(i, first + 3).decode(encoding), None if user is None else user.decode(encoding),
            value(i, first + 5).decode(encoding), float(value(i, first + 6)),
            None if part is None else int(part)))
    # lean rows whose row was deleted before this read: from the deleted row's "last"
    return fill_gone(changes, 1, 2, 3, 5, 7)


async def current_snapshot(chan) -> str:
    """The current snapshot (``chan``: the listener's pgchannel.Channel)."""
    result = (await chan.simple(CURRENT_SNAPSHOT_SQL))[-1]
    return _snapshot(result)


async def reader_snapshot(chan) -> str:
    """The current snapshot, failing like a journal read when the journal cannot be read."""
    result = await chan.prepared('reader_snapshot', READER_SNAPSHOT_SQL, ())
    return _snapshot(result)


async def read_since(chan, since: str) -> Tuple[str, List[Change]]:
    """Rows committed after snapshot ``since``; returns (new snapshot, changes)."""
    if not _valid(since):
        raise ValueError(f'not a snapshot position: {since!r}')
    result = await chan.prepared('read_since', _READ_SINCE, (since.encode(),))
    return _snapshot(result), _changes(result, 1, chan.encoding)


@functools.lru_cache(maxsize=16)
def _text_array(orgs: frozenset) -> str:
    """``orgs`` as a text[] literal, built once per set of organizations.

    Dumping a list afresh for every read, testing each element for characters to
    quote, was with 50 organizations most of the sidecar's CPU for a one-row read.
    The set somebody needs rarely changes between reads."""
    quoted = ('"' + o.replace('\\', '\\\\').replace('"', '\\"') + '"' for o in sorted(orgs))
    return '{' + ','.join(quoted) + '}'


async def read_since_for(chan, since: str, orgs) -> Tuple[str, int, List[Change]]:
    """Like ``read_since``, only the rows of organizations ``orgs`` (text ids); returns
    (new snapshot, rows the range holds for every organization, changes)."""
    if not _valid(since):
        raise ValueError(f'not a snapshot position: {since!r}')
    result = await chan.prepared('read_since_for', _READ_SINCE_FOR,
                                 (since.encode(), _text_array(frozenset(orgs)).encode(chan.encoding)))
    return (_snapshot(result), int(result.get_value(0, 1)),
            _changes(result, 2, chan.encoding))


async def read_between(chan, since: str, upto: str, orgs) -> List[Change]:
    """The changes of organizations ``orgs`` visible in ``upto`` and not in ``since``."""
    if not (_valid(since) and _valid(upto)):
        raise ValueError(f'not snapshot positions: {since!r}, {upto!r}')
    result = await chan.prepared('read_between', _READ_BETWEEN,
                                 (since.encode(), upto.encode(), _text_array(frozenset(orgs)).encode(chan.encoding)))
    return _changes(result, 0, chan.encoding)
