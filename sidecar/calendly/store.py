"""Calendly connections and poll state, in the sidecar's own schema.

Tables (``sql/install.sql``, block "Calendly"): ``calendly_connection`` (one
Calendly account linked to one CRM organization), ``calendly_booking`` (the
idempotency record, written by ``crm.py``) and ``calendly_event_seen`` (what a
poll last saw of each scheduled event).

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
from datetime import datetime
from typing import AsyncIterator, Dict, List, Optional

import psycopg
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import (Column, DateTime, MetaData, Table, Text, delete, func, select, update)
from sqlalchemy.dialects.postgresql import UUID, insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..settings import ConfigError

log = logging.getLogger('crm_realtime.calendly.store')

SCHEMA = 'crm_realtime'
ACTIVE, NEEDS_REAUTH = 'active', 'needs_reauth'

metadata = MetaData(schema=SCHEMA)
connection_table = Table(
    'calendly_connection', metadata,
    Column('id', UUID(as_uuid=False), primary_key=True, server_default=func.gen_random_uuid()),
    Column('organization_id', Text, nullable=False),
    Column('scope', Text, nullable=False),
    Column('subject', Text, nullable=False),
    Column('calendly_organization', Text, nullable=False),
    Column('calendly_user', Text, nullable=False),
    Column('token_ciphertext', Text, nullable=False),
    Column('signing_key_ciphertext', Text),
    Column('webhook_subscription', Text),
    Column('status', Text, nullable=False),
    Column('watermark', DateTime(timezone=True), nullable=False),
    Column('last_poll_at', DateTime(timezone=True)),
    Column('last_error', Text),
    Column('created_at', DateTime(timezone=True), nullable=False),
    Column('updated_at', DateTime(timezone=True), nullable=False),
)
booking_table = Table(
    'calendly_booking', metadata,
    Column('organization_id', Text, primary_key=True),
    Column('kind', Text, primary_key=True),
    Column('invitee_uri', Text, primary_key=True),
    Column('event_uri', Text, nullable=False),
    Column('connection_id', UUID(as_uuid=False)),
    Column('prospect_id', Text),
    Column('outcome', Text, nullable=False),
    Column('via', Text, nullable=False),
    Column('processed_at', DateTime(timezone=True), nullable=False, server_default=func.now()),
)
event_seen_table = Table(
    'calendly_event_seen', metadata,
    Column('connection_id', UUID(as_uuid=False), primary_key=True),
    Column('event_uri', Text, primary_key=True),
    Column('fingerprint', Text, nullable=False),
    Column('start_time', DateTime(timezone=True), nullable=False),
)


def make_engine(database_url: str, application_name: str = 'crm-realtime calendly') -> AsyncEngine:
    """An async SQLAlchemy engine on the CRM database (psycopg 3 underneath).

    ``async_creator`` hands the URL to psycopg untouched, so every form
    SIDECAR_DATABASE_URL accepts (URL or conninfo) works here too.
    """
    async def connect():
        return await psycopg.AsyncConnection.connect(database_url, application_name=application_name)
    return create_async_engine('postgresql+psycopg://', async_creator=connect,
                               pool_size=5, max_overflow=10, pool_pre_ping=True,
                               # errors then carry no bound values (emails, names) into logs
                               hide_parameters=True)


def log_text(exc: BaseException) -> str:
    """An exception as one log line: class and primary message, without the SQL,
    bound values or PostgreSQL's DETAIL (which can quote a whole CRM row)."""
    orig = getattr(exc, 'orig', None)
    if orig is not None:
        diag = getattr(orig, 'diag', None)
        primary = getattr(diag, 'message_primary', None) if diag is not None else None
        return f'{orig.__class__.__name__}: {primary or str(orig).splitlines()[0]}'
    return f'{exc.__class__.__name__}: {exc}'


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
    def from_row(cls, row) -> 'Connection':
        m = row._mapping
        return cls(**{f.name: (str(m[f.name]) if f.name == 'id' else m[f.name])
                      for f in dataclasses.fields(cls)})


class Store:
    """Reads and writes ``calendly_connection`` and ``calendly_event_seen``."""

    def __init__(self, engine: AsyncEngine, database_url: str, encryption_key: str):
        self.engine = engine
        self._database_url = database_url
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

    # ----------------------------------------------------------------- connections

    async def save(self, *, organization_id: str, scope: str, subject: str, calendly_organization: str,
                   calendly_user: str, token: str) -> Connection:
        """Create the connection, or give an existing one (same organization and
        subject) its new token: that is how a connection is re-authorised."""
        token_ct = self.cipher.encrypt(token)
        stmt = insert(connection_table).values(
            organization_id=str(organization_id), scope=scope, subject=subject,
            calendly_organization=calendly_organization, calendly_user=calendly_user,
            token_ciphertext=token_ct, status=ACTIVE)
        stmt = stmt.on_conflict_do_update(
            index_elements=['organization_id', 'subject'],
            set_={'scope': scope, 'calendly_organization': calendly_organization,
                  'calendly_user': calendly_user, 'token_ciphertext': token_ct, 'status': ACTIVE,
                  'last_error': None, 'updated_at': func.now()},
        ).returning(connection_table)
        async with self.engine.begin() as conn:
            return Connection.from_row((await conn.execute(stmt)).one())

    async def set_webhook(self, connection_id: str, subscription_uri: Optional[str],
                          signing_key: Optional[str]) -> None:
        ct = None if signing_key is None else self.cipher.encrypt(signing_key)
        await self._update(connection_id, webhook_subscription=subscription_uri, signing_key_ciphertext=ct)

    async def get(self, connection_id: str) -> Optional[Connection]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(connection_table).where(
                connection_table.c.id == connection_id))).first()
        return None if row is None else Connection.from_row(row)

    async def list(self, status: Optional[str] = None) -> List[Connection]:
        query = select(connection_table).order_by(connection_table.c.organization_id,
                                                  connection_table.c.created_at)
        if status is not None:
            query = query.where(connection_table.c.status == status)
        async with self.engine.connect() as conn:
            return [Connection.from_row(r) for r in (await conn.execute(query)).all()]

    async def delete(self, connection_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(connection_table).where(
                connection_table.c.id == connection_id))
        return result.rowcount > 0

    async def count_needing_reauth(self) -> int:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(func.count()).select_from(connection_table).where(
                connection_table.c.status == NEEDS_REAUTH))).scalar_one()

    async def mark_needs_reauth(self, connection_id: str, error: str) -> None:
        await self._update(connection_id, status=NEEDS_REAUTH, last_error=error, last_poll_at=func.now())

    async def finish_poll(self, connection_id: str, started_at: datetime, error: Optional[str]) -> None:
        """Record a poll; only a poll without error moves the watermark (to when it started)."""
        values = {'last_poll_at': func.now(), 'last_error': error}
        if error is None:
            values['watermark'] = func.greatest(connection_table.c.watermark, started_at)
        await self._update(connection_id, **values)

    async def _update(self, connection_id: str, **values) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(connection_table).where(connection_table.c.id == connection_id)
                               .values(updated_at=func.now(), **values))

    # ----------------------------------------------------------------- poll state

    async def seen_events(self, connection_id: str) -> Dict[str, str]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(event_seen_table.c.event_uri, event_seen_table.c.fingerprint)
                                       .where(event_seen_table.c.connection_id == connection_id))).all()
        return {uri: fp for uri, fp in rows}

    async def mark_event_seen(self, connection_id: str, event_uri: str, fingerprint: str,
                              start_time: datetime) -> None:
        stmt = insert(event_seen_table).values(connection_id=connection_id, event_uri=event_uri,
                                               fingerprint=fingerprint, start_time=start_time)
        stmt = stmt.on_conflict_do_update(index_elements=['connection_id', 'event_uri'],
                                          set_={'fingerprint': fingerprint, 'start_time': start_time})
        async with self.engine.begin() as conn:
            await conn.execute(stmt)

    async def forget_events_before(self, connection_id: str, before: datetime) -> None:
        """Drop poll state of events that start before the poll window (never listed again)."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(event_seen_table).where(
                event_seen_table.c.connection_id == connection_id,
                event_seen_table.c.start_time < before))

    @contextlib.asynccontextmanager
    async def poll_lock(self, connection_id: str) -> AsyncIterator[bool]:
        """Yield True when this process may poll ``connection_id`` now, False when
        another one (any replica on this database) is polling it.

        A session advisory lock held on a connection of its own: if this process
        dies mid-poll, PostgreSQL closes the session and the lock goes with it.
        """
        async with await psycopg.AsyncConnection.connect(
                self._database_url, autocommit=True,
                application_name='crm-realtime calendly poll lock') as conn:
            cur = await conn.execute(
                "SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtextextended(%s, 0))",
                ('crm_realtime.calendly.poll:' + connection_id,))
            got = (await cur.fetchone())[0]
            yield got
            # closing the session releases the lock; no explicit unlock to forget
