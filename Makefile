# qrexec-connect: build, test, install.
CARGO ?= cargo

.PHONY: all test demo
all:
	$(CARGO) build --release

# The whole test suite (what .ci/run runs).
test:
	$(CARGO) test --workspace

# Forward a local port through qrexec-connect-tcp with the qrexec stand-in.
demo:
	bash tests/demo
