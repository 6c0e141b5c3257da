# kohaku-data: every entry point a user or CI needs.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
KDATA   := $(BIN)/kdata
RECIPE  ?= pipelines/demo.toml
DEMO    ?= demo
DATASETS ?= datasets
WORKERS ?=

.PHONY: venv demo test wheel-smoke bench dataset verify browser-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# constraints.txt pins the versions the tests and the byte-identical outputs were checked with
# (shard and parquet bytes depend on Pillow/libwebp/polars versions; dataset.lock records them).
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# open_clip's own tokenizer is the reference of tests/test_caption_tokens.py; its package
	# requires torchvision and timm, which nothing here uses: install it alone.
	$(BIN)/pip install -q --no-deps open-clip-torch==3.3.0
	touch $@

venv: $(VENV)/.installed

# The Ray tests start a real two-node cluster and do not mix with pytest-xdist: own invocation.
test: venv
	$(BIN)/python -m pytest -n 2 --dist loadfile --ignore-glob='tests/test_ray*.py'
	$(BIN)/python -m pytest -p no:xdist $(wildcard tests/test_ray*.py)

# The wheel in a fresh venv, every command run outside the checkout (CI runs it too).
wheel-smoke:
	bash .ci/wheel-smoke

# make bench [QUICK=1] [ONLY="images captions"]
bench: venv
	$(BIN)/python benchmarks/run_all.py $(if $(QUICK),--quick) $(ONLY)

# A small realistic sample through the whole pipeline.
$(DEMO)/danbooru.db: | venv
	$(KDATA) sample $(DEMO) --posts 300 --seed 0 --migrate

demo: venv $(DEMO)/danbooru.db
	$(KDATA) build --db $(DEMO)/danbooru.db --src $(DEMO)/raw --recipe pipelines/demo.toml --out $(DEMO)/shards
	$(KDATA) verify $(DEMO)/shards
	@echo
	@echo "demo done: shards, manifest.parquet and index.json are in $(DEMO)/shards/ (DB: $(DEMO)/danbooru.db)"
	@echo "next:"
	@echo "  look at the card:  $(DEMO)/shards/README.md (plots in $(DEMO)/shards/card/)"
	@echo "  browse it:         $(KDATA) serve --db $(DEMO)/danbooru.db --datasets $(DEMO) --src $(DEMO)/raw  (then open http://127.0.0.1:8000/)"
	@echo "  export it:         $(KDATA) export $(DEMO)/shards $(DEMO)/kohya --format kohya  (or kohya-ft, hf)"
	@echo "  a recipe of yours: cp pipelines/demo.toml my.toml; $(KDATA) recipe check my.toml --db $(DEMO)/danbooru.db --src $(DEMO)/raw"

# make dataset RECIPE=pipelines/NAME.toml [DB=...] [SRC=...]: builds into $(DATASETS)/NAME-VERSION/
dataset: venv
	KDATA_DATASETS=$(DATASETS) $(KDATA) build --recipe $(RECIPE) --db $(or $(DB),$(DEMO)/danbooru.db) \
		--src $(or $(SRC),$(DEMO)/raw) $(if $(WORKERS),--workers $(WORKERS))

verify: venv
	@for d in $(DATASETS)/*/; do $(KDATA) verify $$d || exit 1; done

# make diff A=datasets/NAME-1 B=datasets/NAME-2 [JSON=1]: what changed between two builds (exit 1 if anything)
diff: venv
	@test -n "$(A)" -a -n "$(B)" || (echo "usage: make diff A=DATASET B=DATASET [JSON=1]" >&2; exit 2)
	$(KDATA) diff $(A) $(B) $(if $(JSON),--json)

# The browse page in a real headless browser (Debian's chromium; installed here if missing).
browser-test: venv
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/python -m pytest tests/test_browse.py -v

clean:
	rm -rf $(DEMO) $(DATASETS) .pytest_cache
