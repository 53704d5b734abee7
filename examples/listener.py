"""An asyncio worker: counts ticks from every host and pings their senders."""

from __future__ import annotations

import asyncio
import signal
import time

from circus_events import AsyncBus, Event, Gap


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def report_gap(gap: Gap) -> None:
        print(f"missed {gap.missed} event(s) from {gap.origin} on {gap.channel}", flush=True)

    async with AsyncBus(on_gap=report_gap) as bus:

        @bus.on("demo.tick")
        async def on_tick(event: Event) -> None:
            if event.data["n"] % 3 == 0:  # now and then, ping the ticker directly
                await bus.send_to(event.origin, "demo.ping", {"sent": time.time()})

        @bus.on("demo.pong")
        async def on_pong(event: Event) -> None:
            # The answer to our ping, from whichever host the ticker runs on.
            took = (time.time() - event.data["to"]["sent"]) * 1000
            await bus.publish(
                "demo.roundtrip", {"with": event.origin, "host": event.host, "ms": round(took, 2)}
            )

        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
