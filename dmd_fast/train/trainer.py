"""DMD training with upstream's procedure (``trains/singleTask/DMD.py``;
docs/upstream-semantics.md, "Training procedure").

Adam(lr) over DMD + both GD units; gradients summed over windows of ``update_epochs``
mini-batches (a trailing partial window is discarded, as upstream); ``clip_grad_value_`` after
every backward; ReduceLROnPlateau(min, 0.5, patience) on the validation L1 loss; the best model by
validation loss (1e-6 tolerance); early stop after ``early_stop`` epochs without improvement.
Per step nothing is read back to the host: losses and predictions accumulate on the device.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dmd_fast import validation as check
from dmd_fast.model.system import DMDSystem
from dmd_fast.train import distributed as ddp
from dmd_fast.train.checkpoint import load_checkpoint, save_checkpoint
from dmd_fast.train.grad_sum import backward_into_grads
from dmd_fast.train.graphed_step import GraphedTrainStep
from dmd_fast.train.loss_scale import ClipAwareLossScaler
from dmd_fast.train.metrics import format_metrics_table, regression_metrics
from dmd_fast.train.progress import Progress

# fp16 needs loss scaling; ClipAwareLossScaler keeps upstream's clip after every backward exact.
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainOptions:
    max_epochs: int | None = None  # upstream: unbounded (early stop only)
    out_dir: str = "runs/dmd"
    device: str = "auto"
    progress: bool | None = None  # None: only on a terminal
    log_every_epoch: bool = True
    resume: bool = False
    amp: str = "none"  # "none" | "bf16" | "fp16" autocast (fp16 with loss scaling)
    compile: bool = False  # torch.compile the DMD model (static shapes per preset)
    cuda_graph: bool = False  # replay each full-size mini-batch (fwd+bwd+clip) from a CUDA graph


@dataclass
class TrainResult:
    best_epoch: int
    best_valid_loss: float
    test: dict
    history: list = field(default_factory=list)
    edges: dict = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device: {name!r} requested but CUDA is not available")
    return dev


def _to(batch, device):
    return (
        batch["text"].to(device, non_blocking=True),
        batch["audio"].to(device, non_blocking=True),
        batch["vision"].to(device, non_blocking=True),
        batch["label"].to(device, non_blocking=True).view(-1, 1),
    )


@torch.no_grad()
def evaluate(system: DMDSystem, loader, device) -> dict:
    """Eval-mode forward over a split → metrics dict with the L1 'Loss' (upstream's KeyEval)."""
    system.eval()
    preds, truths = [], []
    for batch in loader:
        text, audio, vision, labels = _to(batch, device)
        out, _ = system(text, audio, vision)
        preds.append(out["output_logit"].view(-1))
        truths.append(labels.view(-1))
    pred, truth = torch.cat(preds), torch.cat(truths)
    loss = F.l1_loss(pred, truth).item()
    if not math.isfinite(loss):
        raise FloatingPointError(f"evaluation: the model predicts NaN/inf (L1 {loss}); training has diverged")
    metrics = regression_metrics(pred.cpu().numpy(), truth.cpu().numpy())
    metrics["Loss"] = loss
    return metrics


class Trainer:
    """Upstream DMD training loop over ``loaders`` = {'train', 'valid', 'test'} DataLoaders."""

    def __init__(self, system: DMDSystem, loaders: dict, options: TrainOptions, graph_engine=None):
        if options.max_epochs is not None:
            check.dim(options.max_epochs, "max_epochs")
        check.output_dir(options.out_dir, "out_dir")
        self.system = system
        self.loaders = loaders
        self.opt = options
        self.device = pick_device(options.device)
        self.system.to(self.device)
        self.dist = ddp.current()
        self.model = self.system
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # proj_cosine_* feed no loss (as upstream), hence find_unused_parameters
            self.model = DistributedDataParallel(system, device_ids=ids, find_unused_parameters=True)
        cfg = system.config
        self.cfg = cfg
        if options.amp not in AMP_DTYPES:
            raise ValueError(f"amp: expected one of {sorted(AMP_DTYPES)}, got {options.amp!r}")
        self.autocast_dtype = AMP_DTYPES[options.amp]
        if options.cuda_graph and self.dist.enabled:
            raise ValueError(
                "cuda_graph: whole-step capture is not supported with DistributedDataParallel "
                "(its gradient all-reduce hooks run outside a graph); drop --cuda-graph or run one rank"
            )
        if options.cuda_graph and options.compile:
            raise ValueError("cuda_graph: not supported together with --compile (use one of them)")
        if options.compile:
            system.dmd.forward = torch.compile(system.dmd.forward)
        # fused Adam on CUDA (one kernel for all parameters); the same update rule as upstream's Adam.
        # fp16 needs it everywhere: it unscales and skips overflowed steps inside its kernel.
        fused = self.device.type == "cuda" or options.amp == "fp16"
        self.optimizer = torch.optim.Adam(system.parameters(), lr=cfg.learning_rate, fused=fused)
        self.scaler = ClipAwareLossScaler(self.device) if options.amp == "fp16" else None
        self._params = list(system.parameters())
        self._step = self._mini_batch
        if options.cuda_graph:
            self._step = GraphedTrainStep(self._mini_batch, self._params, self.device, engine=graph_engine)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=0.5, patience=cfg.patience
        )
        self.out_dir = pathlib.Path(options.out_dir)
        self.epoch = 0
        self.best_valid = float("inf")
        self.best_epoch = 0
        self.history: list = []

    # --- one mini-batch ------------------------------------------------------------------------
    def _mini_batch(self, text, audio, vision, labels) -> dict:
        """Forward, losses, backward (gradients summed into .grad, ``grad_sum``) and upstream's clip; no host sync."""
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            out, losses = self.model(text, audio, vision, labels)
        clip = self.cfg.grad_clip
        total = losses["total"] if self.scaler is None else self.scaler.scale(losses["total"])
        if self.dist.enabled:  # DDP reduces gradients from its .grad accumulation hooks
            total.backward()
        else:
            backward_into_grads(total, self._params)  # one multi-tensor add, not one add_ per parameter
        if self.scaler is not None:
            self.scaler.clip_(self._params, clip)
        elif clip != -1.0:
            torch.nn.utils.clip_grad_value_(self._params, clip)
        return {
            "total": losses["total"].detach().reshape(()),
            "pred": out["output_logit"].detach().view(-1),
            "edges_homo": losses["edge_means_homo"],
            "edges_hetero": losses["edge_means_hetero"],
        }

    # --- one epoch -------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        system, cfg = self.system, self.cfg
        system.train()
        sampler = getattr(self.loaders["train"], "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        left = cfg.update_epochs
        loss_sum = torch.zeros((), device=self.device)
        edge_sum = {"homo": 0, "hetero": 0}
        preds, truths, n_batches = [], [], 0
        bar = Progress(self.loaders["train"], desc=f"epoch {self.epoch:3d}", enabled=self.opt.progress)
        t0 = time.perf_counter()
        n_samples = 0
        for batch in bar:
            if left == cfg.update_epochs:
                self.optimizer.zero_grad(set_to_none=False)
                if self.scaler is not None:
                    self.scaler.begin_window()
            left -= 1
            text, audio, vision, labels = _to(batch, self.device)
            res = self._step(text, audio, vision, labels)
            loss_sum += res["total"]
            edge_sum["homo"] = edge_sum["homo"] + res["edges_homo"]
            edge_sum["hetero"] = edge_sum["hetero"] + res["edges_hetero"]
            preds.append(res["pred"].clone())  # a graph's outputs are overwritten by its next replay
            truths.append(labels.view(-1))
            n_batches += 1
            n_samples += labels.shape[0]
            if left == 0:
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                else:
                    self.optimizer.step()
                left = cfg.update_epochs
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # samples/s of finished work, not of queued work
        seconds = time.perf_counter() - t0
        loss = ddp.all_reduce_mean(loss_sum / max(n_batches, 1)).item()
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training diverged: the mean train loss of epoch {self.epoch} is "
                f"{loss} (check the inputs for NaN/inf and the learning rate)"
            )
        pred, truth = ddp.all_gather_cat(torch.cat(preds)), ddp.all_gather_cat(torch.cat(truths))
        metrics = regression_metrics(pred.cpu().numpy(), truth.cpu().numpy())
        metrics["Loss"] = loss
        metrics["samples_per_s"] = self.dist.world_size * n_samples / seconds if seconds > 0 else 0.0
        edges = {k: (v / max(n_batches, 1)).cpu().tolist() if torch.is_tensor(v) else [] for k, v in edge_sum.items()}
        return {"metrics": metrics, "edges": edges}

    # --- whole run ---------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "epoch": self.epoch,
            "best_valid": self.best_valid,
            "best_epoch": self.best_epoch,
            "history": self.history,
        }

    def fit(self) -> TrainResult:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        last = self.out_dir / "last.pt"
        if self.opt.resume and last.exists():
            load_checkpoint(last, self)
        log_path = self.out_dir / "log.jsonl"
        header = ("epoch", "split", "Loss", "Non0_acc_2", "Non0_F1_score", "Acc_7", "MAE", "Corr")
        while self.opt.max_epochs is None or self.epoch < self.opt.max_epochs:
            self.epoch += 1
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            train = self.train_epoch()
            valid = evaluate(self.system, self.loaders["valid"], self.device)
            test = evaluate(self.system, self.loaders["test"], self.device)
            self.scheduler.step(valid["Loss"])
            improved = valid["Loss"] <= self.best_valid - 1e-6
            if improved:
                self.best_valid, self.best_epoch = valid["Loss"], self.epoch
                if self.dist.is_main:
                    save_checkpoint(self.out_dir / "best.pt", self, weights_only=True)
            record = {
                "epoch": self.epoch,
                "train": train["metrics"],
                "valid": valid,
                "test": test,
                "edges": train["edges"],
                "lr": self.optimizer.param_groups[0]["lr"],
                "peak_mem_bytes": torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None,
            }
            if self.scaler is not None:
                record["loss_scale"] = self.scaler.get_scale()
            self.history.append(record)
            if self.dist.is_main:
                with open(log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
            if self.opt.log_every_epoch and self.dist.is_main:
                rows = [
                    dict(epoch=self.epoch, split=s, **{k: m.get(k) for k in header[2:]})
                    for s, m in (("train", train["metrics"]), ("valid", valid), ("test", test))
                ]
                print(format_metrics_table(rows, list(header)), flush=True)
                print(
                    f"  samples/s {train['metrics']['samples_per_s']:.1f}  lr {record['lr']:.2e}"
                    f"  best epoch {self.best_epoch} (valid L1 {self.best_valid:.4f})",
                    flush=True,
                )
            if self.dist.is_main:
                save_checkpoint(last, self)
            if self.dist.enabled:
                torch.distributed.barrier()
            if self.epoch - self.best_epoch >= self.cfg.early_stop:
                break
        best = self.out_dir / "best.pt"
        if best.exists():
            load_checkpoint(best, self, weights_only=True)
        test = evaluate(self.system, self.loaders["test"], self.device)
        edges = self.history[-1]["edges"] if self.history else {}
        return TrainResult(self.best_epoch, self.best_valid, test, self.history, edges)
