"""The trained model in MLflow: logged as an MLflow model (ONNX flavour) with a signature and an input
example, registered as ``<study>-best`` with an alias, loadable by ``models:/<name>@<alias>`` through
``mlflow.pyfunc``, and registered once per evaluation run however often it is logged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.models import EmbeddingHead, create_trunk
from harness.models.embedder import Embedder
from harness.models.export import export_model
from harness.tracking import Tracker
from harness.tracking.models import ALIAS, log_model, registered_name

PREP = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "config": "trial 3", "seed": 0}


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    trunk, info = create_trunk("test_efficientnet", pretrained=False)
    model = Embedder(trunk, EmbeddingHead(info.num_features, 8)).eval()
    export_model(model, tmp_path / "export", 32, PREP, formats=("onnx",))
    return tmp_path / "export", model


def test_the_best_model_is_registered_with_a_signature_an_example_and_an_alias(
    tmp_path: Path, exported: tuple[Path, torch.nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    folder, model = exported
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what a user sets to load models:/ URIs
    tracker = Tracker(uri, "toy", tmp_path / "artifacts")
    parent = tracker.parent_run("toy", "uid-1", {})
    run = tracker.trial_run(parent, 3, {"margin": 0.2}, phase="test", name="test-trial-3-seed0")
    example = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)

    got = log_model(tracker, run, folder, example, registered_name("toy"), key="uid-1/top1-s0")
    assert (got.name, got.version, got.alias, got.uri) == (
        "toy-best",
        "1",
        ALIAS,
        "models:/toy-best@champion",
    )
    client = mlflow.MlflowClient(uri)
    assert client.get_model_version_by_alias("toy-best", ALIAS).run_id == run
    assert client.get_run(run).data.tags["harness.registered_model"] == got.uri

    loaded = mlflow.pyfunc.load_model(got.uri)
    inputs, outputs = loaded.metadata.signature.inputs.to_dict(), loaded.metadata.signature.outputs.to_dict()
    assert inputs == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 3, 32, 32)}, "name": "images"}
    ]
    assert outputs[0]["tensor-spec"]["shape"] == (-1, 8)
    images = np.random.default_rng(1).random((5, 3, 32, 32), dtype=np.float32)
    served = loaded.predict({"images": images})["embeddings"]
    with torch.no_grad():
        want = model((torch.from_numpy(images) - 0.5) / 0.5).numpy()
    assert np.abs(served - want).max() <= 1e-4
    stored = mlflow.models.Model.load(got.uri).load_input_example(
        mlflow.artifacts.download_artifacts(got.uri)
    )
    assert np.array_equal(stored["images"], example)  # the images given, not a made-up one
    files = {f.path for f in client.list_artifacts(run, "export")}
    assert files == {"export/preprocessing.json"}  # the export's other files go beside the model

    # the same evaluation run again (a rerun): the same version; another run: a new version, the alias moves
    assert log_model(tracker, run, folder, example, "toy-best", key="uid-1/top1-s0").version == "1"
    run2 = tracker.trial_run(parent, 4, {}, phase="test", name="test-trial-4-seed0")
    assert log_model(tracker, run2, folder, example, "toy-best", key="uid-2/top1-s0").version == "2"
    assert str(client.get_model_version_by_alias("toy-best", ALIAS).version) == "2"
