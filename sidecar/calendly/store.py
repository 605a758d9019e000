"""Calendly connections and poll state, in the sidecar's own schema.

Tables (declared once, in ``sql/install.sql``, block "Calendly"):
``calendly_connection`` (one Calendly account linked to one CRM organization),
``calendly_booking`` (the idempotency record, written by ``crm.py``) and
``calendly_event_seen`` (what a poll last saw of each scheduled event). The
columns this module reads are ``CONNECTION_COLUMNS``; a test checks them
against the installed table.

Database access: plain SQL through psycopg on one ``AsyncConnectionPool``,
the sidecar's own when the sidecar runs (``Calendly(settings, pool=...)``),
else a small one of the CLI's. Every method takes an optional ``conn``: a
poll runs all of its statements on the connection that holds its lock.

Access tokens and webhook signing keys are stored as Fernet ciphertext; the
Fernet key is derived (HKDF-SHA256) from ``SIDECAR_CALENDLY_ENCRYPTION_KEY``.
``Connection`` holds only ciphertext and its ``repr`` omits it; plain values
exist only in the call that needs them.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import uuid
from datetime import datetime
from typing import AsyncIterator, Dict, List, Optional

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from ..settings import ConfigError

log = logging.getLogger('crm_realtime.calendly.store')

SCHEMA = 'crm_realtime'
ACTIVE, NEEDS_REAUTH = 'active', 'needs_reauth'

CONNECTION_TABLE = sql.Identifier(SCHEMA, 'calendly_connection')
EVENT_SEEN_TABLE = sql.Identifier(SCHEMA, 'calendly_event_seen')
BOOKING_TABLE = sql.Identifier(SCHEMA, 'calendly_booking')

#: the columns of calendly_connection this module reads (tests compare them with install.sql)
CONNECTION_COLUMNS = ('id', 'organization_id', 'scope', 'subject', 'calendly_organization',
                      'calendly_user', 'status', 'webhook_subscription', 'watermark', 'last_poll_at',
                      'last_error', 'created_at', 'token_ciphertext', 'signing_key_ciphertext')
_SELECT = sql.SQL('SELECT {} FROM {}').format(
    sql.SQL(', ').join(sql.SQL('id::text AS id') if c == 'id' else sql.Identifier(c)
                       for c in CONNECTION_COLUMNS), CONNECTION_TABLE)
_RETURNING = sql.SQL(' RETURNING {}').format(
    sql.SQL(', ').join(sql.SQL('id::text AS id') if c == 'id' else sql.Identifier(c)
                       for c in CONNECTION_COLUMNS))


#: how long a statement waits for a pooled connection: with the database down, a
#: webhook must still be answered (503) well within Calendly's 15 s read timeout
ACQUIRE_TIMEOUT = 5.0


def make_pool(database_url: str, application_name: str = 'crm-realtime calendly',
              max_size: int = 2) -> AsyncConnectionPool:
    """The pool of a process that runs Calendly without a sidecar (the CLI, the demo's set-up)."""
    return AsyncConnectionPool(database_url, min_size=0, max_size=max_size, open=False,
                               name=application_name,
                               kwargs={'autocommit': True, 'application_name': application_name})


def log_text(exc: BaseException) -> str:
    """An exception as one log line: class and primary message, without the SQL,
    bound values or PostgreSQL's DETAIL (which can quote a whole CRM row)."""
    diag = getattr(exc, 'diag', None)
    primary = getattr(diag, 'message_primary', None) if diag is not None else None
    if primary:
        return f'{exc.__class__.__name__}: {primary}'
    text = str(exc).splitlines()[0] if str(exc) else ''
    return f'{exc.__class__.__name__}: {text}' if text else exc.__class__.__name__


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


class SecretError(ConfigError):
    """A stored secret cannot be encrypted or decrypted (message for the operator)."""


class Cipher:
    """Fernet with a key derived from SIDECAR_CALENDLY_ENCRYPTION_KEY."""

    def __init__(self, key_material: str):
        if not key_material:
            raise SecretError('SIDECAR_CALENDLY_ENCRYPTION_KEY is not set (expected at least 32 characters '
                              'of random key material; it encrypts Calendly tokens at rest).')
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b'crm-realtime',
                   info=b'calendly secrets v1').derive(key_material.encode('utf-8'))
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def encrypt(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode('utf-8')).decode('ascii')

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode('ascii')).decode('utf-8')
        except InvalidToken:
            raise SecretError('a stored Calendly secret cannot be decrypted: SIDECAR_CALENDLY_ENCRYPTION_KEY '
                              'is not the key it was encrypted with (reconnect with '
                              '`crm-realtime calendly connect`).') from None


@dataclasses.dataclass(frozen=True)
class Connection:
    id: str
    organization_id: str
    scope: str
    subject: str
    calendly_organization: str
    calendly_user: str
    status: str
    webhook_subscription: Optional[str]
    watermark: datetime
    last_poll_at: Optional[datetime]
    last_error: Optional[str]
    created_at: datetime
    token_ciphertext: str = dataclasses.field(repr=False)
    signing_key_ciphertext: Optional[str] = dataclasses.field(repr=False)

    @property
    def has_signing_key(self) -> bool:
        return self.signing_key_ciphertext is not None

    @classmethod
    def from_row(cls, row: Dict) -> 'Connection':
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})


class Store:
    """Reads and writes ``calendly_connection`` and ``calendly_event_seen``."""

    def __init__(self, pool: AsyncConnectionPool, encryption_key: str):
        self.pool = pool
        self._encryption_key = encryption_key
        self._cipher: Optional[Cipher] = None

    @property
    def cipher(self) -> Cipher:
        if self._cipher is None:
            self._cipher = Cipher(self._encryption_key)
        return self._cipher

    def token(self, connection: Connection) -> str:
        return self.cipher.decrypt(connection.token_ciphertext)

    def signing_key(self, connection: Connection) -> Optional[str]:
        if connection.signing_key_ciphertext is None:
            return None
        return self.cipher.decrypt(connection.signing_key_ciphertext)

    @contextlib.asynccontextmanager
    async def connection(self, conn: Optional[AsyncConnection] = None) -> AsyncIterator[AsyncConnection]:
        """``conn`` itself, or a pooled connection for the duration of the block."""
        if conn is not None:
            yield conn
        else:
            async with self.pool.connection(timeout=ACQUIRE_TIMEOUT) as pooled:
                yield pooled

    async def _rows(self, query, params=(), conn=None) -> List[Dict]:
        async with self.connection(conn) as c:
            cur = c.cursor(row_factory=dict_row)
            await cur.execute(query, params)
            return await cur.fetchall() if cur.description else []

    async def _execute(self, query, params=(), conn=None) -> int:
        async with self.connection(conn) as c:
            cur = await c.execute(query, params)
            return cur.rowcount

    # ----------------------------------------------------------------- connections

    async def save(self, *, organization_id: str, scope: str, subject: str, calendly_organization: str,
                   calendly_user: str, token: str) -> Connection:
        """Create the connection, or give an existing one (same organization and
        subject) its new token: that is how a connection is re-authorised."""
        token_ct = self.cipher.encrypt(token)
        query = sql.SQL(
            'INSERT INTO {} (organization_id, scope, subject, calendly_organization, calendly_user, '
            'token_ciphertext, status) VALUES (%(org)s, %(scope)s, %(subject)s, %(corg)s, %(cuser)s, '
            '%(token)s, %(status)s) '
            'ON CONFLICT (organization_id, subject) DO UPDATE SET scope = excluded.scope, '
            'calendly_organization = excluded.calendly_organization, calendly_user = excluded.calendly_user, '
            'token_ciphertext = excluded.token_ciphertext, status = excluded.status, last_error = NULL, '
            'updated_at = now()').format(CONNECTION_TABLE) + _RETURNING
        rows = await self._rows(query, {'org': str(organization_id), 'scope': scope, 'subject': subject,
                                        'corg': calendly_organization, 'cuser': calendly_user,
                                        'token': token_ct, 'status': ACTIVE})
        return Connection.from_row(rows[0])

    async def set_webhook(self, connection_id: str, subscription_uri: Optional[str],
                          signing_key: Optional[str]) -> None:
        ct = None if signing_key is None else self.cipher.encrypt(signing_key)
        await self._update(connection_id, webhook_subscription=subscription_uri, signing_key_ciphertext=ct)

    async def get(self, connection_id: str, conn=None) -> Optional[Connection]:
        if not is_uuid(connection_id):
            return None
        rows = await self._rows(_SELECT + sql.SQL(' WHERE id = %s'), (connection_id,), conn)
        return Connection.from_row(rows[0]) if rows else None

    async def list(self, status: Optional[str] = None) -> List[Connection]:
        where = sql.SQL(' WHERE status = %s') if status is not None else sql.SQL('')
        rows = await self._rows(_SELECT + where + sql.SQL(' ORDER BY organization_id, created_at'),
                                (status,) if status is not None else ())
        return [Connection.from_row(r) for r in rows]

    async def delete(self, connection_id: str) -> bool:
        if not is_uuid(connection_id):
            return False
        return await self._execute(sql.SQL('DELETE FROM {} WHERE id = %s').format(CONNECTION_TABLE),
                                   (connection_id,)) > 0

    async def count(self, status: Optional[str] = None, conn=None) -> int:
        where = sql.SQL(' WHERE status = %s') if status is not None else sql.SQL('')
        rows = await self._rows(sql.SQL('SELECT count(*) AS n FROM {}').format(CONNECTION_TABLE) + where,
                                (status,) if status is not None else (), conn)
        return rows[0]['n']

    async def count_needing_reauth(self) -> int:
        return await self.count(NEEDS_REAUTH)

    async def mark_needs_reauth(self, connection_id: str, error: str, conn=None) -> None:
        await self._update(connection_id, conn=conn, status=NEEDS_REAUTH, last_error=error,
                           last_poll_at=sql.SQL('now()'))

    async def finish_poll(self, connection_id: str, started_at: datetime, error: Optional[str],
                          conn=None) -> None:
        """Record a poll; only a poll without error moves the watermark (to when it started)."""
        values = {'last_poll_at': sql.SQL('now()'), 'last_error': error}
        if error is None:
            values['watermark'] = (sql.SQL('greatest(watermark, %s)'), started_at)
        await self._update(connection_id, conn=conn, **values)

    async def _update(self, connection_id: str, conn=None, **values) -> None:
        """``UPDATE calendly_connection SET ...``: a value is a parameter, an
        ``sql.SQL`` expression, or ``(expression, parameter)``."""
        sets, params = [sql.SQL('updated_at = now()')], []
        for name, value in values.items():
            if isinstance(value, sql.Composable):
                sets.append(sql.SQL('{} = {}').format(sql.Identifier(name), value))
            elif isinstance(value, tuple):
                sets.append(sql.SQL('{} = {}').format(sql.Identifier(name), value[0]))
                params.append(value[1])
            else:
                sets.append(sql.SQL('{} = %s').format(sql.Identifier(name)))
                params.append(value)
        await self._execute(sql.SQL('UPDATE {} SET {} WHERE id = %s').format(
            CONNECTION_TABLE, sql.SQL(', ').join(sets)), (*params, connection_id), conn)

    # ----------------------------------------------------------------- poll state

    async def seen_events(self, connection_id: str, conn=None) -> Dict[str, str]:
        rows = await self._rows(sql.SQL('SELECT event_uri, fingerprint FROM {} WHERE connection_id = %s')
                                .format(EVENT_SEEN_TABLE), (connection_id,), conn)
        return {r['event_uri']: r['fingerprint'] for r in rows}

    async def mark_event_seen(self, connection_id: str, event_uri: str, fingerprint: str,
                              start_time: datetime, conn=None) -> None:
        await self._execute(sql.SQL(
            'INSERT INTO {} (connection_id, event_uri, fingerprint, start_time) VALUES (%s, %s, %s, %s) '
            'ON CONFLICT (connection_id, event_uri) DO UPDATE SET fingerprint = excluded.fingerprint, '
            'start_time = excluded.start_time').format(EVENT_SEEN_TABLE),
            (connection_id, event_uri, fingerprint, start_time), conn)

    async def forget_events_before(self, connection_id: str, before: datetime, conn=None) -> None:
        """Drop poll state of events that start before the poll window (never listed again)."""
        await self._execute(sql.SQL('DELETE FROM {} WHERE connection_id = %s AND start_time < %s')
                            .format(EVENT_SEEN_TABLE), (connection_id, before), conn)

    # ----------------------------------------------------------------- bookings

    async def already_applied(self, organization_id: str, kind: str, invitee_uri: str) -> bool:
        rows = await self._rows(sql.SQL(
            "SELECT 1 AS one FROM {} WHERE organization_id = %s AND kind = %s AND invitee_uri = %s "
            "AND outcome <> 'pending'").format(BOOKING_TABLE), (organization_id, kind, invitee_uri))
        return bool(rows)

    # ----------------------------------------------------------------- poll lock

    @contextlib.asynccontextmanager
    async def poll_lock(self, connection_id: str) -> AsyncIterator[Optional[AsyncConnection]]:
        """Yield a pooled connection holding ``connection_id``'s poll lock, or None
        when another process (any replica on this database) is polling it.

        A session advisory lock: the poll runs its statements on the yielded
        connection, and the lock is released before the connection goes back to
        the pool. If this process dies mid-poll, PostgreSQL closes the session
        and the lock goes with it; if the unlock itself fails, the connection
        is closed rather than returned holding the lock.
        """
        key = 'crm_realtime.calendly.poll:' + connection_id
        async with self.pool.connection(timeout=ACQUIRE_TIMEOUT) as conn:
            cur = await conn.execute(
                'SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtextextended(%s, 0))', (key,))
            if not (await cur.fetchone())[0]:
                yield None
                return
            try:
                yield conn
            finally:
                try:
                    await conn.execute(
                        'SELECT pg_catalog.pg_advisory_unlock(pg_catalog.hashtextextended(%s, 0))', (key,))
                except BaseException:
                    await conn.close()
                    raise
