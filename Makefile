# idleguard — run `make help` for the targets.
GO      ?= go
PKGS    := ./...
BROWSER_TESTS := tests/browser

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: run
run: ## Run the provider with the embedded demo configuration (SQLite file idleguard.db).
	$(GO) run ./cmd/idleguard serve

.PHONY: demo
demo: ## Run the provider and three sample apps on localhost (see README).
	$(GO) run ./cmd/idleguard demo

.PHONY: test
test: test-go test-browser ## Run every test: Go (with -race) and the browser library in headless Chromium.

.PHONY: test-go
test-go: ## Run the Go tests with the race detector (PostgreSQL: a throwaway server, or IDLEGUARD_TEST_POSTGRES=URL).
	$(GO) test -race -count=1 $(PKGS)

.PHONY: test-postgres
test-postgres: ## Run only the tests that need PostgreSQL, failing if it is unavailable.
	IDLEGUARD_REQUIRE_POSTGRES=1 $(GO) test -race -count=1 -run 'Postgres|Commands|KeysRotate|Migrate|Database|Killed|MissingServer|StopsAndStarts' ./migrations ./session/... ./cmd/idleguard

.PHONY: test-browser
test-browser: ## Run the browser tests (Playwright driving /usr/bin/chromium).
	@if [ ! -x /usr/bin/chromium ] || ! command -v npm >/dev/null; then \
		if [ -n "$$IDLEGUARD_REQUIRE_BROWSER" ]; then echo "browser tests: /usr/bin/chromium or npm is missing (apt-get install chromium npm)"; exit 1; fi; \
		echo "browser tests skipped: /usr/bin/chromium or npm is missing (apt-get install chromium npm)"; exit 0; fi; \
	cd $(BROWSER_TESTS) && npm ci --no-audit --no-fund --loglevel=error && npm test

.PHONY: lint
lint: ## go vet, staticcheck and a gofmt check.
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

.PHONY: fmt
fmt: ## Format the Go code.
	gofmt -w $$(git ls-files '*.go')

.PHONY: bench
bench: ## Benchmarks, a 10s load run, and PostgreSQL against SQLite (2 replicas, 100k ends, 1M no-op sweep; about 10 min; figures in README).
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(or $(BENCHTIME),1s) ./session ./oidc
	$(GO) test -run '^$$' -bench 'SweepNothingDue' -benchmem -benchtime 1000x ./activity
	$(GO) test -run '^$$' -bench 'SweepEndIdle/10k' -benchtime 1x ./activity
	$(GO) run ./cmd/idleguard-load -duration 10s
	$(GO) test -run '^$$' -bench 'PostgresSweepNothingDue/1M' -benchtime 2000x -timeout 20m ./activity
	$(GO) test -run '^$$' -bench 'PostgresSweepEndIdle/100k' -benchtime 1x -timeout 20m ./activity
	$(GO) run ./cmd/idleguard-load -database postgres -replicas 2 -compare-sqlite -mix introspect=100 -concurrency 8 -duration 10s
	$(GO) run ./cmd/idleguard-load -database postgres -replicas 2 -compare-sqlite -mix heartbeat=100 -duration 10s
	$(GO) run ./cmd/idleguard-load -database postgres -replicas 2 -duration 10s
