# Kameng: `make run` serves the demo on SQLite with jobs inline; `make test` runs the whole suite on real
# PostgreSQL and Redis (started here when they are down). Both set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 5000
DEMO_PASSWORD ?= kameng123
SANDBOX_KEY ?= kameng-sandbox-demo-key
IDV_PORT ?= 8701
PAYOUT_PORT ?= 8702
SUPPLIER_PORT ?= 8703
SIM_KEY ?= kameng-demo-simulator-key
PG_URL ?= postgresql://postgres@127.0.0.1:5432
TEST_DATABASE_URL ?= $(PG_URL)/kameng_test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
export FLASK_APP := run

.PHONY: run test install install-dev services browser migrate demo lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt requirements.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

migrate: install
	FAB_CREATE_DB=False FAB_UPDATE_PERMS=False $(BIN)/flask db upgrade

demo: migrate
	$(BIN)/flask kameng demo --password "$(DEMO_PASSWORD)" --sandbox-key "$(SANDBOX_KEY)" \
	  --supplier-url http://127.0.0.1:$(SUPPLIER_PORT) --supplier-key "$(SIM_KEY)"

run: demo
	@echo ""
	@echo "Kameng is at http://127.0.0.1:$(PORT)/  (SQLite: instance/kameng.db, jobs run inline)"
	@echo "Logins (password $(DEMO_PASSWORD)): admin, manager, support, agent1 (总代), agent2 (区域代理), agent3 (普通代理), member1 (会员)"
	@echo "Storefront: http://127.0.0.1:$(PORT)/shop/  (sandbox payment channel key: $(SANDBOX_KEY))"
	@echo ""
	@echo "Simulators: identity provider on 127.0.0.1:$(IDV_PORT), payout bank on 127.0.0.1:$(PAYOUT_PORT),"
	@echo "            upstream supplier (直充) on 127.0.0.1:$(SUPPLIER_PORT); periodic jobs run on a thread"
	@echo ""
	@export IDV_PROVIDER_URL=http://127.0.0.1:$(IDV_PORT) IDV_PROVIDER_KEY=$(SIM_KEY) \
	        PAYOUT_URL=http://127.0.0.1:$(PAYOUT_PORT) PAYOUT_KEY=$(SIM_KEY) \
	        PUBLIC_BASE_URL=http://127.0.0.1:$(PORT); \
	  $(BIN)/flask kameng idv-sim --port $(IDV_PORT) & idv=$$!; \
	  $(BIN)/flask kameng payout-sim --port $(PAYOUT_PORT) & payout=$$!; \
	  $(BIN)/flask kameng supplier-sim --port $(SUPPLIER_PORT) --key "$(SIM_KEY)" --latency-ms 300 & upstream=$$!; \
	  trap 'kill $$idv $$payout $$upstream 2>/dev/null' EXIT INT TERM; \
	  INLINE_SCHEDULER=true $(BIN)/flask run --host 127.0.0.1 --port $(PORT) --no-debugger --no-reload

# PostgreSQL and Redis: this machine starts them before a session; CI may find them down.
services:
	@pg_isready -h 127.0.0.1 -p 5432 -q || { \
	  command -v pg_ctlcluster >/dev/null || { apt-get update -qq && apt-get install -y -qq postgresql; }; \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; \
	  for i in $$(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done; }
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { \
	  command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }; \
	  mkdir -p /var/lib/redis /var/log/redis; \
	  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
	    --dir /var/lib/redis --logfile /var/log/redis/ci.log; \
	  for i in $$(seq 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done; }
	@pg_isready -h 127.0.0.1 -p 5432
	@redis-cli -h 127.0.0.1 -p 6379 ping

# Debian's Chromium for Playwright (its own browser download does not work here) and a CJK font.
browser:
	@{ [ -x /usr/bin/chromium ] && fc-list 2>/dev/null | grep -qi "noto sans cjk"; } || { \
	  apt-get update -qq && apt-get install -y -qq chromium fonts-noto-cjk; }

test: install-dev services browser
	KAMENG_TEST_DATABASE_URL="$(TEST_DATABASE_URL)" KAMENG_TEST_REDIS_URL="$(TEST_REDIS_URL)" \
	  $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .

bench: install-dev services
	DATABASE_URL="$(PG_URL)/kameng_bench" REDIS_URL="redis://127.0.0.1:6379/14" $(BIN)/python bench/orders.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) instance/kameng.db

# docs/screenshots/*.png: admin screens, the agent portal and every dashboard in Debian's Chromium on a fresh SQLite
# demo with a year of history, its direct products served by the upstream simulator the tool starts on a free port
# (SCREENSHOT_ARGS="--orders 5000 --only dash-gmv" to narrow it).
.PHONY: screenshots
screenshots: install-dev services browser
	$(BIN)/python tools/screenshots.py $(SCREENSHOT_ARGS)

# The English catalog (app/translations/en): extract (babel.cfg), add FAB menu names collected at runtime, fill the
# English from tools/translations_en.py and compile the .mo; fails while any msgid has no English.
.PHONY: translations
translations: install
	$(BIN)/python tools/translations.py
