# qrexec-connect: build, test, install.
#
#   make && sudo make install               client and service side, /usr/local
#   sudo make install-client PREFIX=/usr    a template's client side only
#   make install DESTDIR=/tmp/stage         staged, for packaging
#   make && make deb rpm                    .deb and .rpm in target/packages
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
MANDIR ?= $(PREFIX)/share/man
DOCDIR ?= $(PREFIX)/share/doc/qrexec-connect
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
# mdoc(7) sources, which man(1) reads as they are: nothing to build.
MANPAGES := $(wildcard man/*.[1-8])
POLICY_EXAMPLES := $(wildcard policy-examples/*.policy)
# ssh_config drop-ins (`Host *.qube`), relative to ssh/.
SSH_CONFIGS := $(notdir $(wildcard ssh/*.conf))

# Packages (`make deb rpm`): the version from Cargo.toml, the package
# release from `rel` (both read by qubes-builder too), files reproducible
# from the time of the last commit.
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
REL := $(shell cat rel)
PKGDIR ?= target/packages
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || stat -c %Y Cargo.toml)
export SOURCE_DATE_EPOCH

.PHONY: all test demo bench install install-client install-service install-connectnfs install-binary \
	install-man install-doc install-package uninstall deb rpm binary-built
all:
	$(CARGO) build --release

# The whole test suite (what .ci/run runs).
test:
	$(CARGO) test --workspace

install: install-client install-service

# Checked before anything is installed.
binary-built:
	@test -x $(BINARY) || { echo "$(BINARY) is missing: run make first" >&2; exit 1; }

install-binary: binary-built install-man
	$(INSTALL) -d $(DESTDIR)$(BINDIR)
	$(INSTALL) -m 0755 $(BINARY) $(DESTDIR)$(BINDIR)/qrexec-connect

# Every page goes with the binary: each side's applets are in it.
install-man: binary-built
	for page in $(MANPAGES); do \
		section=$${page##*.}; \
		$(INSTALL) -d $(DESTDIR)$(MANDIR)/man$$section && \
		$(INSTALL) -m 0644 $$page $(DESTDIR)$(MANDIR)/man$$section/ || exit 1; \
	done

# The README, changelog, licence and dom0 policy examples (packages only).
install-doc:
	$(INSTALL) -d $(DESTDIR)$(DOCDIR)/policy-examples
	$(INSTALL) -m 0644 README.md CHANGELOG.md $(DESTDIR)$(DOCDIR)/
	$(INSTALL) -m 0644 debian/copyright $(DESTDIR)$(DOCDIR)/copyright
	$(INSTALL) -m 0644 $(POLICY_EXAMPLES) $(DESTDIR)$(DOCDIR)/policy-examples/

# What both packages hold (debian/rules and the rpm spec run this too): the
# template layout, the documentation, the man pages compressed as both
# distributions ship them (gzip -n: no name or time inside).
install-package:
	$(MAKE) --no-print-directory install install-doc PREFIX=/usr
	for page in $(MANPAGES); do \
		gzip -9nf $(DESTDIR)/usr/share/man/man$${page##*.}/$${page#man/} || exit 1; \
	done

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
	for page in $(MANPAGES); do \
		rm -f $(DESTDIR)$(MANDIR)/man$${page##*.}/$${page#man/}; \
	done
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

# The .deb, from the built binary (`make` first): staged by install-package,
# its control file generated from debian/control and debian/changelog by
# dpkg-gencontrol, packed by dpkg-deb with files owned by root and times
# clamped to SOURCE_DATE_EPOCH. No maintainer scripts: nothing to enable,
# start or restart (the units are the user's to enable).
deb: binary-built
	@test "$$(dpkg-parsechangelog -S Version)" = "$(VERSION)-$(REL)" || \
		{ echo "debian/changelog is not at $(VERSION)-$(REL)" >&2; exit 1; }
	rm -rf $(PKGDIR)/deb
	mkdir -p $(PKGDIR)/deb/root/DEBIAN
	$(MAKE) --no-print-directory install-package DESTDIR=$(abspath $(PKGDIR)/deb/root)
	# The ssh_config drop-in is a configuration file: an edit survives an
	# upgrade, and purge removes it.
	for conf in $(SSH_CONFIGS); do echo $(SSHCONFIGDIR)/$$conf; done > $(PKGDIR)/deb/root/DEBIAN/conffiles
	dpkg-gencontrol -pqrexec-connect -P$(PKGDIR)/deb/root \
		-f$(PKGDIR)/deb/files -T$(PKGDIR)/deb/substvars
	dpkg-deb --root-owner-group -Zxz --build $(PKGDIR)/deb/root \
		$(PKGDIR)/qrexec-connect_$(VERSION)-$(REL)_amd64.deb

# The .rpm, from the same built binary: rpm_spec/qrexec-connect.spec.in
# filled in as qubes-builder does, with the repository as its source tree.
rpm: binary-built
	rm -rf $(PKGDIR)/rpm
	mkdir -p $(PKGDIR)/rpm
	sed -e 's/@VERSION@/$(VERSION)/g' -e 's/@REL@/$(REL)/g' -e '/@CHANGELOG@/d' \
		rpm_spec/qrexec-connect.spec.in > $(PKGDIR)/rpm/qrexec-connect.spec
	rpmbuild -bb --quiet \
		--define '_topdir $(abspath $(PKGDIR)/rpm)' \
		--define '_rpmdir $(abspath $(PKGDIR))' \
		--define '_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm' \
		--define 'qrexec_connect_tree $(CURDIR)' \
		--define 'qrexec_connect_binary $(abspath $(BINARY))' \
		--define '_buildhost reproducible' \
		--define 'use_source_date_epoch_as_buildtime 1' \
		--define 'clamp_mtime_to_source_date_epoch 1' \
		--define '__os_install_post %{nil}' \
		$(PKGDIR)/rpm/qrexec-connect.spec
