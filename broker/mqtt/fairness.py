"""A connection's turn on the event loop: how long it may handle buffered packets before the others.

A connection that finds whole packets already buffered handles them without awaiting anything, so a client that
pipelines thousands of packets would keep the loop to itself (every other connection, REST and timers wait).
`protocol.MqttProtocol._pump` looks at the clock every `CHECK_EVERY` packets, and once the connection has had the
loop for `SLICE_S` it yields (the rest is handled in the next loop iteration): the other ready connections run,
then it continues. Cheap packets (a QoS 0 PUBLISH to nobody) rarely reach the slice, so the throughput of a
well-behaved burst is unchanged.
"""

from __future__ import annotations

__all__ = ["CHECK_EVERY", "SLICE_S"]

CHECK_EVERY = 32  # packets between two looks at the clock
SLICE_S = 0.002  # the loop time one connection may take before it yields
