"""``dmd-fast`` command line: train, parity, attention-map, predict, export, bench."""

from __future__ import annotations

import argparse
import sys

from dmd_fast import validation as check

# Failures the user can fix: one line on stderr and exit code 2. Anything else is an internal error:
# one line and exit code 1, the traceback with --debug.
KNOWN_ERRORS = (ValueError, TypeError, RuntimeError, OSError, FloatingPointError, ImportError, MemoryError)


def _train(args) -> int:
    import pathlib

    import torch

    from dmd_fast.data.mmsa import load_mmsa, make_loaders
    from dmd_fast.data.synthetic import synthetic_datasets
    from dmd_fast.model.config import get_preset
    from dmd_fast.model.system import DMDSystem
    from dmd_fast.train import distributed as ddp
    from dmd_fast.train.seeds import summarize_seeds
    from dmd_fast.train.trainer import Trainer, TrainOptions, pick_device

    check.output_dir(args.out, "--out")
    cfg = get_preset(args.preset)
    overrides = {}
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.lr is not None:
        overrides["learning_rate"] = args.lr
    if args.ort == "per_sample":
        overrides["ort_semantics"] = "per_sample"
    data_cfg = cfg.replace(**overrides) if overrides else cfg  # the data's shapes (precomputed text features)
    bert = None
    if args.bert:
        from dmd_fast.model.text_encoder import local_bert_config

        bert = local_bert_config(args.bert)
        _, da, dv = cfg.feature_dims
        # bert_config too: a checkpoint then rebuilds the model without the folder (weights are in it)
        overrides.update(
            use_bert=True, bert_path=args.bert, bert_config=bert.to_dict(), feature_dims=(bert.hidden_size, da, dv)
        )
    cfg = cfg.replace(**overrides) if overrides else cfg
    text_key = "text_bert" if bert is not None else "text"
    threads = args.threads if args.threads is not None else (1 if cfg.name == "tiny" else None)
    if threads:
        torch.set_num_threads(threads)  # a tiny model runs fastest single-threaded on the CPU
    seeds = args.seeds or [args.seed]
    info = ddp.init_from_env(pick_device(args.device).type)
    device = f"cuda:{info.local_rank}" if info.enabled and pick_device(args.device).type == "cuda" else args.device
    results = []
    for seed in seeds:
        out_dir = args.out if len(seeds) == 1 else str(pathlib.Path(args.out) / f"seed-{seed}")
        torch.manual_seed(seed)
        if args.data == "synthetic":
            n_train, n_valid, n_test = args.synthetic_sizes
            datasets = synthetic_datasets(data_cfg, n_train, n_valid, n_test, seed=args.data_seed, text_key=text_key)
            source = f"synthetic ({n_train}/{n_valid}/{n_test} samples, preset {cfg.name})"
        else:
            datasets = load_mmsa(args.data, expected=data_cfg, text_key=text_key)
            source = args.data
        if bert is not None:
            from dmd_fast.model.text_encoder import check_token_ids

            check_token_ids(datasets, bert.vocab_size)
        loaders = make_loaders(
            datasets, batch_size=cfg.batch_size, seed=seed, pin_memory=pick_device(device).type == "cuda"
        )
        if info.enabled:  # under torchrun: each rank trains on its share of every epoch
            loaders["train"] = ddp.distributed_train_loader(datasets["train"], cfg.batch_size, seed, info)
        system = DMDSystem(cfg, backend=args.backend)
        opts = TrainOptions(
            max_epochs=args.epochs,
            out_dir=out_dir,
            device=device,
            resume=args.resume,
            log_every_epoch=info.is_main,
            amp=args.amp,
            compile=args.compile,
            cuda_graph=args.cuda_graph,
        )
        trainer = Trainer(system, loaders, opts)
        if info.is_main:
            print(
                f"dmd-fast train: preset {cfg.name}, data {source}, seed {seed}, device {trainer.device}, "
                f"backend {args.backend}, ranks {info.world_size}",
                flush=True,
            )
        result = trainer.fit()
        results.append(result)
        if info.is_main:
            print(
                f"seed {seed}: best epoch {result.best_epoch}, valid L1 {result.best_valid_loss:.4f}; test "
                + ", ".join(
                    f"{k} {result.test[k]:.4f}" for k in ("Loss", "Non0_acc_2", "Non0_F1_score", "Acc_7", "MAE", "Corr")
                ),
                flush=True,
            )
    if info.is_main:
        if len(seeds) > 1:
            summary = summarize_seeds(seeds, results)
            path = pathlib.Path(args.out) / "seeds.md"
            path.write_text(summary, encoding="utf-8")
            print(summary)
            print(f"summary written to {path}")
        print(f"checkpoints and log.jsonl in {args.out}")
    return 0


def _attention_map(args) -> int:

    from dmd_fast.data.mmsa import load_mmsa
    from dmd_fast.data.synthetic import synthetic_datasets
    from dmd_fast.inference.loading import load_model
    from dmd_fast.model.attention_maps import cross_modal_maps, save_map_pngs

    check.output_dir(args.out, "--out")
    model = load_model(args.checkpoint, backend="reference")
    cfg = model.config
    text_key = "text_bert" if cfg.use_bert else "text"
    if args.data == "synthetic":
        datasets = synthetic_datasets(cfg, 1, 1, max(args.sample + 1, 1), seed=args.data_seed, text_key=text_key)
    else:  # with BERT the pickle's text features are not the model's width: shapes are checked by the model
        datasets = load_mmsa(args.data, expected=None if cfg.use_bert else cfg, text_key=text_key)
    split = datasets[args.split]
    if not 0 <= args.sample < len(split):
        raise ValueError(f"--sample: expected 0 <= sample < {len(split)} for split {args.split!r}, got {args.sample}")
    item = split[args.sample]
    maps = cross_modal_maps(model, item["text"][None], item["audio"][None], item["vision"][None], layer=args.layer)
    paths = save_map_pngs(maps, args.out, prefix=f"{args.split}{args.sample}_layer{args.layer}")
    for p in paths:
        print(p)
    return 0


def _predict(args) -> int:
    from dmd_fast.inference.loading import load_model
    from dmd_fast.inference.predict import load_split, predict_dataset
    from dmd_fast.train.trainer import pick_device

    device = pick_device(args.device)
    model = load_model(args.checkpoint, backend=args.backend, device=device)
    dataset = load_split(
        args.data, model.config, args.split, synthetic_sizes=args.synthetic_sizes, data_seed=args.data_seed
    )
    batch_size = model.config.batch_size if args.batch_size is None else args.batch_size
    result = predict_dataset(model, dataset, batch_size=batch_size, device=device, amp=args.amp)
    table = result.metrics_table()
    if args.out is None:  # CSV on stdout, the rest on stderr
        sys.stdout.write(result.csv_text())
        if table:
            print(table, file=sys.stderr)
        return 0
    import pathlib

    out = pathlib.Path(args.out)
    if out.parent != pathlib.Path("."):
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(result.csv_text(), encoding="utf-8")
    if table:
        print(table)
    print(f"dmd-fast predict: {len(result.pred)} rows ({args.split} split) written to {out}")
    return 0


def _export(args) -> int:
    from dmd_fast.inference.export import export_model, save_aoti, save_exported
    from dmd_fast.inference.loading import load_model
    from dmd_fast.train.trainer import pick_device

    if args.aoti and args.backend == "triton":
        raise ValueError(
            "--aoti: expected --backend reference (or auto), got triton; AOTInductor cannot compile the Triton "
            "backend's grouped launchers (export without --aoti to keep them as custom ops)"
        )
    backend = "reference" if args.aoti else args.backend
    model = load_model(args.checkpoint, backend=backend, device=pick_device(args.device))
    program = export_model(model, batch_size=args.batch_size, dynamic_batch=args.dynamic_batch)
    save = save_aoti if args.aoti else save_exported
    meta = save(program, args.out, model, args.batch_size, dynamic_batch=args.dynamic_batch)
    batch = "any batch size" if args.dynamic_batch else f"batch size {args.batch_size}"
    kind = "AOTInductor package" if args.aoti else "torch.export program"
    print(
        f"dmd-fast export: {args.out} ({kind}, preset {model.config.name}, {batch}, backend "
        f"{meta['backend']}, {meta['device']}, torch {meta['torch']}); load with dmd_fast.load_exported"
    )
    return 0


def _seed_list(text: str):
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer seeds, got {text!r}")
    return seeds


POSITIVE_INT = check.cli_type(int, check.dim, "a positive integer")
NON_NEGATIVE_INT = check.cli_type(int, lambda v, n: check.integer(v, n, low=0), "an integer >= 0")
POSITIVE_FLOAT = check.cli_type(float, check.positive, "a positive finite number")


def _parity(args) -> int:
    from dmd_fast.parity import run_parity

    report = run_parity(args.fixture, backend=args.backend, tol=args.tol, device=args.device)  # FixtureError: exit 2
    print(report.table())
    return 0 if report.passed else 1


def _sizes(text: str):
    try:
        parts = tuple(int(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VALID,TEST positive counts, got {text!r}")
    return parts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmd-fast", description="Fast DMD: train, check parity, benchmark")
    p.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train DMD with upstream's procedure")
    t.add_argument(
        "--preset", default="tiny", help="tiny | mosi-aligned | mosi-unaligned | mosei-aligned | mosei-unaligned"
    )
    t.add_argument("--data", default="synthetic", help="'synthetic' (default) or a path to an MMSA pickle")
    t.add_argument("--synthetic-sizes", type=_sizes, default=(480, 96, 96), metavar="TRAIN,VALID,TEST")
    t.add_argument(
        "--epochs",
        type=POSITIVE_INT,
        default=None,
        help="maximum epochs (default: tiny preset 12, else until early stop)",
    )
    t.add_argument("--batch-size", type=POSITIVE_INT, default=None)
    t.add_argument("--lr", type=POSITIVE_FLOAT, default=None)
    t.add_argument("--backend", default="auto", choices=("auto", "triton", "reference"))
    t.add_argument("--device", default="auto")
    t.add_argument("--seed", type=int, default=1111)
    t.add_argument(
        "--seeds",
        type=_seed_list,
        default=None,
        metavar="S1,S2,...",
        help="run one training per seed and write OUT/seeds.md (metrics and edges, mean ± STD)",
    )
    t.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data set")
    t.add_argument(
        "--threads", type=POSITIVE_INT, default=None, help="CPU threads for torch (default: 1 for the tiny preset)"
    )
    t.add_argument(
        "--bert",
        default=None,
        metavar="DIR",
        help="fine-tune an in-model BERT from a local folder (upstream use_bert=True) on the data's "
        "text_bert token ids; default: precomputed text features",
    )
    t.add_argument("--ort", default="torch19", choices=("torch19", "per_sample"), help="orthogonality-loss semantics")
    t.add_argument("--out", default="runs/dmd")
    t.add_argument(
        "--amp",
        default="none",
        choices=("none", "bf16", "fp16"),
        help="autocast: bf16, or fp16 with dynamic loss scaling (clipping kept as upstream)",
    )
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument(
        "--cuda-graph",
        action="store_true",
        help="replay each full-size mini-batch (forward, losses, backward, clip) from one CUDA graph",
    )
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.set_defaults(func=_train)

    q = sub.add_parser("parity", help="compare against an upstream fixture")
    q.add_argument("--fixture", required=True)
    q.add_argument("--backend", default="reference", choices=("auto", "triton", "reference"))
    q.add_argument(
        "--tol", type=POSITIVE_FLOAT, default=None, help="max relative error (default 1e-5 reference, 1e-4 triton)"
    )
    q.add_argument("--device", default="cpu")
    q.set_defaults(func=_parity)

    m = sub.add_parser("attention-map", help="export cross-modal attention maps of a trained model as PNG")
    m.add_argument("--checkpoint", required=True, help="a dmd-fast checkpoint (OUT/best.pt or OUT/last.pt)")
    m.add_argument("--data", default="synthetic", help="'synthetic' or an MMSA pickle")
    m.add_argument("--data-seed", type=int, default=0)
    m.add_argument("--split", default="test", choices=("train", "valid", "test"))
    m.add_argument("--sample", type=NON_NEGATIVE_INT, default=0)
    m.add_argument("--layer", type=int, default=-1, help="encoder layer (default: last)")
    m.add_argument("--out", default="attention_maps")
    m.set_defaults(func=_attention_map)

    r = sub.add_parser("predict", help="predict with a trained model: one CSV row per sample, metrics with labels")
    r.add_argument("--checkpoint", required=True, help="a dmd-fast checkpoint (OUT/best.pt or OUT/last.pt)")
    r.add_argument("--data", default="synthetic", help="'synthetic' (default) or an MMSA pickle (labels optional)")
    r.add_argument("--split", default="test", choices=("train", "valid", "test"))
    r.add_argument(
        "--synthetic-sizes",
        type=_sizes,
        default=(480, 96, 96),
        metavar="TRAIN,VALID,TEST",
        help="synthetic data as `dmd-fast train` made it (default 480,96,96)",
    )
    r.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data set")
    r.add_argument("--batch-size", type=int, default=None, help="default: the checkpoint's batch size")
    r.add_argument("--backend", default="auto", choices=("auto", "triton", "reference"))
    r.add_argument("--device", default="auto")
    r.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="autocast dtype")
    r.add_argument(
        "--out", default=None, metavar="PREDS.csv", help="CSV path (default: CSV on stdout, metrics on stderr)"
    )
    r.set_defaults(func=_predict)

    e = sub.add_parser(
        "export", help="torch.export (or AOTInductor-compile) the pruned inference forward of a trained model (.pt2)"
    )
    e.add_argument("--checkpoint", required=True, help="a dmd-fast checkpoint (OUT/best.pt or OUT/last.pt)")
    e.add_argument("--out", required=True, metavar="MODEL.pt2")
    e.add_argument("--batch-size", type=int, default=1, help="the program's static batch size (default 1)")
    e.add_argument(
        "--dynamic-batch", action="store_true", help="accept any batch size 1..4096 instead of --batch-size only"
    )
    e.add_argument(
        "--aoti",
        action="store_true",
        help="compile the program with AOTInductor into a self-contained package (reference backend; a C++ "
        "build: minutes on a small CPU)",
    )
    e.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "triton", "reference"),
        help="triton keeps the grouped attention as the custom op dmd_fast::attention_fwd_grouped",
    )
    e.add_argument("--device", default="auto")
    e.set_defaults(func=_export)

    from dmd_fast.bench.cli import add_bench_parser

    add_bench_parser(sub)
    for sp in sub.choices.values():  # --debug also after the subcommand
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train" and args.epochs is None and args.preset == "tiny":
        args.epochs = 12
    try:
        return args.func(args)
    except KNOWN_ERRORS as exc:
        print(f"dmd-fast {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"dmd-fast {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} (a bug in "
            "dmd_fast; rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 600 else text[:597] + "..."


if __name__ == "__main__":
    sys.exit(main())
