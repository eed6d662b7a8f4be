# The README's two commands, on a fresh Debian machine whose only Python is Debian's own:
#   make demo   installs cxrelay and runs the demo camera at http://localhost:8080/
#   make test   installs what the tests need and runs lint and the whole suite (.ci/run)
# Debian's python3 refuses `pip install` into itself (PEP 668, "externally-managed-
# environment"), so both build a virtual environment, .venv, from /usr/bin/python3 and
# install into that; nothing is ever installed into the system interpreter. The GStreamer
# test camera still runs under /usr/bin/python3 itself (tests/camera/harness.py): it needs
# the `gi` bindings, which come from Debian, not from PyPI.

SYSTEM_PYTHON := /usr/bin/python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian puts some tools the tests run in sbin (tc, nginx), which a user's PATH lacks.
export PATH := $(PATH):/usr/local/sbin:/usr/sbin:/sbin
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

# python3-venv: Debian's python3 makes no virtual environment without it.
# The real RTSP test camera: gst-rtsp-server under Debian's python3 (gstreamer1.0-libav
# decodes in GStreamer pipelines). Real browsers from Debian, never downloaded: chromium
# (Playwright), firefox-esr (puppeteer-core over WebDriver BiDi), WebKitGTK
# (webkit2gtk-driver, in an xvfb display). nodejs runs puppeteer-core and the player's
# size check. systemd for systemd-analyze on the unit file, nginx and openssl for the
# proxy and TLS examples, iproute2 for links shaped with tc in network namespaces.
APT_PACKAGES = \
	python3-venv \
	gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gst-1.0 python3-gi \
	gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav \
	chromium firefox-esr webkit2gtk-driver xvfb \
	nodejs \
	systemd nginx openssl iproute2

# pip installs into .venv once, and again when setup.cfg or setup.py change.
INSTALLED := $(VENV)/.installed
INSTALLED_TEST := $(VENV)/.installed-test

.PHONY: demo test deps system-deps python-deps node-deps venv lint unit bench

demo: $(INSTALLED)
	$(VENV)/bin/cxrelay serve --demo

test: deps lint
	$(PYTHON) -m pytest

deps: system-deps python-deps node-deps

system-deps:
	$(APT_GET) update -q
	$(APT_GET) install -y -q $(APT_PACKAGES)
# NodeSource's nodejs bundles npm and conflicts with Debian's npm package.
	command -v npm >/dev/null || $(APT_GET) install -y -q npm

python-deps: $(INSTALLED_TEST)

# npm packages for the browser tests (puppeteer-core), exactly as package-lock.json says;
# never a browser download.
node-deps:
	PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund

venv: $(VENV)/bin/pip

# `make demo` on a fresh machine: python3-venv is all it needs from apt.
$(VENV)/bin/pip:
	$(SYSTEM_PYTHON) -c 'import ensurepip' 2>/dev/null || \
		{ $(APT_GET) update -q && $(APT_GET) install -y -q python3-venv; }
	$(SYSTEM_PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

# Editable: .venv runs this checkout, so an edit needs no reinstall.
$(INSTALLED): setup.cfg setup.py | $(VENV)/bin/pip
	$(PYTHON) -m pip install -q -e .
	touch $@

$(INSTALLED_TEST): setup.cfg setup.py | $(VENV)/bin/pip
	$(PYTHON) -m pip install -q -e '.[test]'
	touch $@ $(INSTALLED)

lint: python-deps
	$(PYTHON) -m ruff check cxrelay tests benchmarks
	$(PYTHON) -m mypy cxrelay

unit: python-deps
	$(PYTHON) -m pytest tests/unit

bench: python-deps
	$(PYTHON) benchmarks/ingest_latency.py
