# Prism: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

help:
	@echo "make run      install what is needed, build (release), start a gateway and two processors"
	@echo "make test     install what is needed, build, run every test (Swift, C client, system)"
	@echo "make build    debug build of everything, including the C client"
	@echo "make bench    the benchmark harness with its peers: pyvips, Pillow, thumbor (Benchmarks/README.md)"
	@echo "make soak     e2e at 4 uploads in flight for SOAK_MINUTES (10): RSS slope per process, failed uploads"
	@echo "make fuzz     libFuzzer on the frame decoder, spec planner, connection state machine (10M runs each)"
	@echo "make protos   regenerate Sources/PrismProto from Protos/"

deps:
	scripts/install-deps.sh

test-deps:
	scripts/install-deps.sh --test
	python3 scripts/make_test_images.py

build: deps
	swift build
	$(MAKE) -s -C Sources/prism-call

test: test-deps
	swift build --build-tests
	$(MAKE) -s -C Sources/prism-call
	swift test --skip-build
	FUZZ_SECONDS=20 FUZZ_CONFIG=debug scripts/fuzz.sh
	python3 -m pytest -q Tests/system

run: deps
	scripts/run-local.sh

protos:
	scripts/gen-protos.sh

bench-deps:
	scripts/install-deps.sh --bench
	python3 scripts/make_test_images.py

bench: bench-deps
	swift build -c release --product prism-processor
	swift build -c release --product prism-gateway
	swift build -c release --product prism-bench
	python3 Benchmarks/run.py

SOAK_MINUTES ?= 10
soak: bench-deps
	swift build -c release --product prism-processor
	swift build -c release --product prism-gateway
	python3 Benchmarks/run.py --soak $(SOAK_MINUTES)

fuzz: deps
	scripts/fuzz.sh

.PHONY: help deps test-deps bench-deps build test run protos bench soak fuzz
