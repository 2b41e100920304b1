"""One training step as one unit: forward (trunk + head), mining fused with the loss, backward and
the optimiser step.

Modes (the study's ``compile`` key):
- ``eager``: as written, each op its own kernel launch.
- ``compiled``: forward + mining + loss are ONE ``torch.compile`` graph (AOTAutograd compiles its
  backward too), and the optimiser is AdamW's fused kernel (one launch for all parameters instead
  of a dozen per tensor). Compiling only the trunk left the loss's ~100 small eager kernels on the
  critical path after it (measured: 19 % of the step on an H200). A new trial makes a new graph
  (another head, margin, miner); torch's FX-graph and AOTAutograd caches turn a trial with the
  shapes of an earlier one into a re-trace, not a re-build.
- ``graphs``: the whole eager step (forward, loss, backward and a capturable AdamW step) captured
  once per trial as ONE CUDA graph and replayed every step: P×K is fixed within a trial, so every
  step has the same shapes, and the step never waits for the host (no ``.item()``, no
  data-dependent shapes), which is what capture requires. Capture costs a few warm-up steps (their
  effect on weights, optimiser state and BatchNorm statistics is undone), not a compile: the mode
  for short trials (a frozen trunk, small images) that launches bound. CUDA only; elsewhere eager.

What the loss needs at random (the sampled miners' uniforms) is drawn outside the compiled graph or
the CUDA graph, from the trial's seeded generator, in the order the eager step draws it: eager and
compiled steps see the same numbers. All strategies run in every mode: the fused miners work on
fixed-size B×B tensors, and an offline miner's step is an index lookup into fixed-size triplet
batches. What stays outside the step: the data augmentation and, for offline mining, the
whole-set mining pass between epochs (its triplet count depends on the data).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from harness.mining.base import LossOut, Miner, farness, indexed_loss

MODES = ("eager", "compiled", "graphs")
WARMUP = 3  # steps on a side stream before capture, as torch.cuda.graph requires


def fused_adamw_available(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and hasattr(torch, "_fused_adamw_"))


class TrainStep:
    """``step(x, y)`` (online) or ``step(x, None, triplets)`` (offline) -> (loss, n_active, n_mined),
    after backward and the optimiser step. ``marks`` gets the phase boundaries for the timer."""

    def __init__(
        self,
        model: nn.Module,
        miner: Miner,
        margin: float,
        lr: float,
        weight_decay: float,
        device: torch.device,
        mode: str = "eager",
        groups: list[dict] | None = None,
    ) -> None:
        if mode not in MODES:  # pragma: no cover - the config schema checks it
            raise ValueError(mode)
        if mode == "graphs" and device.type != "cuda":
            mode = "eager"  # CUDA graphs need CUDA
        self.model, self.miner, self.margin, self.device, self.mode = model, miner, margin, device, mode
        trainable: list = list(groups) if groups else [p for p in model.parameters() if p.requires_grad]
        if mode == "graphs":
            self.opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay, capturable=True)
        else:
            fused = mode == "compiled" and fused_adamw_available(device)
            self.opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay, fused=fused or None)
        self.compile_s = 0.0  # the first call's time, compile or capture included (0 in eager mode)
        self._forward: Callable[..., LossOut] = self._forward_loss
        if mode == "compiled":
            self._forward = torch.compile(self._forward_loss, dynamic=False)  # type: ignore[assignment]
        self._first = mode != "eager"
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: dict = {}

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.model(x).float()

    def _loss(
        self, emb: torch.Tensor, y: torch.Tensor | None, u: torch.Tensor | None, trip: tuple | None
    ) -> LossOut:
        if trip is not None:
            a, p, n = trip
            valid = torch.ones_like(a, dtype=torch.bool)
            return indexed_loss(farness(self.miner.distance, emb), a, p, n, valid, self.margin)
        assert y is not None
        return self.miner.loss(emb, y, u)

    def _forward_loss(
        self, x: torch.Tensor, y: torch.Tensor | None, u: torch.Tensor | None, trip: tuple | None
    ) -> LossOut:
        return self._loss(self._embed(x), y, u, trip)

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        trip: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        marks: list | None = None,
        mark: Callable[[], object] | None = None,
    ) -> LossOut:
        marks = marks if marks is not None else []
        mark = mark or (lambda: None)
        if self.mode == "eager":
            emb = self._embed(x)
            marks.append(mark())
            loss, active, mined = self._loss(emb, y, None, trip)  # a sampled miner draws here
            marks.append(mark())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            return loss, active, mined
        u = self.miner.draw(len(y), x.device) if trip is None and y is not None else None
        t0 = time.perf_counter() if self._first else 0.0
        if self.mode == "graphs":
            out = self._replay(x, y, u, trip)
            marks += [mark(), mark()]  # one graph: forward, mining and backward are not told apart
        else:
            loss, active, mined = self._forward(x, y, u, trip)
            marks += [mark(), mark()]  # forward and mining are one fused graph here: mine_s is 0
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            out = (loss, active, mined)
        if self._first:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.compile_s, self._first = time.perf_counter() - t0, False
        return out

    # --- CUDA graphs ---------------------------------------------------------------------------

    def _whole_step(self) -> LossOut:
        s = self._static
        loss, active, mined = self._forward_loss(s["x"], s.get("y"), s.get("u"), s.get("trip"))
        loss.backward()
        self.opt.step()
        return loss, active, mined

    def _replay(
        self, x: torch.Tensor, y: torch.Tensor | None, u: torch.Tensor | None, trip: tuple | None
    ) -> LossOut:
        if self._graph is None:
            self._capture(x, y, u, trip)
        s = self._static
        s["x"].copy_(x)
        if y is not None:
            s["y"].copy_(y)
        if u is not None:
            s["u"].copy_(u)
        if trip is not None:
            for dst, src in zip(s["trip"], trip, strict=True):
                dst.copy_(src)
        assert self._graph is not None
        self._graph.replay()
        loss, active, mined = s["out"]
        return loss.detach().clone(), active.clone(), mined.clone()  # the next replay overwrites them

    def _capture(
        self, x: torch.Tensor, y: torch.Tensor | None, u: torch.Tensor | None, trip: tuple | None
    ) -> None:
        """Warm up on a side stream, undo the warm-up's training, then capture one whole step."""
        s = self._static
        s["x"] = x.clone()
        if y is not None:
            s["y"] = y.clone()
        if u is not None:
            s["u"] = u.clone()
        if trip is not None:
            s["trip"] = tuple(t.clone() for t in trip)
        params = list(self.model.state_dict().values())  # weights and BatchNorm statistics
        saved = [t.detach().clone() for t in params]
        moments = {  # a resumed trial's optimiser state; a fresh one has none yet
            p: {k: v.clone() for k, v in st.items() if torch.is_tensor(v)} for p, st in self.opt.state.items()
        }
        self.opt.zero_grad(set_to_none=True)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                self.opt.zero_grad(set_to_none=True)
                self._whole_step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        with torch.no_grad():  # the warm-up steps never happened: weights, statistics, moments
            for t, v in zip(params, saved, strict=True):
                t.copy_(v)
            for p, state in self.opt.state.items():
                for k, v in state.items():
                    if torch.is_tensor(v):
                        v.copy_(moments[p][k]) if p in moments else v.zero_()
        # Gradients as None: backward inside the capture allocates them from the graph's pool and
        # every replay writes (not accumulates) them, as in torch's whole-network capture recipe.
        self.opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            s["out"] = self._whole_step()
        self._graph = graph
