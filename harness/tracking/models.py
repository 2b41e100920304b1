"""The trained embedding model in MLflow: logged to its test run as an MLflow model (the ONNX flavour,
so ``mlflow.pyfunc.load_model`` serves it through onnxruntime), with a signature and an input
example, and registered in the model registry under ``<study>-best`` with an alias.

The exported folder (``harness.models.export``) is the source: its ``model.onnx`` becomes the MLflow
model, and its other files (TorchScript, ``torch.export`` program, ``preprocessing.json``) are logged
beside it under ``export/``. A rerun that finds the run's version already registered reuses it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException

from harness.tracking.mlflow_tracker import Tracker

log = logging.getLogger(__name__)

ALIAS = "champion"  # MLflow's own example alias for the version to serve
ARTIFACT = "model"  # the MLflow model's folder in the run's artifacts
RUN_TAG = "harness.run_key"  # on a model version: the evaluation run it came from


@dataclass(frozen=True)
class Registered:
    """Where a logged model is: its registry name, version and alias, and the URIs that load it."""

    name: str
    version: str
    alias: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def registered_name(study: str) -> str:
    return f"{study}-best"


def signature(image_size: int, dim: int) -> Any:
    """Images ``[-1, 3, S, S]`` float32 in [0, 1] -> embeddings ``[-1, D]`` float32."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, image_size, image_size), "images")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim), "embeddings")]),
    )


def log_model(
    tracker: Tracker,
    run_id: str,
    folder: Path,
    example: np.ndarray,
    name: str,
    key: str,
    alias: str = ALIAS,
) -> Registered:
    """Log ``folder``'s ONNX model to ``run_id`` and register it as a version of ``name`` with
    ``alias`` pointing at it. ``example``: a batch of real images, ``[B, 3, S, S]`` float32 in [0, 1];
    ``key``: what identifies the evaluation run (a rerun with the same key reuses its version)."""
    client = tracker.client
    found = _version_of(tracker, name, key)
    if found is None:
        _log_artifacts(tracker, run_id, folder, example)
        source = f"{client.get_run(run_id).info.artifact_uri}/{ARTIFACT}"
        try:
            client.create_registered_model(name, description="the best validation config's model")
        except MlflowException as e:  # registered before (another study incarnation, another shard)
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
        meta = json.loads((folder / "preprocessing.json").read_text())
        tags = {
            RUN_TAG: key,
            "harness.config": str(meta.get("config")),
            "harness.seed": str(meta.get("seed")),
        }
        found = client.create_model_version(name, source, run_id=run_id, tags=tags).version
    client.set_registered_model_alias(name, alias, found)
    out = Registered(name, str(found), alias, run_id)
    tracker.set_tags(run_id, {"harness.registered_model": out.uri, "harness.model_version": out.version})
    log.info("model registered in MLflow as %s (version %s)", out.uri, out.version)
    return out


def _version_of(tracker: Tracker, name: str, key: str) -> str | None:
    try:
        versions = tracker.client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    return next((v.version for v in versions if v.tags.get(RUN_TAG) == key), None)


def _log_artifacts(tracker: Tracker, run_id: str, folder: Path, example: np.ndarray) -> None:
    import mlflow.onnx
    import onnx
    import onnxruntime

    model = onnx.load(str(folder / "model.onnx"))
    dim = int(model.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ARTIFACT
        with warnings.catch_warnings():  # MLflow's notes on pip requirements it infers
            warnings.simplefilter("ignore")
            mlflow.onnx.save_model(
                model,
                str(path),
                signature=signature(int(example.shape[-1]), dim),
                input_example=example.astype(np.float32),
                # stated, not inferred (MLflow would load the model in a subprocess to guess them)
                pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"],
            )
        tracker.client.log_artifacts(run_id, str(path), ARTIFACT)
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name != "model.onnx":
            tracker.client.log_artifact(run_id, str(f), "export")
