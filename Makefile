# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3

.PHONY: demo test lint setup

setup:
	./scripts/setup

demo:
	$(PYTHON) -m pip install -q --disable-pip-version-check -e .
	mailflow-probe demo

lint: setup
	ruff check probe tests bench
	mypy

test: lint
	$(PYTHON) -m pytest
