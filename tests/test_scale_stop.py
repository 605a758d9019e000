"""A replica stopped (a deploy, a rolling restart) while its listener is reading the journal.

The read is made to wait in PostgreSQL (the journal held by another session),
then the sidecar stops. Its LISTEN connection is closed under the read, which
fails; that failure must be collected, not left in a task nobody awaits
(asyncio's "Task exception was never retrieved" in the replica's log).
"""
import asyncio
import gc

import pytest

pytestmark = pytest.mark.usefixtures('io_loop')


@pytest.mark.gen_test(timeout=60)
async def test_stop_during_a_journal_read_leaves_no_unretrieved_task_error(database, make_sidecar):
    sc = await make_sidecar(database)
    errors = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context.get('message', '')))
    blocker = database.connect(autocommit=False)
    try:
        blocker.execute('LOCK TABLE crm_realtime.journal IN ACCESS EXCLUSIVE MODE')
        database.execute("SELECT pg_catalog.pg_notify('crm_realtime', '')")
        for _ in range(100):     # the listener's read is now waiting for the lock
            waiting = database.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'crm-realtime listener' AND wait_event_type = 'Lock'")[0][0]
            if waiting:
                break
            await asyncio.sleep(0.05)
        assert waiting, 'the listener never started its read'
        await sc.stop()
    finally:
        blocker.rollback()
        blocker.close()
    for _ in range(3):
        await asyncio.sleep(0.2)
        gc.collect()
    loop.set_exception_handler(previous)
    assert [e for e in errors if 'never retrieved' in e] == []
