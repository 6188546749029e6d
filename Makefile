# The two commands of the README:
#   make demo   set everything up, then run the main job (detect on a real OSCD city pair) into out/demo
#   make test   set everything up (venv, QGIS), then run the whole test suite (what .ci/run calls)
VENV ?= .venv
PY := $(VENV)/bin/python
CD := $(VENV)/bin/changedet
SHARED ?= ../shared
OSCD := $(SHARED)/data/oscd/Onera Satellite Change Detection dataset - Images
CITY ?= brasilia
OUT ?= out/demo

.PHONY: setup demo test lint typecheck bench clean

setup:
	CHANGEDET_VENV=$(VENV) scripts/setup_env.sh

demo: setup
	mkdir -p $(OUT)
	$(CD) stack "$(OSCD)/$(CITY)/imgs_1" -o $(OUT)/$(CITY)_before.tif --overwrite
	$(CD) stack "$(OSCD)/$(CITY)/imgs_2" -o $(OUT)/$(CITY)_after.tif --overwrite
	$(CD) check $(OUT)/$(CITY)_before.tif $(OUT)/$(CITY)_after.tif
	$(CD) detect $(OUT)/$(CITY)_before.tif $(OUT)/$(CITY)_after.tif -o $(OUT)/$(CITY) --overwrite --qgis-project
	@echo "demo: outputs in $(OUT)/$(CITY)"; ls -l $(OUT)/$(CITY)

test: setup
	scripts/setup_qgis.sh
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check changedet tests scripts

typecheck: setup
	$(VENV)/bin/mypy

clean:
	rm -rf out .pytest_cache
