"""The node runtime: one forwarder process around the data plane.

Modules: `daemon` (the event loop that owns the pipeline and the timers),
`faces` (AF_PACKET, UDP and local Unix sockets behind faces), `carrier`
(netlink link state). Imports the data plane, routing, SPA and the node
configuration (`forwarder.config`); never the management plane, which is
handed the daemon when the process is put together (`forwarder.__main__`).
"""
