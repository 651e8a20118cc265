# make up   — install what is missing, then start a local cluster on 127.0.0.1 (Ctrl-C stops it):
#             etcd and 3 Redis replicas; cache nodes join it once the node exists (issue #4).
# make test — install what is missing, then lint and run the whole test suite.
# Both are idempotent and quick when nothing changed.

VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
SYSDEPS := /usr/bin/redis-server /usr/bin/etcd /usr/bin/etcdctl /usr/bin/wrk /usr/sbin/nft /usr/sbin/ip

.PHONY: up test test-fast lint bench bench-store sysdeps venv clean

up: sysdeps venv
	$(VENV)/bin/cachegrid up --nodes 3 --replicas 3 --data-dir .cluster

test: sysdeps venv lint
	$(PY) -m pytest -q -p no:cacheprovider

# The suite without the slow fault/load scenarios, for quick iteration.
test-fast: sysdeps venv
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: sysdeps venv
	$(PY) bench/harness.py --seconds 5

bench-store: sysdeps venv
	$(PY) bench/store_bench.py

sysdeps: $(SYSDEPS)

$(SYSDEPS):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server etcd-server etcd-client wrk nftables iproute2

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,load]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .cluster build src/*.egg-info
