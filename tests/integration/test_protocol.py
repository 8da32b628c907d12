"""The learner protocol through the real daemon: Welcome, acks, Status,
resume, take-over and every close code the network layer gives."""

import time

from conftest import Learner, learner_token, make_token, pb, run


def test_welcome_and_acks(daemon):
    async def scenario():
        c = await Learner.connect(daemon)
        w = await c.hello()
        assert len(w.session_id) == 32
        assert w.heartbeat_interval_ms == 10000
        assert c.last_ack == 1
        for _ in range(3):
            await c.heartbeat()
            st = await c.expect("status")
            assert c.last_ack == c.seq
            assert st.state in (pb.UNVERIFIED, pb.ACTIVE)
        await c.close()
    run(scenario())


def test_anything_before_hello_is_4401(daemon):
    async def scenario():
        c = await Learner.connect(daemon)
        await c.heartbeat()
        assert await c.closed_code() == 4401
    run(scenario())
