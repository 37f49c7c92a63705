# make demo: set everything up, then run acc on the shipped model and data.
# make test: set everything up, then run the whole test suite.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test setup system-deps clean

setup: $(STAMP)

# torch==2.13.0 goes first and alone: any other spec pulls a multi-GB CUDA build.
# onnx2torch declares torchvision, so it is installed without its dependencies.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (acc needs Python 3.11)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps onnx2torch==1.5.15
	touch $(STAMP)

# Debian packages the ARM path needs (cross linker, emulator, rootfs builder); root only.
system-deps:
	@missing=""; \
	command -v aarch64-linux-gnu-g++ >/dev/null || missing="$$missing g++-aarch64-linux-gnu"; \
	command -v qemu-aarch64-static >/dev/null || missing="$$missing qemu-user-static"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	command -v file >/dev/null || missing="$$missing file"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "warning: missing$$missing (ARM tests will be skipped)"; fi; \
	fi

demo: setup
	$(VENV)/bin/acc demo

test: setup system-deps
	$(PY) -m pytest

clean:
	rm -rf $(VENV) demo_out .pytest_cache
