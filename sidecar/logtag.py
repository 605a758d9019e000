"""How a socket is named in the log: a short tag, never its session id.

``tag(sid)`` is the first 8 hex digits of the SHA-256 of the Socket.IO sid:
enough to follow one socket through the log, useless to anyone holding the log.
"""
import hashlib


def tag(sid: object) -> str:
    return 's-' + hashlib.sha256(str(sid).encode()).hexdigest()[:8]
