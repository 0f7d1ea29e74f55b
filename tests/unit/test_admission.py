"""Admission control and priorities, pure asyncio: no Ray, no HTTP."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from serving.errors import InvalidInput, QueueTimeout, Unavailable
from serving.gateway.admission import (
    PREEMPTED,
    QUEUE_FULL,
    QUEUE_TIMEOUT,
    AdmissionControl,
    ModelAdmission,
    Slot,
    default_capacity,
)
from serving.protocol.priority import Priority, parse_priority
from serving.schema.base import Admission, Scaling

STAT, URGENT, ROUTINE = Priority.STAT, Priority.URGENT, Priority.ROUTINE


def run(coro):
    return asyncio.run(coro)


async def settle() -> None:
    for _ in range(5):  # let callbacks and woken tasks run; no timing involved
        await asyncio.sleep(0)


def test_priority_order_and_parsing() -> None:
    assert STAT > URGENT > ROUTINE
    assert parse_priority(None, None) is ROUTINE
    assert parse_priority("", None) is ROUTINE
    assert parse_priority(" STAT ", None) is STAT
    assert parse_priority("Urgent", None) is URGENT
    with pytest.raises(InvalidInput) as err:
        parse_priority("asap; patient=Jane", None)
    assert err.value.status_code == 400
    assert "stat, urgent, routine" in err.value.message
    assert "Jane" not in err.value.message  # the client's text is never echoed


def test_priority_is_capped_by_the_tenant() -> None:
    routine_only = SimpleNamespace(name="clinic", max_priority="routine")
    urgent_max = SimpleNamespace(name="ward", max_priority="urgent")
    assert parse_priority("stat", routine_only) is ROUTINE
    assert parse_priority("stat", urgent_max) is URGENT
    assert parse_priority("routine", urgent_max) is ROUTINE
    assert parse_priority("stat", SimpleNamespace(name="er", max_priority="stat")) is STAT


def test_free_slots_are_granted_at_once_and_released() -> None:
    async def main() -> None:
        adm = ModelAdmission("m", capacity=2, max_queued=4, queue_timeout_s=30)
        a = await adm.acquire(ROUTINE)
        b = await adm.acquire(STAT)
        assert adm.in_flight == 2 and adm.queued == 0
        a.release()
        a.release()  # idempotent
        assert adm.in_flight == 1
        with b:
            pass
        assert adm.in_flight == 0

    run(main())


def test_waiters_are_served_highest_priority_first_fifo_within() -> None:
    async def main() -> None:
        adm = ModelAdmission("m", capacity=1, max_queued=10, queue_timeout_s=30)
        first = await adm.acquire(ROUTINE)
        order: list[str] = []

        async def wait(name: str, p: Priority) -> None:
            with await adm.acquire(p):
                order.append(name)
                await asyncio.sleep(0)

        tasks = []
        for name, p in [("r1", ROUTINE), ("u1", URGENT), ("s1", STAT), ("r2", ROUTINE),
                        ("s2", STAT)]:
            tasks.append(asyncio.create_task(wait(name, p)))
            await settle()
        assert adm.queued == 5
        first.release()
        await asyncio.gather(*tasks)
        assert order == ["s1", "s2", "u1", "r1", "r2"]
        assert adm.in_flight == 0 and adm.queued == 0

    run(main())


def test_full_queue_evicts_the_newest_lowest_priority_waiter() -> None:
    async def main() -> None:
        adm = ModelAdmission("m", capacity=1, max_queued=2, queue_timeout_s=30,
                             retry_after_s=2)
        held = await adm.acquire(ROUTINE)
        r_old = asyncio.create_task(adm.acquire(ROUTINE))
        await settle()
        r_new = asyncio.create_task(adm.acquire(ROUTINE))
        await settle()
        stat = asyncio.create_task(adm.acquire(STAT))
        await settle()
        with pytest.raises(Unavailable) as err:
            await r_new
        assert err.value.shed_reason == PREEMPTED and err.value.retry_after_s == 2
        assert not r_old.done() and not stat.done() and adm.queued == 2
        held.release()
        (await stat).release()  # stat goes before the older routine
        (await r_old).release()
        assert adm.in_flight == 0

    run(main())


def test_arrival_not_above_any_waiter_is_shed_at_once() -> None:
    async def main() -> None:
        adm = ModelAdmission("m", capacity=1, max_queued=1, queue_timeout_s=30)
        held = await adm.acquire(ROUTINE)
        queued_stat = asyncio.create_task(adm.acquire(STAT))
        await settle()
        for p in (ROUTINE, URGENT, STAT):  # none is above the queued stat: refused
            with pytest.raises(Unavailable) as err:
                await adm.acquire(p)
            assert err.value.shed_reason == QUEUE_FULL
        assert adm.queued == 1
        held.release()
        (await queued_stat).release()

    run(main())


def test_no_queue_sheds_when_busy() -> None:
    async def main() -> None:
        adm = ModelAdmission("m", capacity=1, max_queued=0, queue_timeout_s=30)
        held = await adm.acquire(ROUTINE)
        with pytest.raises(Unavailable):
            await adm.acquire(STAT)
        held.release()
        (await adm.acquire(STAT)).release()

    run(main())


def test_stat_is_never_shed_while_routine_is_admitted() -> None:
    """A random arrival mix: every shed stat saw a queue full of stat (no routine waiting)."""
    import random

    async def main() -> None:
        rng = random.Random(5)
        adm = ModelAdmission("m", capacity=2, max_queued=4, queue_timeout_s=30)
        admitted: list[Priority] = []
        shed: list[tuple[Priority, list[Priority]]] = []
        holders: list[Slot] = []

        async def arrive(p: Priority) -> None:
            snapshot = [w.priority for w in adm._heap if w.live]
            try:
                slot = await adm.acquire(p)
            except Unavailable:
                shed.append((p, snapshot))
                return
            admitted.append(p)
            holders.append(slot)

        tasks = []
        for _ in range(300):
            tasks.append(asyncio.create_task(
                arrive(STAT if rng.random() < 0.2 else ROUTINE)))
            await settle()
            if holders and rng.random() < 0.4:
                holders.pop(0).release()
                await settle()
        while holders or adm.queued:
            if holders:
                holders.pop(0).release()
            await settle()
        await asyncio.gather(*tasks)
        assert ROUTINE in admitted and any(p is ROUTINE for p, _ in shed)
        for p, queue in shed:
            if p is STAT:
                assert ROUTINE not in queue
        assert adm.in_flight == 0 and adm.queued == 0

    run(main())


def test_waiter_past_its_deadline_gets_504_and_never_runs() -> None:
    async def main() -> None:
        adm = ModelAdmission("m", capacity=1, max_queued=4, queue_timeout_s=0.05)
        held = await adm.acquire(ROUTINE)
        ran = []

        async def request() -> None:
            with await adm.acquire(STAT):
                ran.append(True)

        with pytest.raises(QueueTimeout) as err:
            await request()
        assert err.value.status_code == 504 and err.value.shed_reason == QUEUE_TIMEOUT
        assert ran == [] and adm.queued == 0
        held.release()
        assert adm.in_flight == 0  # the expired waiter did not take the slot

    run(main())


def test_caller_timeout_shortens_the_queue_deadline() -> None:
    async def main() -> None:
        adm = ModelAdmission("m", capacity=1, max_queued=4, queue_timeout_s=3600)
        held = await adm.acquire(ROUTINE)
        with pytest.raises(QueueTimeout):
            await adm.acquire(ROUTINE, timeout_s=0.02)
        held.release()

    run(main())


def test_cancelled_waiter_leaves_the_queue_and_capacity_is_kept() -> None:
    async def main() -> None:
        adm = ModelAdmission("m", capacity=1, max_queued=4, queue_timeout_s=30)
        held = await adm.acquire(ROUTINE)
        gone = asyncio.create_task(adm.acquire(STAT))
        await settle()
        assert adm.queued == 1
        gone.cancel()
        await settle()
        assert adm.queued == 0
        held.release()
        assert adm.in_flight == 0
        (await adm.acquire(ROUTINE)).release()

    run(main())


def test_waiter_cancelled_right_after_its_grant_passes_the_slot_on() -> None:
    async def main() -> None:
        adm = ModelAdmission("m", capacity=1, max_queued=4, queue_timeout_s=30)
        held = await adm.acquire(ROUTINE)
        gone = asyncio.create_task(adm.acquire(STAT))
        nxt = asyncio.create_task(adm.acquire(ROUTINE))
        await settle()
        held.release()  # grants `gone` ...
        gone.cancel()  # ... which is cancelled before it runs
        await settle()
        assert gone.cancelled()
        (await nxt).release()  # the slot reached the next waiter
        assert adm.in_flight == 0 and adm.queued == 0

    run(main())


def test_slot_is_released_on_error_in_the_call() -> None:
    async def main() -> None:
        adm = ModelAdmission("m", capacity=1, max_queued=0, queue_timeout_s=30)
        with pytest.raises(RuntimeError), await adm.acquire(ROUTINE):
            raise RuntimeError("model failed")
        assert adm.in_flight == 0

    run(main())


def test_forgotten_slot_is_returned_when_collected() -> None:
    async def main() -> None:
        adm = ModelAdmission("m", capacity=1, max_queued=0, queue_timeout_s=30)
        slot = await adm.acquire(ROUTINE)
        del slot  # e.g. a stream whose response never started
        await settle()
        assert adm.in_flight == 0

    run(main())


def test_capacity_comes_from_the_manifest() -> None:
    assert default_capacity(2, 16, 1) == 32
    assert default_capacity(2, 16, 3) == 11
    control = AdmissionControl(gateways=1, request_timeout_s=5)
    derived = SimpleNamespace(name="a", scaling=Scaling(max_replicas=3, max_ongoing_requests=4),
                              admission=Admission(queue_timeout_s=60))
    explicit = SimpleNamespace(name="b", scaling=Scaling(),
                               admission=Admission(max_concurrent=2, max_queued=1))
    a, b = control.get("a/1", derived), control.get("b/1", explicit)
    assert (a.capacity, a.queue_timeout_s) == (12, 5)  # capped by the request timeout
    assert (b.capacity, b.max_queued) == (2, 1)
    assert control.get("a/1", derived) is a
