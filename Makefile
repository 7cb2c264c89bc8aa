# meter: `make serve` runs it, `make test` tests it. Both set everything up on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
# Builds live outside the clone so that a new clone reuses them (RocksDB takes minutes to compile).
export CARGO_TARGET_DIR ?= $(HOME)/.cache/meter/target
DATA_DIR ?= .meter-data
# Where `make serve` listens: `make serve PORT=9000 HOST=0.0.0.0`.
HOST ?= 127.0.0.1
PORT ?= 8080
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# $(call apt,CHECK,PACKAGE): installs the Debian PACKAGE unless the shell command CHECK succeeds.
apt = @$(1) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(2); }

.PHONY: help
help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: system-deps
system-deps: ## Debian packages the build needs (clang compiles RocksDB, libclang makes its bindings)
	@if ! command -v clang++ >/dev/null || ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1; then \
		echo "installing clang and libclang-dev (RocksDB's C++ and its bindings need them)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq clang libclang-dev; \
	fi

$(VENV)/.deps: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Every cargo and maturin run holds this lock: clones that share CARGO_TARGET_DIR build one after the other instead of
# breaking each other's build (maturin copies the library cargo just linked, which another clone's cargo may rewrite).
LOCKED = mkdir -p $(CARGO_TARGET_DIR) && flock $(CARGO_TARGET_DIR)/.meter-build.lock
EXTENSION := python/meter/_core.abi3.so
RUST_SOURCES := Cargo.toml Cargo.lock $(shell find crates -name '*.rs' -o -name Cargo.toml)

# The extension is rebuilt only when a Rust source changed, so a warm `make serve` starts the server in seconds. The
# package itself is installed (editable: python/ is on the path) by the first build and again when pyproject.toml
# changes; other builds only compile the extension in place.
$(EXTENSION): $(VENV)/.deps pyproject.toml $(RUST_SOURCES)
	$(LOCKED) env VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$$PATH \
		maturin develop --release -q $$([ $(VENV)/bin/meter -nt pyproject.toml ] && echo --skip-install)
	@touch $@ $(VENV)/bin/meter

.PHONY: build
build: system-deps $(EXTENSION) ## Build the Rust engine into the virtualenv (release), when a Rust source changed

# pytest runs on two workers, one test file per worker at a time (a file's module fixtures, its server, stay in one
# process): tests wait on servers, disks and subprocesses as much as they compute. The schemathesis module runs apart,
# in one process: under pytest-xdist 3.8 only 12 of its 108 generated tests ran, and nothing said so.
.PHONY: test
test: lint build ## Lint, build, then run the Rust and Python test suites
	$(call apt,command -v strace,strace)  # tests/test_outcome_unknown.py makes fsync fail with it
	$(call apt,PATH=$$PATH:/usr/sbin command -v nats-server,nats-server)  # tests/nats_cluster.py (it is in /usr/sbin)
	$(call apt,command -v chromium && command -v chromedriver,chromium chromium-driver)  # tests/test_console_browser.py
	$(LOCKED) cargo test --release -p meter_core
	$(PY) -m pytest -n 2 --dist loadfile --ignore=tests/test_bad_input.py
	$(PY) -m pytest tests/test_bad_input.py

FUZZ_EXAMPLES ?= 200
.PHONY: fuzz
fuzz: build ## The bad-input run at length (FUZZ_EXAMPLES per operation; make test runs a few), every failure listed
	METER_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) METER_FUZZ_STEPS=50 METER_FUZZ_KEEP_GOING=1 METER_FUZZ_REPORT=fuzz-report.json \
		$(PY) -m pytest tests/test_bad_input.py -s

.PHONY: serve
serve: build ## Build, then run the HTTP API on .meter-data at 127.0.0.1:8080 (change with DATA_DIR=, HOST=, PORT=)
	$(VENV)/bin/meter serve --data-dir $(DATA_DIR) --host $(HOST) --port $(PORT)

.PHONY: bench-core
bench-core: build ## Engine benchmark: 1000-event batches, fsync, 5% duplicates
	$(PY) benches/bench_core.py

.PHONY: bench-http
bench-http: build ## HTTP benchmark: meter serve driven by wrk over loopback, with a receive-and-discard ceiling
	$(call apt,command -v wrk,wrk)
	$(PY) benches/bench_http.py

$(VENV)/.peers: $(VENV)/.deps benches/requirements-peers.txt
	$(PY) -m pip install -q --disable-pip-version-check -r benches/requirements-peers.txt
	touch $@

.PHONY: bench-peers
bench-peers: build $(VENV)/.peers ## meter against PostgreSQL, DuckDB and ClickHouse (chdb) on the same workloads
	$(call apt,command -v wrk,wrk)
	$(call apt,ls /usr/lib/postgresql/*/bin/initdb,postgresql)
	$(PY) benches/bench_peers.py

.PHONY: bench-export
bench-export: build ## Parquet export: usage rows per second for 10M rows, with a Parquet-write ceiling
	$(PY) benches/bench_export.py

.PHONY: bench-query-ingest
bench-query-ingest: build ## Usage queries (one customer, 30 days, every 50 ms) while one thread ingests at full speed
	$(PY) benches/bench_query_ingest.py

.PHONY: bench-usage-json
bench-usage-json: build ## Usage answers: 88k rows as JSON (engine-encoded, and the old per-row way) against CSV
	$(PY) benches/bench_usage_json.py

.PHONY: bench-pricing
bench-pricing: build ## Pricing: a month rated for 1M subscriptions x 5 usage charges from Parquet, with a read ceiling
	$(PY) benches/bench_pricing.py

SOAK_MINUTES ?= 30
.PHONY: bench-soak
bench-soak: build ## Soak: 80% of the measured maximum for SOAK_MINUTES (30; 120 for the long one): RSS, disk, p99 flat
	$(PY) benches/bench_soak.py --minutes $(SOAK_MINUTES)

.PHONY: bench-open
bench-open: build ## Restart with 10^9 identities in the dedup window: open time, then ingest against them (42 GB of disk)
	$(PY) benches/bench_open.py

.PHONY: bench-invoice-run
bench-invoice-run: build ## The whole invoice run of a month for 1M subscriptions, built through the engine and catalog
	$(PY) benches/bench_invoice_run.py

.PHONY: bench-money
bench-money: build ## Money events: an invoice finalized (taxed), paid and refunded, each one synced write; peer: a bare synced write
	$(PY) benches/bench_money.py

.PHONY: bench-revenue
bench-revenue: build ## Revenue recognition: a year's close (12 month ends) for 100k subscriptions; ceiling: its Parquet read
	$(PY) benches/bench_revenue.py

.PHONY: bench-cluster
bench-cluster: build ## The cluster (3 NATS nodes, 2 workers, 1 edge) on this box beside one meter serve; takeover time; scaling model
	$(call apt,command -v wrk,wrk)
	$(call apt,PATH=$$PATH:/usr/sbin command -v nats-server,nats-server)
	$(PY) benches/bench_cluster.py

.PHONY: bench-corrections
bench-corrections: build ## Corrections: cancels and amends of 1 to 1000 events of a 200k-event day; ceiling: a read of that day
	$(PY) benches/bench_corrections.py

.PHONY: bench-entitlements
bench-entitlements: build ## Entitlement checks over HTTP (10k/s, 10k customers) while ingesting at 70% of the maximum; lag
	$(call apt,command -v wrk,wrk)
	$(PY) benches/bench_entitlements.py

.PHONY: bench
bench: bench-core bench-http bench-peers bench-export bench-pricing bench-invoice-run bench-money bench-revenue bench-entitlements bench-usage-json bench-query-ingest ## All benchmarks

.PHONY: lint
lint: system-deps $(VENV)/.deps ## ruff (check, format --check), mypy --strict, cargo fmt --check and clippy: zero findings
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(VENV)/bin/mypy --strict  # the files are pyproject's [tool.mypy] files: python/meter
	cargo fmt --all -- --check
	$(LOCKED) cargo clippy --release -p meter_core --all-targets -- -D warnings
	$(LOCKED) cargo clippy --release -p meter_core --features python -- -D warnings
