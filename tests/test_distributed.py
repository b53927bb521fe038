"""Data-parallel training with gloo on the CPU: 2 ranks stay in sync and average gradients."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dmd_fast.data.mmsa import make_loaders
from dmd_fast.data.synthetic import synthetic_datasets
from dmd_fast.model.config import get_preset
from dmd_fast.model.system import DMDSystem
from dmd_fast.train import distributed as ddp
from dmd_fast.train.trainer import Trainer, TrainOptions

CFG = get_preset("tiny").replace(batch_size=4, update_epochs=2, attn_dropout=0.0, text_dropout=0.0, output_dropout=0.0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir, result_path):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    info = ddp.init_from_env("cpu")
    try:
        datasets = synthetic_datasets(CFG, 24, 8, 8, seed=5)
        loaders = make_loaders(datasets, batch_size=CFG.batch_size, seed=5)
        loaders["train"] = ddp.distributed_train_loader(datasets["train"], CFG.batch_size, 5, info)
        torch.manual_seed(0)
        system = DMDSystem(CFG, backend="reference")
        # gradient of one step on this rank's first batch, averaged by DDP
        trainer = Trainer(
            system, loaders, TrainOptions(max_epochs=1, out_dir=out_dir, device="cpu", log_every_epoch=False)
        )
        batch = next(iter(loaders["train"]))
        _, losses = trainer.model(batch["text"], batch["audio"], batch["vision"], batch["label"])
        losses["total"].backward()
        ddp_grad = system.dmd.out_layer.weight.grad.clone()
        system.zero_grad(set_to_none=True)
        _, local = system(batch["text"], batch["audio"], batch["vision"], batch["label"])
        local["total"].backward()
        local_grad = system.dmd.out_layer.weight.grad.clone()
        system.zero_grad(set_to_none=True)
        result = trainer.fit()
        torch.save(
            {
                "ddp_grad": ddp_grad,
                "local_grad": local_grad,
                "state": system.state_dict(),
                "train_loss": trainer.history[-1]["train"]["Loss"],
                "best": result.best_valid_loss,
            },
            f"{result_path}.{rank}",
        )
    finally:
        dist.destroy_process_group()


def test_two_rank_gloo(tmp_path):
    port = _free_port()
    mp.spawn(_worker, args=(2, port, str(tmp_path / "run"), str(tmp_path / "res")), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"res.{r}", weights_only=False) for r in (0, 1))
    # DDP gradient = mean of the two ranks' local gradients
    torch.testing.assert_close(r0["ddp_grad"], (r0["local_grad"] + r1["local_grad"]) / 2, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(r1["ddp_grad"], r0["ddp_grad"], rtol=0, atol=0)
    for k, v in r0["state"].items():  # parameters identical on both ranks after training
        assert torch.equal(v, r1["state"][k]), k
    assert r0["train_loss"] == r1["train_loss"] and torch.isfinite(torch.tensor(r0["train_loss"]))
    assert (tmp_path / "run" / "last.pt").exists()
