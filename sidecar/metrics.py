"""Prometheus metrics of one sidecar process (served at ``GET /metrics``).

A registry per app instance, so tests that build several apps in one process
do not collide.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.connected_clients = Gauge(
            'crm_realtime_connected_clients', 'Socket.IO clients currently connected', registry=r)
        self.events_emitted = Counter(
            'crm_realtime_events_emitted', 'Events written to client sockets, by event name',
            ['event'], registry=r)
        self.auth_refused = Counter(
            'crm_realtime_auth_refused', 'Connections refused, by reason', ['reason'], registry=r)
        self.listener_reconnects = Counter(
            'crm_realtime_listener_reconnects', 'Times the LISTEN connection was re-established',
            registry=r)
        self.listener_up = Gauge(
            'crm_realtime_listener_up', '1 while the LISTEN connection is active', registry=r)
        self.journal_lag = Gauge(
            'crm_realtime_journal_lag_seconds',
            'Now minus the record time of the last journal row emitted', registry=r)
        self.recoveries = Counter(
            'crm_realtime_recoveries', 'Connection-state recoveries, by outcome', ['outcome'],
            registry=r)
        self.notify_queue_usage = Gauge(
            'crm_realtime_notify_queue_usage', "pg_notification_queue_usage() of the CRM database",
            registry=r)
        self.slow_clients_closed = Counter(
            'crm_realtime_slow_clients_closed',
            'Websockets closed because their unsent backlog passed SIDECAR_MAX_BACKLOG_BYTES',
            registry=r)
        self.accept_paused = Counter(
            'crm_realtime_accept_paused',
            'Times accepting new connections paused because the process was out of file '
            'descriptors (raise LimitNOFILE)', registry=r)
        self.wire_path = Gauge(
            'crm_realtime_wire_path', '1 for the fan-out path in use: "direct" (frames written to '
            'sockets) or "public" (engine.io send_packet, when a library changed)', ['path'],
            registry=r)
        self.recovery_reads = Counter(
            'crm_realtime_recovery_reads', 'Journal reads made for recovering clients', registry=r)
        self.recovering_clients = Gauge(
            'crm_realtime_recovering_clients', 'Clients on hold while they catch up', registry=r)
        self.calendly_connections_needing_reauth = Gauge(
            'crm_realtime_calendly_connections_needing_reauth',
            'Calendly connections whose token was refused (401)', registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
