# Two commands on a fresh Debian 12 machine:
#   make run    build .venv, install mdtwist, run it in the foreground on etc/mdtwist.toml
#               (make run CONFIG=FILE: on another configuration file)
#   make test   build .venv, install the test peers (Debian packages) when missing, lint, type-check, test

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
LINTED := mdtwist tests twisted tools $(wildcard bench)
CONFIG ?= etc/mdtwist.toml

.PHONY: run test lint typecheck trial peers clean

# PYTHONWARNINGS=ignore: setuptools' banner about the "compat" editable mode (which keeps the
# twistd plugin in twisted/plugins/ visible) says nothing the user can act on.
$(STAMP): setup.cfg pyproject.toml requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet -e . --config-settings editable_mode=compat \
	  -r requirements-dev.txt
	touch $@

run: $(STAMP) var/tls/cert.pem
	mkdir -p var
	$(VENV)/bin/twistd --nodaemon --pidfile= --logger mdtwist.logging.text_observer mdtwist --config $(CONFIG)

peers:
	sh tools/install-peers.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

typecheck: $(STAMP)
	$(VENV)/bin/mypy

trial: $(STAMP) peers
	$(PY) tools/trial_summary.py tests

test: $(STAMP) peers lint typecheck trial

clean:
	rm -rf $(VENV) _trial_temp* .mypy_cache .ruff_cache *.egg-info

# A self-signed certificate for the demo's STARTTLS (never used outside "make run").
var/tls/cert.pem:
	mkdir -p var/tls
	openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=mail.example.test" \
	  -addext "subjectAltName=DNS:mail.example.test,DNS:localhost,IP:127.0.0.1" \
	  -keyout var/tls/key.pem -out var/tls/cert.pem 2>/dev/null
	chmod 600 var/tls/key.pem
