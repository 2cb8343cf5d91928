"""The data plane, sans I/O: what a forwarder does with one packet.

Modules: `names` (hierarchical names), `wire` (the codec and the header layout),
`pipeline` (validation -> flow table -> strategy -> FIB -> actions), one module
per table (`facetable`, `flows`, `strategy`, `fib`, `rib`, with the shared
longest-prefix match in `lpm`), `counters`, `admission` (the registration
check interface), `hostmap` (DNS-style host names <-> prefixes) and
`scapy_layers` (the same format for Scapy users).

Everything here is a pure object fed with (bytes, time) that returns actions:
no sockets, clocks, threads or processes. It imports nothing from the rest of
the forwarder (runtime, routing, spa, mgmt, apps); they import it.
"""
