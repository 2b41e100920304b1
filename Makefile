# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo demo-partial compare compare-deep compare-reproduce compare-backbones cluster-smoke test test-slow lint docs dry-run mlflow dashboard clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,ui]'
	touch $@

install: $(STAMP)

## make demo: run the default study pipeline end to end (data -> study -> evaluate -> report)
demo: $(STAMP)
	$(BIN)/snakemake --profile workflow/profiles/local
	@echo "report: results/cub-demo/report/index.html"

## make demo-partial: the partial fine-tuning study (trunk: partial), end to end, about 25 min on 2 cores
demo-partial: $(STAMP)
	$(BIN)/snakemake --profile workflow/profiles/local --configfile studies/cub-partial.yaml
	@echo "report: results/cub-partial/report/index.html"

## make compare: the fair comparison of mining strategies on real CUB and Cars196, one report over both
compare: $(STAMP)
	$(BIN)/snakemake --profile workflow/profiles/local --configfile workflow/compare.yaml
	@echo "report: results/report/cub-compare+cars-compare/index.html"

## make compare-deep: the same protocol where training moves the backbone (Lite0's last two stages)
compare-deep: $(STAMP)
	$(BIN)/snakemake --profile workflow/profiles/local --configfile workflow/compare-deep.yaml
	@echo "report: results/report/cub-compare-deep+cars-compare-deep/index.html"

## make compare-reproduce: make compare with every seed changed; bench/reproduce.py sets the verdicts side by side
compare-reproduce: $(STAMP)
	$(BIN)/snakemake --profile workflow/profiles/local --configfile workflow/compare-reproduce.yaml
	@echo "report: results/report/cub-compare-seed1+cars-compare-seed1/index.html"

## make compare-backbones: the same protocol with EfficientNet-Lite0/1/2 as the arms (offline weights)
compare-backbones: $(STAMP)
	$(BIN)/snakemake --profile workflow/profiles/local --configfile workflow/compare-backbones.yaml
	@echo "report: results/report/cub-backbones+cars-backbones/index.html"

## make cluster-smoke [PROFILE=workflow/profiles/slurm]: a 3-trial study on generated data through a
## cluster profile, in minutes: is the profile right for this cluster?
PROFILE ?= workflow/profiles/slurm
cluster-smoke: $(STAMP)
	$(BIN)/harness cluster check --profile $(PROFILE)
	$(BIN)/python -c "import sys; sys.path.insert(0, 'tests'); from fixtures import make_cub; make_cub('.test/data', per_class=4, noise=60.0)"
	$(BIN)/snakemake --profile $(PROFILE) --directory .test --configfile .test/study.yaml
	@echo "report: .test/results/tiny/report/index.html"

## make test: lint + the default test suite (CPU, tiny generated data)
test: $(STAMP) lint
	$(BIN)/pytest

## make test-slow: real CUB-128 (../shared/data), fault tests (kill -9, PostgreSQL, snakemake resume)
test-slow: $(STAMP)
	$(BIN)/pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check harness tests bench workflow/scripts
	$(BIN)/ruff format --check harness tests bench workflow/scripts
	$(BIN)/mypy harness
	$(BIN)/snakemake --lint > /dev/null

## make docs: the docs site in site/ (mkdocs build --strict: a missing page or anchor fails it);
## make test checks the same build (tests/test_docs.py)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	@echo "docs: site/index.html (or: $(BIN)/mkdocs serve)"

dry-run: $(STAMP)
	$(BIN)/snakemake -n --profile workflow/profiles/local

mlflow: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///results/mlflow.db --port 5000

dashboard: $(STAMP)
	$(BIN)/optuna-dashboard results/cub-demo/optuna.journal --port 8080

clean:
	rm -rf results logs .snakemake site
