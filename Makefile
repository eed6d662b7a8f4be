# `make test` is the one command that takes a fresh Debian/Ubuntu machine to a
# passing suite: system packages, Python packages, lint, tests.

PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The real RTSP test camera (gst-rtsp-server under Debian's python3), the real
# browser (Debian's chromium decodes H.264; Playwright's own builds don't), and
# systemd-analyze for the unit file.
APT_PACKAGES = \
	gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gst-1.0 python3-gi \
	gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly \
	chromium systemd nginx openssl

.PHONY: test deps system-deps python-deps lint unit bench

test: deps lint
	$(PYTHON) -m pytest

deps: system-deps python-deps

system-deps:
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(APT_PACKAGES)

python-deps:
	$(PYTHON) -m pip install -q -e '.[test]'

lint:
	$(PYTHON) -m ruff check cxrelay tests benchmarks
	$(PYTHON) -m mypy cxrelay

unit:
	$(PYTHON) -m pytest tests/unit

bench:
	$(PYTHON) benchmarks/ingest_latency.py
