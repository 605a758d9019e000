"""The fence: no module of sidecar/ outside sidecar/wire/ touches a library internal.

The names are those the wire relies on (sidecar/wire/__init__.py) and the
tornado RequestHandler internals a handler is tempted by (``_finished``,
``_reason``, ``_status_code``, ``_headers``, ``_write_buffer``).
"""
import re
from pathlib import Path

SIDECAR = Path(__file__).resolve().parents[2] / 'sidecar'

PRIVATE = re.compile(
    r'\._(?:write_buffer|unfinished_tasks|send_packet|engineio_server_class|connecting|compressor'
    r'|getters|putters|finished|reason|status_code|headers|async|websocket_handler|connect_pids'
    r'|ping_every)\b'
    r'|\breceive_queue\b|[\'"]tornado\.handler[\'"]|\beio\.sockets\b|\bmanager\.rooms\b'
    r'|\bbasic_enter_room\b|\bget_next_message\b|\bws_connection\b|\bcreate_queue\b'
    r'|\b_init\(|\b_get\(|\b_put\(')


def _code_lines(path: Path):
    in_doc = False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        quotes = stripped.count('"""') + stripped.count("'''")
        if in_doc:
            if quotes % 2:
                in_doc = False
            continue
        if stripped.startswith(('"""', "'''")) and quotes % 2:
            in_doc = True
            continue
        if stripped.startswith('#'):
            continue
        yield n, line.split('  #')[0]


def test_no_library_internal_outside_the_wire():
    found = []
    for path in sorted(SIDECAR.rglob('*.py')):
        if 'wire' in path.relative_to(SIDECAR).parts:
            continue
        for n, line in _code_lines(path):
            for m in PRIVATE.finditer(line):
                found.append(f'{path.relative_to(SIDECAR.parent)}:{n}: {m.group(0)}')
    assert not found, 'library internals outside sidecar/wire/ (move them into the wire):\n' + '\n'.join(found)


def test_the_fence_sees_a_violation(tmp_path):
    # the scan itself can fail: a line that uses one is caught, a comment is not
    sample = tmp_path / 'x.py'
    sample.write_text('# stream._write_buffer in a comment\nn = len(stream._write_buffer)\n')
    hits = [m.group(0) for _, line in _code_lines(sample) for m in PRIVATE.finditer(line)]
    assert hits == ['._write_buffer']


def test_the_wire_docstring_lists_the_versions_it_was_checked_against():
    import sidecar.wire as wire
    for lib in ('python-engineio', 'python-socketio', 'tornado'):
        assert lib in wire.__doc__
