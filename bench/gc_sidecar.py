"""The sidecar (`crm-realtime serve`) with its garbage-collector pauses recorded, for bench/connections.py --gc-report.

    python bench/gc_sidecar.py REPORT_FILE      (SIDECAR_* settings from the environment)

Every collection's generation and duration is recorded (gc.callbacks). Each
SIGUSR2 appends to REPORT_FILE one line for the collections since the
previous one: count per generation, total and longest pause, and the number
of objects the collector tracks. A bench tool, not part of the sidecar.
"""
import gc
import signal
import sys
import time
from pathlib import Path

#: this checkout's sidecar, not whichever one the interpreter's environment installed
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    path = Path(sys.argv[1])
    pauses = []         # (generation, seconds) since the last report
    started = {}
    phase = [0]

    def on_gc(stage, info):
        if stage == 'start':
            started['t'] = time.perf_counter()
        elif 't' in started:
            pauses.append((info['generation'], time.perf_counter() - started.pop('t')))

    def report(*_):
        done, pauses[:] = list(pauses), []
        by_gen = {g: [d for gg, d in done if gg == g] for g in (0, 1, 2)}
        phase[0] += 1
        line = (f'mark {phase[0]}: ' + ', '.join(
            f'gen{g} {len(ds)} x, {1000 * sum(ds):.0f} ms in all, longest {1000 * max(ds, default=0):.1f} ms'
            for g, ds in by_gen.items()) + f'; {len(gc.get_objects())} objects tracked\n')
        with path.open('a') as f:
            f.write(line)

    gc.callbacks.append(on_gc)
    signal.signal(signal.SIGUSR2, report)
    sys.path.insert(0, str(ROOT))
    from sidecar.cli import main as cli_main
    return cli_main(['serve'])


if __name__ == '__main__':
    raise SystemExit(main())
