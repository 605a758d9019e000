"""The sidecar (`crm-realtime serve`) under tracemalloc, for bench/connections.py --trace-sidecar.

    python bench/traced_sidecar.py REPORT_FILE      (SIDECAR_* settings from the environment)

The first SIGUSR1 starts tracemalloc (once the sidecar is up, so that start-up
imports are neither slowed down nor counted); the second writes to REPORT_FILE, from inside the event loop: the connected
engine.io sockets, live asyncio tasks and timer handles (total and per socket),
the top allocation sites grouped by traceback, and live objects by type. The
file ends with the line END once complete. A bench tool, not part of the sidecar.
"""
import asyncio
import collections
import gc
import signal
import sys
import tracemalloc
from pathlib import Path

#: this checkout's sidecar, not whichever one the interpreter's environment installed
ROOT = Path(__file__).resolve().parents[1]

FRAMES = 12


def _report(path: Path) -> None:
    loop = asyncio.get_running_loop()
    gc.collect()
    snap = tracemalloc.take_snapshot().filter_traces([
        tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, '<frozen importlib._bootstrap>')])
    sockets = 0
    for obj in gc.get_objects():
        if type(obj).__name__ in ('AsyncSocket', 'WireSocket') and getattr(obj, 'sid', None):
            sockets += not getattr(obj, 'closed', True)
    tasks = asyncio.all_tasks(loop)
    timers = [h for h in getattr(loop, '_scheduled', []) if not h.cancelled()]
    per = max(1, sockets)
    lines = [f'open engine.io sockets: {sockets}',
             f'asyncio tasks: {len(tasks)} ({len(tasks) / per:.2f} per socket)',
             f'timer handles: {len(timers)} ({len(timers) / per:.2f} per socket)',
             f'traced memory: {sum(s.size for s in snap.statistics("filename")) / 1024 / 1024:.1f} MiB', '']
    coros = collections.Counter(getattr(t.get_coro(), '__qualname__', '?') for t in tasks)
    lines.append('tasks by coroutine:')
    lines += [f'  {c:7d}  {name}' for name, c in coros.most_common(12)]
    cbs = collections.Counter(getattr(h._callback, '__qualname__', repr(h._callback)) for h in timers)
    lines.append('timers by callback:')
    lines += [f'  {c:7d}  {name}' for name, c in cbs.most_common(12)]
    lines.append('\ntop allocation sites (bytes per socket, count), by traceback:')
    for stat in snap.statistics('traceback')[:30]:
        lines.append(f'  {stat.size / per:9.0f} B/socket  {stat.count:8d} blocks')
        for frame in stat.traceback.format(limit=4, most_recent_first=True):
            lines.append('      ' + frame)
    lines.append('\nlive objects by type (count per socket):')
    types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    lines += [f'  {c / per:8.2f}  {c:8d}  {name}' for name, c in types.most_common(40)]
    path.write_text('\n'.join(lines) + '\nEND\n')


def main() -> int:
    path = Path(sys.argv[1])

    def on_signal(*_):
        if tracemalloc.is_tracing():
            asyncio.get_running_loop().call_soon_threadsafe(_report, path)
        else:
            tracemalloc.start(FRAMES)

    signal.signal(signal.SIGUSR1, on_signal)
    sys.path.insert(0, str(ROOT))
    from sidecar.cli import main as cli_main
    return cli_main(['serve'])


if __name__ == '__main__':
    raise SystemExit(main())
