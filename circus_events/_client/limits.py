"""The client's limits and defaults, each with what it costs (pure: constants only)."""

from __future__ import annotations

from typing import Final

#: How long ``publish`` waits for room in the queue to the bridge before raising.
DEFAULT_PUBLISH_TIMEOUT: Final = 5.0
#: How long ``sync()`` and ``flush()`` wait by default (seconds).
DEFAULT_WAIT_TIMEOUT: Final = 5.0
#: The longest timeout a call accepts (seconds: a year); None waits forever.
#: Past it, thread and timer waits overflow the platform's time types.
MAX_TIMEOUT: Final = 365 * 86_400.0
#: Messages queued towards the bridge (while it is down or slow) before
#: ``publish`` waits. Frames, each one message or a batch of at most
#: BATCH_MAX_BYTES: 20k x ~150 B is 3 MB, 20k full batches 320 MB.
DEFAULT_SEND_QUEUE: Final = 20_000
#: ...and bytes sent that the bridge has not read yet before ``publish`` waits
#: (``credit``): what bounds that queue when its frames are large. 64 MiB is
#: the whole frame queue at 3 KiB a message, 64 messages of the 1 MiB most.
DEFAULT_SEND_QUEUE_BYTES: Final = 64 * 1024 * 1024
#: Bytes of sent messages kept until the bridge confirms Redis has them
#: (stream mode), to send again to a restarted bridge. Past it the oldest
#: are let go (counted in ``stats()["released"]``): a publisher is never
#: held up by it. 64 MiB is about 3 s of a 2,000 msg/s stream's worth of
#: time-outs at 10 kB a message, or 200k small messages.
DEFAULT_UNCONFIRMED_MAX_BYTES: Final = 64 * 1024 * 1024
#: How often (s) ``flush()`` looks whether everything sent is confirmed.
CONFIRM_POLL: Final = 0.005
#: Events buffered per subscription iterator. Past it (or past
#: DEFAULT_QUEUE_MAX_BYTES) that subscription alone drops what comes and is
#: told (a ``queue_full`` gap): a forgotten iterator never stalls the
#: handlers and the other subscriptions of its bus. 100k events of 100 bytes
#: are ~29 MB, under the byte bound: a reader that falls behind in a burst
#: has room (10k, the old figure, lost events in the fan-out benchmark on a
#: loaded machine once readers no longer held up the receiver).
DEFAULT_QUEUE_SIZE: Final = 100_000
#: Bytes buffered per subscription iterator: each event counts as its share
#: of the frame it came in (payload and a small header) plus
#: EVENT_OVERHEAD_BYTES, so this bounds what a forgotten subscription costs.
#: An empty queue always takes one event, however large.
DEFAULT_QUEUE_MAX_BYTES: Final = 32 * 1024 * 1024
#: What a queued event costs besides its payload bytes (the Event, the
#: payload's bytes object, the queue slot): tracemalloc measured 277 B an
#: event for 100-byte payloads taken from a batch.
EVENT_OVERHEAD_BYTES: Final = 176
#: Channel names remembered as valid, so publish validates each once.
MAX_CACHED_CHANNELS: Final = 4096
#: Seconds between repeats of an unanswered sync request.
SYNC_RETRY: Final = 0.2
#: Seconds before an unanswered flush marker is sent again.
FLUSH_RETRY: Final = 1.0
#: How often (s) a publish waiting for credit looks whether the bus closed,
#: or tries again to send a marker that met a full pipe.
CREDIT_RETRY: Final = 0.1
#: Seconds of silence before a history request is sent again, and in all.
HISTORY_RETRY: Final = 3.0
HISTORY_TIMEOUT: Final = 30.0
#: While history loads, the receiving side wakes this often (s) to ask again.
HISTORY_POLL: Final = 0.5
#: Frames read per wake-up before anything else gets a turn.
RECEIVE_BATCH: Final = 1000

#: A publish this soon (seconds) after the previous one continues a burst...
#: At 5,000 msg/s (200 us apart) every message still goes on its own at once.
HOT_GAP: Final = 20e-6
#: ...and once BURST_MIN publishes have followed the first, messages are held to
#: travel in batches. A short catch-up (a paced publisher woken late sends a
#: few at once) still goes message by message: holding those cost 2-3x in p99.
BURST_MIN: Final = 8
#: A burst that resumes within this many seconds of the last batch (the
#: publisher was only preempted) batches again at once: sending BURST_MIN
#: single frames after every preemption cost a tenth of the throughput.
BURST_MEMORY: Final = 0.01
#: Bounds of one batch frame (the receiver's work per frame, and latency).
BATCH_MAX_COUNT: Final = 256
BATCH_MAX_BYTES: Final = 16384
#: A batch still filling (its publisher goes on publishing) is sent by the bus's
#: receiver thread only once it is this old (seconds). Sending whatever was
#: held at each look cut batches to a third of their size at full speed, and
#: per-frame work everywhere grew with it.
BATCH_MAX_WAIT: Final = 0.001

#: Messages ZeroMQ queues for this worker before the bridge drops (a gap).
RECEIVE_HWM: Final = 20_000
#: Reconnect quickly to a restarted bridge (ipc: no network to spare).
RECONNECT_IVL_MS: Final = 100
RECONNECT_IVL_MAX_MS: Final = 1000
#: On close, queued publications (and a held batch) may take this long to
#: reach the bridge: ``close()`` waits at most about this long for them.
PUBLISH_LINGER: Final = 1.0
PUBLISH_LINGER_MS: Final = int(PUBLISH_LINGER * 1000)
#: How long ``Bus.close()`` waits for its receiver thread, which is only
#: busy past a few milliseconds while a handler runs, before it lets the
#: held messages leave anyway; the ZeroMQ context still ends only once that
#: thread has closed its sockets (after the handler returns).
RECEIVER_JOIN_TIMEOUT: Final = 5.0
