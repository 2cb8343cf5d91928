# DMSC lab. Every target needs root except help; see README.md.
PY := .venv/bin/python
ARGS ?=
BENCH_SCRIPTS := $(sort $(wildcard bench/bench_*.py))

.DEFAULT_GOAL := help
.PHONY: help setup test test-unit lab demo bench bench-forwarder bench-chain bench-routing bench-lab bench-scsc bench-peers bench-wire clean distclean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## install apt packages and the .venv (idempotent; a no-op when nothing changed)
	@bash scripts/setup.sh

test: setup ## run every test (unit + network namespace + Mininet); needs root
	$(PY) -m pytest tests -ra $(ARGS)

test-unit: setup ## run only the tests that need no namespaces or Mininet
	$(PY) -m pytest tests -ra -m "not netns and not mininet" $(ARGS)

lab: setup ## start the fat-tree lab (make lab ARGS="...")
	$(PY) topologies/fat_tree.py $(ARGS)

demo: setup ## start the fat-tree lab and run its scripted demo
	$(PY) topologies/fat_tree.py --demo $(ARGS)

bench: setup ## run every bench/bench_*.py (each writes bench/results/<name>.json)
	@test -n "$(BENCH_SCRIPTS)" || { echo "bench: no bench/bench_*.py scripts found" >&2; exit 1; }
	@mkdir -p bench/results
	@set -e; for s in $(BENCH_SCRIPTS); do echo "bench: $$s"; $(PY) $$s; done

bench-forwarder: setup ## one hop: Python forwarder, eBPF fast path, kernel forwarding -> bench/results/forwarder.json
	@mkdir -p bench/results
	$(PY) bench/bench_forwarder.py $(ARGS)

bench-chain: setup ## one SR hop: Python vs eBPF vs kernel (eBPF and kernel side by side), paths of 2 and 8 SRs -> bench/results/chain.json
	@mkdir -p bench/results
	$(PY) bench/bench_chain.py $(ARGS)

bench-routing: setup ## failover and convergence on a k=4 fat tree -> bench/results/routing.json
	@mkdir -p bench/results
	$(PY) bench/bench_routing.py $(ARGS)

bench-lab: setup ## fat_tree.py --up-only for k=4 and k=8: up/converged times -> bench/results/lab.json
	@mkdir -p bench/results
	$(PY) bench/bench_lab.py $(ARGS)

bench-peers: setup ## DMSC vs FRR (OSPF+BFD) on the k=4 fat tree, same cut -> bench/results/peers.json (ARGS="--k 8")
	@mkdir -p bench/results
	$(PY) bench/bench_peers.py $(ARGS)

bench-scsc: setup ## SCSC policy push to 36 real / 200 simulated forwarders -> bench/results/scsc.json
	@mkdir -p bench/results
	$(PY) bench/bench_scsc.py $(ARGS)

bench-wire: setup ## decode rate of the wire fuzz corpus and of valid packets -> bench/results/wire.json
	@mkdir -p bench/results
	$(PY) bench/bench_wire.py $(ARGS)

.PHONY: exp-failure exp-load exp-telemetry exp-sidecar experiments
exp-failure: setup ## failure experiment on the fat tree -> results/failure/latest (QUICK=1: < 2 min)
	$(PY) -m experiments.failure $(if $(filter 1 yes true,$(QUICK)),--quick) $(ARGS)

exp-load: setup ## open-loop rate sweep, SCSC adaptive weights on/off -> results/load/latest (QUICK=1)
	$(PY) -m experiments.load $(if $(filter 1 yes true,$(QUICK)),--quick) $(ARGS)

exp-telemetry: setup ## per-hop telemetry vs tc/nftables ground truth, its cost -> results/telemetry/latest
	$(PY) -m experiments.telemetry $(if $(filter 1 yes true,$(QUICK)),--quick) $(ARGS)

exp-sidecar: setup ## services in pods: direct vs nginx/HAProxy sidecars vs DMSC adapters vs DMSC L4 -> results/sidecar/latest (QUICK=1)
	$(PY) -m experiments.sidecar $(if $(filter 1 yes true,$(QUICK)),--quick) $(ARGS)

experiments: setup ## all four experiments, one after another (QUICK=1 for the short runs)
	@set -e; for e in failure load telemetry sidecar; do \
		echo "experiments: $$e"; $(PY) -m experiments.$$e $(if $(filter 1 yes true,$(QUICK)),--quick); done

clean: ## remove namespaces, links and processes left by crashed runs (by their records)
	@if [ -x $(PY) ]; then $(PY) -m topologies.clean $(ARGS); else python3 -m topologies.clean $(ARGS); fi

distclean: clean ## clean, then remove .venv
	rm -rf .venv *.egg-info
