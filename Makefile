# Inspection Station. `make run` and `make test` set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run demo test bench lint system-deps venv clean screenshot package package-test

run: system-deps venv
	@if [ -z "$$DISPLAY$$WAYLAND_DISPLAY" ] && [ -z "$$QT_QPA_PLATFORM" ]; then \
	  echo "No display: starting the station on a virtual screen (xvfb-run)."; \
	  xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/station demo; \
	else $(BIN)/station demo; fi

demo: run

test: system-deps venv
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q

bench: system-deps venv
	@for b in receive detect view frames browser reliability; do \
	  QT_QPA_PLATFORM=offscreen $(BIN)/station bench $$b --json | tail -n 1 || exit 1; done

lint: venv
	$(BIN)/lint-imports

screenshot: system-deps venv
	bash packaging/screenshot-live.sh docs/screenshot-main.png

# The frozen app (PyInstaller, packaging/station.spec) and its .deb, both in dist/.
package: system-deps venv $(VENV)/.package-stamp
	$(BIN)/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller packaging/station.spec
	PYTHON=$(BIN)/python DEB_XZ_LEVEL=$(DEB_XZ_LEVEL) bash packaging/build-deb.sh dist/inspection-station dist

# What CI runs after `make test`: build the package (fast compression), unpack it and run the
# frozen --self-test with an empty environment.
package-test:
	$(MAKE) package DEB_XZ_LEVEL=1
	bash packaging/test-package.sh

$(VENV)/.package-stamp: pyproject.toml $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,package]'
	@touch $@

system-deps:
	@bash packaging/system-deps.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
