"""Stream positions: what a client has received, as a fact about the journal.

A position names a set of journal rows, ``D``:

* ``"<S>"``: every row visible in PostgreSQL snapshot ``S``.
* ``"<B>~<T>~<j>"``: every row visible in ``B``, plus the rows visible in the
  later snapshot ``T`` (and not in ``B``) whose id is at most ``j``.
* ``"<B>~<T>~<j>.<k>"``: the same with ids below ``j``, plus parts ``1`` to ``k``
  of row ``j``, a compact row (one INSERT statement's many rows of one
  organization, expanded when read: its part ``k`` is its ``k``-th key).

The sidecar reads the journal in batches, a batch being the rows visible in a
new snapshot ``T`` and not in the previous one ``B``, sent in id order. The
offset sent with each event is the position just after it: ``B~T~j`` inside a
batch (``B~T~j.k`` inside a compact row), ``T`` after its last row. Because positions are made only of snapshots
and ids, they mean the same thing to every replica and survive restarts.

Positions travel to clients as the Socket.IO offset (the last event argument)
and inside the ``pid``; everything read back from a client is validated here
before it gets near SQL.
"""
from __future__ import annotations

import re
import secrets
from typing import FrozenSet, NamedTuple, Optional

_SNAP = r'\d{1,20}:\d{1,20}:(?:\d{1,20}(?:,\d{1,20})*)?'
_POSITION_RE = re.compile(rf'^({_SNAP})(?:~({_SNAP})~(\d{{1,20}})(?:\.(\d{{1,9}}))?)?$')
_PID_RE = re.compile(r'^([A-Za-z0-9_-]{8,40})(?:\.(.+))?$')
MAX_TEXT = 32768   # a snapshot with a huge in-progress list is not worth recovering from
#: transaction ids are xid8 (epoch << 32 | xid); anything at or above 2^63 is not one of ours
MAX_XID = 2 ** 63 - 1


class Snapshot(NamedTuple):
    xmin: int
    xmax: int
    xip: FrozenSet[int]

    @classmethod
    def parse(cls, text: str) -> 'Snapshot':
        xmin, xmax, xip = text.split(':')
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(',') if x))

    def visible(self, xid: int) -> bool:
        """Is transaction ``xid`` visible in this snapshot (pg_visible_in_snapshot)?"""
        return xid < self.xmin or (xid < self.xmax and xid not in self.xip)

    def sees_all_of(self, other: 'Snapshot') -> bool:
        """True when every transaction visible in ``other`` is visible here too."""
        # visible(S) = {x < S.xmax and x not in S.xip}
        if any(x < other.xmax and x not in other.xip for x in self.xip):
            return False
        if other.xmax > self.xmax:
            if other.xmax - self.xmax > len(other.xip):
                return False
            return all(x in other.xip for x in range(self.xmax, other.xmax))
        return True


class Position(NamedTuple):
    base: str
    top: Optional[str] = None
    last_id: Optional[int] = None
    part: Optional[int] = None          # parts 1..part of row last_id (None: all of it)

    def encode(self) -> str:
        if self.top is None:
            return self.base
        if self.part is None:
            return f'{self.base}~{self.top}~{self.last_id}'
        return f'{self.base}~{self.top}~{self.last_id}.{self.part}'

    def has(self, row_id: int, part: Optional[int]) -> bool:
        """Of the rows visible in ``top`` and not in ``base``: is this one (or this part of it) in D?"""
        if row_id != self.last_id:
            return row_id < self.last_id
        return self.part is None or (part is not None and part <= self.part)

    @property
    def horizon(self) -> str:
        """The latest snapshot this position refers to."""
        return self.top or self.base

    @classmethod
    def decode(cls, text: object) -> Optional['Position']:
        """A position from client input, or None when it is not one of ours."""
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            return None
        m = _POSITION_RE.match(text)
        if not m:
            return None
        base, top, last, part = m.groups()
        if last is not None and int(last) > MAX_XID:     # journal ids are bigint
            return None
        for snap in (base, top):
            if snap is not None:
                s = Snapshot.parse(snap)
                if s.xmax > MAX_XID or s.xmin > s.xmax or any(not s.xmin <= x < s.xmax for x in s.xip):
                    return None
        if top is not None and not Snapshot.parse(top).sees_all_of(Snapshot.parse(base)):
            return None
        return cls(base, top, int(last) if last is not None else None,
                   int(part) if part is not None else None)


def new_pid(position: Optional[str]) -> str:
    """A private session id that also remembers where the session started."""
    token = secrets.token_urlsafe(12)
    return token if position is None else f'{token}.{position}'


def valid_pid(pid: object) -> bool:
    """Is ``pid`` shaped like one we issue (it is echoed back to the client when recovered)?"""
    return isinstance(pid, str) and len(pid) <= MAX_TEXT and _PID_RE.match(pid) is not None


def pid_position(pid: object) -> Optional[Position]:
    if not isinstance(pid, str) or len(pid) > MAX_TEXT:
        return None
    m = _PID_RE.match(pid)
    if not m or m.group(2) is None:
        return None
    return Position.decode(m.group(2))
