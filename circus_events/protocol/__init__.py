"""The sans-IO core: envelope, codecs, topics, sequence tracking, interest.

Nothing here opens a socket, reads a clock or the environment: bytes and
numbers come in, values and bytes go out. The bridge and the clients are thin
I/O layers over these modules.
"""

from .codec import Codec, decode_payload, encode_payload, parse_codec
from .envelope import (
    FLAG_DIRECT,
    FLAG_HOST_ONLY,
    FLAG_REPLAY,
    NODE_ID_BYTES,
    REPLAY_TOKEN_BYTES,
    Envelope,
    decode_frame,
    encode_frame,
    frame_from_redis,
    frame_to_redis,
    split_topic,
)
from .interest import (
    FLUSH_CHANNEL,
    HISTORY_END_CHANNEL,
    HISTORY_REQUEST,
    SYNC_CHANNEL,
    SYNC_REQUEST,
    HistoryRequest,
    InterestChange,
    InterestTable,
    build_history_request,
    parse_history_request,
    parse_sync_request,
)
from .sequence import DUPLICATE, SequenceTracker
from .topics import (
    MAX_CHANNEL_BYTES,
    Pattern,
    SubscriptionTopic,
    channel_topic,
    inbox_channel,
    inbox_topic,
    parse_subscription_topic,
    validate_channel,
    validate_worker_id,
)

__all__ = [
    "DUPLICATE",
    "FLAG_DIRECT",
    "FLAG_HOST_ONLY",
    "FLAG_REPLAY",
    "FLUSH_CHANNEL",
    "HISTORY_END_CHANNEL",
    "HISTORY_REQUEST",
    "MAX_CHANNEL_BYTES",
    "NODE_ID_BYTES",
    "REPLAY_TOKEN_BYTES",
    "SYNC_CHANNEL",
    "SYNC_REQUEST",
    "Codec",
    "Envelope",
    "HistoryRequest",
    "InterestChange",
    "InterestTable",
    "Pattern",
    "SequenceTracker",
    "SubscriptionTopic",
    "build_history_request",
    "channel_topic",
    "decode_frame",
    "decode_payload",
    "encode_frame",
    "encode_payload",
    "frame_from_redis",
    "frame_to_redis",
    "inbox_channel",
    "inbox_topic",
    "parse_codec",
    "parse_history_request",
    "parse_subscription_topic",
    "parse_sync_request",
    "split_topic",
    "validate_channel",
    "validate_worker_id",
]
