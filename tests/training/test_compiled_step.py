"""The compiled training step (issue #9) gives the eager step's loss and gradients, as one graph,
and a study runs with it (CPU inductor here; CUDA graphs are the GPU script's to check).

Tolerance: the same float32 arithmetic reordered by the compiler, on values of order 1: losses
agree to 1e-6 relative, gradients and updated weights to 1e-6 absolute (measured: <= 6e-8).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from fixtures import make_cub
from helpers import tiny_config

from harness.losses import get_distance
from harness.mining import get_miner
from harness.models import EmbeddingHead
from harness.training.step import TrainStep

FAST = ["semihard", "random", "offline-hard"]
REST = ["all", "hard", "batch-hard", "distance-weighted"]


def _one_step(name: str, mode: str, head: torch.nn.Module) -> tuple:
    torch.manual_seed(0)
    x = torch.randn(16, 32)
    y = torch.arange(4).repeat_interleave(4)
    model = copy.deepcopy(head)
    g = torch.Generator().manual_seed(3)
    miner = get_miner(name, get_distance("cosine"), 0.2, g)
    step = TrainStep(model, miner, 0.2, 1e-3, 1e-4, torch.device("cpu"), mode)
    if miner.offline:
        ar = torch.arange(5)
        out = step(x, None, (ar, ar + 5, ar + 10))
    else:
        out = step(x, y)
    return out, model.fc.weight.grad.clone(), model.fc.weight.detach().clone(), step


def _check(name: str) -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    head = EmbeddingHead(32, 16)
    (loss_e, act_e, mined_e), grad_e, w_e, _ = _one_step(name, "eager", head)
    (loss_c, act_c, mined_c), grad_c, w_c, step = _one_step(name, "compiled", head)
    assert loss_c.item() == pytest.approx(loss_e.item(), rel=1e-6)
    assert (act_c.item(), mined_c.item()) == (act_e.item(), mined_e.item())
    torch.testing.assert_close(grad_c, grad_e, rtol=0, atol=1e-6)
    torch.testing.assert_close(w_c, w_e, rtol=0, atol=1e-6)  # fused AdamW = the per-tensor one
    assert step.compile_s > 0
    assert not counters["graph_break"], dict(counters["graph_break"])  # the step is one graph
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("name", FAST)
def test_compiled_step_equals_eager(name: str) -> None:
    _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", REST)
def test_compiled_step_equals_eager_other_miners(name: str) -> None:
    _check(name)


def test_sampled_miners_draw_the_same_numbers_compiled_or_not() -> None:
    """The compiled step draws the uniforms outside its graph, in the eager step's order."""
    emb = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    y = torch.arange(4).repeat_interleave(2)
    a = get_miner("random", get_distance("cosine"), 0.2, torch.Generator().manual_seed(1))
    b = get_miner("random", get_distance("cosine"), 0.2, torch.Generator().manual_seed(1))
    for _ in range(3):
        assert torch.equal(a.loss(emb, y)[0], b.loss(emb, y, b.draw(8, emb.device))[0])


def test_graphs_mode_runs_eager_on_a_cpu() -> None:
    miner = get_miner("semihard", get_distance("cosine"), 0.2)
    step = TrainStep(EmbeddingHead(8, 4), miner, 0.2, 1e-3, 0.0, torch.device("cpu"), "graphs")
    assert step.mode == "eager"


@pytest.mark.slow
def test_a_two_trial_study_with_compile_on(tmp_path: Path) -> None:
    """CPU inductor, a fine-tuned tiny trunk: both trials complete; the second reuses compiled work."""
    from torch._dynamo.utils import counters

    from harness.cli import main

    root = make_cub(tmp_path / "data", per_class=4, noise=60.0)
    raw = tiny_config(root, tmp_path / "results", n_trials=2)
    raw |= {"compile": True, "trunk": "finetune", "epochs": 1, "evaluate": {"top_n": 1, "seeds": 1}}
    raw["search_space"] = raw["search_space"] | {"mining": "semihard", "distance": "cosine"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    counters.clear()
    assert main(["--threads", "2", "study", "run", "--config", str(path)]) == 0
    hits = counters["inductor"].get("fxgraph_cache_hit", 0) + counters["aot_autograd"].get(
        "autograd_cache_hit", 0
    )
    assert hits > 0, dict(counters["inductor"])  # trial 2's graphs came from trial 1's compile
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], "tags.`harness.phase` = 'hpo'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.metrics["compile_s"] > 0 for r in runs)
