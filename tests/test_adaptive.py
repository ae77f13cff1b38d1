"""
Adaptive polling (LiveTail(adaptive=True), EXPLORERD_ADAPTIVE_POLLING): for a
node that cannot push, the tail learns the chain's block time from the
timestamps it publishes and polls when the next block is due, and a little
more often while it is late, besides its fixed tick.

The fake node of tests/test_livetail.py makes a block every 12 s of
timestamps; the tail's clock is a C{Clock} and its wall clock that Clock, so
"published before the next tick" is exact.
"""

import pytest_twisted
from twisted.internet.task import Clock

from tests.test_livetail import T0, RecordingHub, blocks_of, env, sample  # noqa: F401 (env: fixture)


async def setup(env, adaptive=True):
    node = await env.fake_node()
    hub = RecordingHub()
    clock = Clock()
    clock.advance(T0 + 12 + 0.5)  # just after block 1's timestamp
    node.grow(1)
    tail = env.tail(env.rpc(node.url), hub, clock=clock, poll_interval=1.0, adaptive=adaptive,
                    now=clock.seconds)
    tail.startService()
    await tail.whenIdle()
    return node, hub, tail, clock


async def run_until(tail, clock, when, grow=None):
    """Advance the clock in steps to C{when}, each poll done before the next; C{grow} at its time."""
    while clock.seconds() < when:
        step = min([c.getTime() for c in clock.getDelayedCalls()] + [when]) - clock.seconds()
        clock.advance(max(step, 0))
        await tail.whenIdle()
        if grow is not None and clock.seconds() >= grow[0]:
            grow[1]()
            grow = None


async def learned(node, tail, clock):
    """Blocks 2-4 made on time (12 s apart) and published by the tick: the block time is learned."""
    for height in (2, 3, 4):
        await run_until(tail, clock, T0 + 12 * height)
        node.grow(1)
    await run_until(tail, clock, T0 + 12 * 4 + 1)
    assert tail.published["height"] == 4
    assert tail.expected_block_time == 12
    assert tail.health()["expected_block_time"] == 12


@pytest_twisted.ensureDeferred
async def test_a_block_is_polled_for_when_it_is_due_not_at_the_next_tick(env):
    node, hub, tail, clock = await setup(env)
    await learned(node, tail, clock)
    # Ticks come at x.5 s; block 5 is due at T0 + 60.0.
    await run_until(tail, clock, T0 + 60 - 0.01)
    node.grow(1)
    clock.advance(0.01)
    await tail.whenIdle()
    assert tail.published["height"] == 5
    assert clock.seconds() == T0 + 60  # half a second before the next tick


@pytest_twisted.ensureDeferred
async def test_a_late_block_is_polled_for_every_quarter_interval_for_half_a_block_time(env):
    node, hub, tail, clock = await setup(env)
    await learned(node, tail, clock)
    await run_until(tail, clock, T0 + 60)
    calls = sample(tail, "explorer_tail_rpc_calls_total", method="eth_blockNumber")
    # Block 5 is due at 60.0 and comes at 61.1: seen at 61.25, not at the 61.5 tick.
    await run_until(tail, clock, T0 + 61.1)
    node.grow(1)
    await run_until(tail, clock, T0 + 61.25)
    assert tail.published["height"] == 5
    # While late, polls every 0.25 s (the ticks included); none of that for block 6.
    assert sample(tail, "explorer_tail_rpc_calls_total", method="eth_blockNumber") - calls == 5
    calls = sample(tail, "explorer_tail_rpc_calls_total", method="eth_blockNumber")
    await run_until(tail, clock, T0 + 84)  # block 6, due at 72, never comes: steps stop at 78
    assert sample(tail, "explorer_tail_rpc_calls_total", method="eth_blockNumber") - calls == (
        # the ticks 61.5 .. 83.5, the poll when it is due at 72.0, then the 0.25 s steps
        # 72.25 .. 78.25 (6 s late: half a block time) that are not ticks (x.5)
        23 + 1 + (25 - 6))
    assert blocks_of(hub.events)[-1][0] == 5


@pytest_twisted.ensureDeferred
async def test_without_adaptive_polling_only_the_tick_polls(env):
    node, hub, tail, clock = await setup(env, adaptive=False)
    await learned(node, tail, clock)
    await run_until(tail, clock, T0 + 60 - 0.01)
    node.grow(1)
    await run_until(tail, clock, T0 + 60.4)
    assert tail.published["height"] == 4
    await run_until(tail, clock, T0 + 60.5)
    assert tail.published["height"] == 5
