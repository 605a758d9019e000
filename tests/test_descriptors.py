"""Out of file descriptors: the sidecar pauses accepting, says why once, and recovers.

Each client is a descriptor. Past the process's open-files limit, ``accept()``
fails with EMFILE; tornado's own accept handler let that error escape into
the event loop, which called it again at once: one core spinning and a
traceback per call (41,000 in 6 s, measured before sidecar/wire/accept.py).
"""
import resource
import socket
import subprocess
import sys
import time
import urllib.request

from conftest import ROOT, SidecarProcess, sidecar_env


def _limited(soft, hard):
    def preexec():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return preexec


def _start(database, soft, hard) -> SidecarProcess:
    p = SidecarProcess(sidecar_env(database))
    p._log = open(p.log_path, 'ab')
    p.proc = subprocess.Popen([sys.executable, '-m', 'sidecar', 'serve'], env=p.env, cwd=str(ROOT),
                              stdout=p._log, stderr=subprocess.STDOUT,
                              preexec_fn=_limited(soft, hard))
    p.wait_ready()
    return p


def _cpu_seconds(pid) -> float:
    fields = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def _soft_limit(pid) -> int:
    for line in open(f'/proc/{pid}/limits'):
        if line.startswith('Max open files'):
            return int(line.split()[3])
    raise AssertionError('no "Max open files" line in /proc/<pid>/limits')


def test_out_of_descriptors_pauses_accepting_instead_of_spinning(database):
    p = _start(database, 60, 60)
    held = []
    try:
        assert 'open-files limit is 60: room for about' in p.log(), p.log()
        # more connections than descriptors: the kernel queues what the sidecar cannot accept
        for _ in range(90):
            held.append(socket.create_connection(('127.0.0.1', p.port), timeout=5))
        time.sleep(1.0)
        c0 = _cpu_seconds(p.proc.pid)
        time.sleep(2.0)
        spent = _cpu_seconds(p.proc.pid) - c0
        log = p.log()
        assert spent < 0.5, f'{spent:.2f} s of CPU in 2 s while out of descriptors (spinning?)'
        assert 'Too many open files' in log and 'out of file descriptors' in log, log[-3000:]
        assert log.count('out of file descriptors') <= 2, 'the warning repeats: ' + log[-3000:]
        assert 'Traceback' not in log and 'Exception in callback' not in log, log[-3000:]
        for s in held:
            s.close()
        held.clear()
        # descriptors free again: new connections are served (the paused accept resumes)
        p.wait_ok('/readyz', timeout=10)
        with urllib.request.urlopen(p.url + '/metrics', timeout=5) as r:
            metrics = r.read().decode()
        paused = [float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith('crm_realtime_accept_paused_total ')]
        assert paused and paused[0] >= 1, metrics
    finally:
        for s in held:
            s.close()
        p.stop()


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(database):
    p = _start(database, 256, 8192)
    try:
        assert _soft_limit(p.proc.pid) == 8192
        assert 'open-files limit: 8192 (room for about 8128 clients)' in p.log(), p.log()
        assert 'open-files limit is' not in p.log()      # no warning at 8192
    finally:
        p.stop()
