# The two commands of the README: `make app` and `make test`.
PY := .venv/bin/python
PORT ?= 8501

.PHONY: setup app test lint bench-cpu

setup:
	@bash scripts/setup.sh

app: setup
	$(PY) -m core prepare
	$(PY) -m streamlit run app.py --server.address localhost --server.port $(PORT)

test: setup
	@bash scripts/browser.sh
	$(PY) -m ruff check core pages app.py tests bench
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check core pages app.py tests bench
	$(PY) -m ruff format --check core pages app.py tests bench
