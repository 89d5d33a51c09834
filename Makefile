# qrexec-connect: build, test, install.
CARGO ?= cargo

.PHONY: all test
all:
	$(CARGO) build --release

# The whole test suite (what .ci/run runs).
test:
	$(CARGO) test --workspace
