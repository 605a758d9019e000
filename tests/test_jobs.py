"""sidecar/app.py's Jobs: stopping the scheduler never shows up as a failed job.

A stop that came right after the scheduler had submitted a run (a Calendly
poll due at that moment) let APScheduler's shutdown cancel the run before it
started, and APScheduler logged "Error running job" with a CancelledError
traceback: seen in CI at the end of a demo test.
"""
import asyncio
import datetime
import logging

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from sidecar.app import Jobs

pytestmark = pytest.mark.usefixtures('io_loop')


class _Errors(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.gen_test(timeout=20)
async def test_a_stop_at_any_moment_of_a_due_run_logs_no_error():
    errors = _Errors()
    logging.getLogger('apscheduler').addHandler(errors)
    started, finished = [], []
    try:
        # k loop steps between start and stop: k = 0 is the run submitted, not yet
        # started; later ones are the run in progress, then done
        for k in range(12):
            scheduler = AsyncIOScheduler()
            jobs = Jobs(scheduler)

            async def poll():
                started.append(k)
                await asyncio.sleep(0.001)
                finished.append(k)

            jobs.add_job(poll, 'interval', seconds=3600,
                         next_run_time=datetime.datetime.now(datetime.timezone.utc))
            scheduler.start()
            for _ in range(k):
                await asyncio.sleep(0)
            await jobs.stop()
            assert not scheduler.running
            await asyncio.sleep(0.01)
    finally:
        logging.getLogger('apscheduler').removeHandler(errors)
    assert errors.messages == []
    # the loop covered a run stopped before it began and runs stopped while in progress
    assert 0 not in started and started, (started, finished)
    assert set(finished) <= set(started)


@pytest.mark.gen_test(timeout=20)
async def test_jobs_run_as_scheduled_until_stop():
    scheduler = AsyncIOScheduler()
    jobs = Jobs(scheduler)
    runs = []

    async def tick():
        runs.append(1)

    jobs.add_job(tick, 'interval', seconds=0.05)
    scheduler.start()
    await asyncio.sleep(0.4)
    await jobs.stop()
    count = len(runs)
    await asyncio.sleep(0.2)
    assert count >= 2 and len(runs) == count
