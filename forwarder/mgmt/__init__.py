"""The management plane: how people, scripts and the SCSC see and steer a forwarder.

Modules: `endpoint` (JSON/Prometheus over HTTP on the node's management
socket), `ctl` (the command-line client, `python -m forwarder.ctl`),
`scsc_agent` (telemetry to and policy from the Scheduling Center), `rules`
(the SCSC rule format, shared with the controller). Imports every plane
below it; nothing below imports it.
"""
