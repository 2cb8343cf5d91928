"""Application-side code: what runs beside a Service Gateway, not in it.

Modules: `client` (the DMSC client library over the SG's local socket),
`http_proxy` and `http_backend` (adapters for unmodified HTTP clients and
servers).
Imports the data plane's codec and SPA's service identity only.
"""
