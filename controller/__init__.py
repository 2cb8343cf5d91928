"""The DMSC Scheduling Center (SCSC): an os-ken application; see docs/scsc.md.

    python -m controller --southbound HOST:PORT --rest HOST:PORT

Modules: app (the OSKenApp), southbound (agents' TCP protocol), northbound
(REST), policy (the pure policy engine), state (what the forwarders reported),
simulate (agents without a data plane), rest_client (for tests and
benchmarks; the SCSC process itself is started by topologies.apps.ScscApp). Importing the package imports nothing heavy: os-ken is loaded
by app and __main__ only.
"""
