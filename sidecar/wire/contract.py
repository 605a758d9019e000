"""Which path the wire runs on, decided once at start-up from what the libraries expose.

The direct fan-out path (fanout.py) needs the private names listed in the
package docstring to mean what they meant in the checked versions. Each is
looked at here on real objects of the installed libraries; if any is missing
or changed type, the sidecar runs on engine.io's public ``send_packet``
(slower, same behaviour) and says so at start-up and in ``/metrics``
(``crm_realtime_wire_path``). The contract tests (tests/wire/) check the
meanings themselves, so a library release that keeps a name but changes what
it does fails CI with the name in the message.
"""
from __future__ import annotations

import socket
from typing import List, NamedTuple

from tornado.iostream import IOStream

from .queues import LightQueue, light_queue_supported, unsent_packets


class WirePath(NamedTuple):
    direct: bool
    problems: List[str]

    @property
    def name(self) -> str:
        return 'direct' if self.direct else 'public'


def _stream_problems() -> List[str]:
    a, b = socket.socketpair()
    try:
        stream = IOStream(a)
        problems = []
        buf = getattr(stream, '_write_buffer', None)
        if buf is None or not hasattr(buf, '__len__'):
            problems.append('tornado IOStream._write_buffer (unsent bytes, with len())')
        if not isinstance(getattr(stream, '_connecting', None), bool):
            problems.append('tornado IOStream._connecting (bool)')
        if getattr(stream, 'socket', None) is not a:
            problems.append('tornado IOStream.socket')
        stream.close()
        return problems
    finally:
        a.close()
        b.close()


def check(sio) -> WirePath:
    """Look at every private name the direct path reads; list what does not hold."""
    problems = []
    eio = sio.eio
    if not isinstance(getattr(eio, 'sockets', None), dict):
        problems.append('engineio AsyncServer.sockets (dict sid -> socket)')
    if not isinstance(getattr(eio, 'websockets', None), dict):
        problems.append('wire EngineIOServer.websockets (the accepted-websocket registry)')
    if not isinstance(getattr(sio.manager, 'rooms', None), dict):
        problems.append('socketio manager.rooms (dict namespace -> room -> participants)')
    if not light_queue_supported():
        problems.append('asyncio.Queue _getters/_putters/_finished/_unfinished_tasks')
    if unsent_packets(LightQueue()) != 0:
        problems.append('asyncio.Queue._unfinished_tasks (int, 0 when empty)')
    try:
        from engineio.async_socket import AsyncSocket
        probe = AsyncSocket(eio, 'wire-contract-probe')
        for attr in ('upgraded', 'upgrading', 'closed', 'closing', 'queue'):
            if not hasattr(probe, attr):
                problems.append(f'engineio AsyncSocket.{attr}')
        if not hasattr(probe.queue, 'put_nowait'):
            problems.append('engineio socket queue put_nowait')
    except Exception as exc:  # noqa: BLE001 - any change here means: not the checked engine.io
        problems.append(f'engineio AsyncSocket(server, sid) ({exc.__class__.__name__})')
    problems.extend(_stream_problems())
    return WirePath(not problems, problems)
