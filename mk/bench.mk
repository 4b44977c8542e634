# container-desktop-relay: `make bench` (included by the Makefile; needs its venv/system targets).
#   make bench        full run: direct, OpenSSH and relay chains, 3 rounds (a few minutes)
#   make bench-quick  one small round (under a minute)
# BENCH_JSON=path writes the JSON document as well.
BENCH_JSON ?= bench.json
BENCH_FLAGS ?=

.PHONY: bench bench-quick

bench: system venv
	$(BIN)/python -m container_desktop_relay bench --json $(BENCH_JSON) $(BENCH_FLAGS)

bench-quick: system venv
	$(BIN)/python -m container_desktop_relay bench --quick --json $(BENCH_JSON) $(BENCH_FLAGS)
