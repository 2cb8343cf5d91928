"""Link-state routing between Service Routers (docs/protocol.md section 12).

Modules: `linkstate` (adjacencies, LSAs, flooding: the sans-IO router),
`spf` (shortest paths, ECMP, loop-free alternates), `backoff` (RFC 8405
timers). Imports only the data plane (names, wire, rib); time is passed in.
"""
