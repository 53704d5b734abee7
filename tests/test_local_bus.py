"""The local bus against a real bridge process and real worker processes."""

from __future__ import annotations

from collections.abc import Callable

from conftest import BridgeProcess, WorkerProcess

CHANNELS = "orders.paid,orders.refunded,users.created"


def test_one_publisher_eight_subscribers_in_order_exactly_once(
    bridge: BridgeProcess, workers: Callable[..., WorkerProcess]
) -> None:
    total = 10_000
    subscribers = [
        workers(
            "subscriber.py",
            "--dir", str(bridge.directory),
            "--worker", f"sub-{n}",
            "--kind", "sync" if n % 2 else "async",
            "--count", str(total),
        )
        for n in range(8)
    ]  # fmt: skip
    pattern = workers(
        "subscriber.py",
        "--dir", str(bridge.directory),
        "--worker", "pattern-sub",
        "--pattern", "orders.*",
        "--idle", "3",
    )  # fmt: skip
    for worker in [*subscribers, pattern]:
        worker.expect_line("READY")
    publisher = workers(
        "publisher.py", "--dir", str(bridge.directory), "--count", str(total), "--channels", CHANNELS
    )
    publisher.expect_line("DONE", timeout=60)
    expected = [[CHANNELS.split(",")[i % 3], {"i": i}] for i in range(total)]
    for worker in subscribers:
        result = worker.result()
        assert result["missed"] == 0, (worker.process.args, result["gaps"][:5])
        assert result["events"] == expected  # all, in order, none twice
    matching = pattern.result()
    assert matching["events"] == [e for e in expected if e[0].startswith("orders.")]
    counters = bridge.counters()
    assert counters["accepted"] == total + 1  # and the publisher's flush marker
    assert counters["rejected_malformed"] == counters["rejected_oversized"] == 0
