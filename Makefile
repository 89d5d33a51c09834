# qrexec-connect: build, test, install.
#
#   make && sudo make install               client and service side, /usr/local
#   sudo make install-client PREFIX=/usr    a template's client side only
#   make install DESTDIR=/tmp/stage         staged, for packaging
#
# PREFIX=/usr/local (the default) is what persists in an app qube; PREFIX=/usr
# belongs in a template. The qrexec services go where qrexec-agent looks:
# /usr/local/etc/qubes-rpc (also persistent in app qubes) under /usr/local,
# /etc/qubes-rpc under /usr, $(PREFIX)/etc/qubes-rpc otherwise.
CARGO ?= cargo
INSTALL ?= install

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
USERUNITDIR ?= $(PREFIX)/lib/systemd/user
ifeq ($(PREFIX),/usr)
QREXECDIR ?= /etc/qubes-rpc
else
QREXECDIR ?= $(PREFIX)/etc/qubes-rpc
endif
# ssh reads only its compiled-in /etc/ssh (Debian, Fedora), whatever PREFIX is;
# an app qube resets /etc at boot, so `ssh QUBE.qube` wants a template install.
SSHCONFIGDIR ?= /etc/ssh/ssh_config.d

# What `make` builds; install never builds, so that `sudo make install` does
# not run cargo as root.
BINARY ?= target/x86_64-unknown-linux-gnu/release/qrexec-connect

# The names the binary is installed under: links/bin/ beside it in BINDIR,
# links/qubes-rpc/ in QREXECDIR (qrexec-agent starts a service by its file
# name, so each is a symlink to $(BINDIR)/qrexec-connect).
CLIENT_LINKS := $(notdir $(wildcard links/bin/*))
SERVICE_LINKS := $(notdir $(wildcard links/qubes-rpc/*))
# User units and drop-ins, relative to units/.
UNITS := $(patsubst units/%,%,$(wildcard units/*.socket units/*.service units/*.d/*.conf))
DROPIN_DIRS := $(patsubst units/%,%,$(wildcard units/*.d))
# ssh_config drop-ins (`Host *.qube`), relative to ssh/.
SSH_CONFIGS := $(notdir $(wildcard ssh/*.conf))

.PHONY: all test demo bench install install-client install-service install-connectnfs install-binary uninstall
all:
	$(CARGO) build --release

# The whole test suite (what .ci/run runs).
test:
	$(CARGO) test --workspace

install: install-client install-service

install-binary:
	@test -x $(BINARY) || { echo "$(BINARY) is missing: run make first" >&2; exit 1; }
	$(INSTALL) -d $(DESTDIR)$(BINDIR)
	$(INSTALL) -m 0755 $(BINARY) $(DESTDIR)$(BINDIR)/qrexec-connect

install-client: install-binary
	for name in $(CLIENT_LINKS); do \
		ln -sfn qrexec-connect $(DESTDIR)$(BINDIR)/$$name || exit 1; \
	done
	for dir in . $(DROPIN_DIRS); do \
		$(INSTALL) -d $(DESTDIR)$(USERUNITDIR)/$$dir || exit 1; \
	done
	for unit in $(UNITS); do \
		sed 's|@BINDIR@|$(BINDIR)|g' units/$$unit > $(DESTDIR)$(USERUNITDIR)/$$unit.tmp && \
		chmod 0644 $(DESTDIR)$(USERUNITDIR)/$$unit.tmp && \
		mv -f $(DESTDIR)$(USERUNITDIR)/$$unit.tmp $(DESTDIR)$(USERUNITDIR)/$$unit || exit 1; \
	done
	$(INSTALL) -d $(DESTDIR)$(SSHCONFIGDIR)
	for conf in $(SSH_CONFIGS); do \
		sed 's|@BINDIR@|$(BINDIR)|g' ssh/$$conf > $(DESTDIR)$(SSHCONFIGDIR)/$$conf.tmp && \
		chmod 0644 $(DESTDIR)$(SSHCONFIGDIR)/$$conf.tmp && \
		mv -f $(DESTDIR)$(SSHCONFIGDIR)/$$conf.tmp $(DESTDIR)$(SSHCONFIGDIR)/$$conf || exit 1; \
	done

# The predecessor's name for installing qubes.ConnectNFS (seed 001's README);
# it installs the whole service side, qubes.ConnectNFS included.
install-connectnfs: install-service

install-service: install-binary
	$(INSTALL) -d $(DESTDIR)$(QREXECDIR)
	for name in $(SERVICE_LINKS); do \
		ln -sfn $(BINDIR)/qrexec-connect $(DESTDIR)$(QREXECDIR)/$$name || exit 1; \
	done

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/qrexec-connect
	for name in $(CLIENT_LINKS); do rm -f $(DESTDIR)$(BINDIR)/$$name; done
	for name in $(SERVICE_LINKS); do rm -f $(DESTDIR)$(QREXECDIR)/$$name; done
	for unit in $(UNITS); do rm -f $(DESTDIR)$(USERUNITDIR)/$$unit; done
	for conf in $(SSH_CONFIGS); do rm -f $(DESTDIR)$(SSHCONFIGDIR)/$$conf; done
	for dir in $(DROPIN_DIRS); do \
		if [ -d $(DESTDIR)$(USERUNITDIR)/$$dir ]; then \
			rmdir --ignore-fail-on-non-empty $(DESTDIR)$(USERUNITDIR)/$$dir; \
		fi; \
	done

# Forward a local port through qrexec-connect-tcp with the qrexec stand-in.
demo:
	bash tests/demo

# The benchmark against socat, Accept=yes and the floors (bench/README.md).
bench:
	bench/run
