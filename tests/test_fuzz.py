"""Generated fuzz test over the public entry points (issue 11).

A seeded generator (``DMD_FUZZ_SEED``, default 11) draws calls: a valid base call with one argument
replaced by a value from that argument's good or bad pool (or none replaced; the grouped ops' ``seed``
argument included). Each case knows whether its value is valid, so every call asserts one of:
- invalid: a ``TypeError``/``ValueError`` (or the documented subclasses DataError, CheckpointError,
  FixtureError) whose message names the argument;
- valid: finite results equal to the reference (float64 reference attention / graph distillation,
  the reference-backend module, or the documented value).
File cases (pickles, checkpoints, the CLI) also assert that every file that existed before the call is
byte-identical after it and that no file appeared. ``test_case_count`` pins >= 300 calls per run.
"""

import itertools
import os
import pickletools
import random
import re

import pytest
import torch

from dmd_fast.cli import main
from dmd_fast.data.mmsa import DataError, load_mmsa, make_loaders, write_mmsa_pickle
from dmd_fast.data.synthetic import make_synthetic, synthetic_datasets
from dmd_fast.model.config import DMDConfig, get_preset
from dmd_fast.model.system import DMDSystem
from dmd_fast.nn import MultiheadAttention, SinusoidalPositionalEmbedding, TransformerEncoder
from dmd_fast.nn.graph_distill import GDUnit
from dmd_fast.nn.positional import sinusoidal_table
from dmd_fast.ops.attention import attention_weights, cross_modal_attention, cross_modal_attention_grouped
from dmd_fast.ops.encoder_embed import encoder_embedding_grouped
from dmd_fast.ops.encoder_ffn import encoder_ffn_block_grouped
from dmd_fast.ops.graph_distill import graph_distill
from dmd_fast.ops.linear_grouped import linear_grouped
from dmd_fast.ops.loss_terms import loss_terms
from dmd_fast.ops.margin_loss import margin_loss
from dmd_fast.parity import FixtureError, run_parity
from dmd_fast.reference.attention import cross_modal_attention as ref_attention
from dmd_fast.reference.encoder_embed import encoder_embedding as ref_embedding
from dmd_fast.reference.encoder_ffn import encoder_ffn_block as ref_ffn
from dmd_fast.reference.graph_distill import graph_distill as ref_graph_distill
from dmd_fast.reference.margin import margin_loss_loop
from dmd_fast.train.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from dmd_fast.train.grad_sum import backward_into_grads
from dmd_fast.train.trainer import Trainer, TrainOptions

SEED = int(os.environ.get("DMD_FUZZ_SEED", "11"))
NAN, INF = float("nan"), float("inf")
CLEAN = (TypeError, ValueError)  # DataError, FixtureError are ValueErrors; CheckpointError is separate
TINY = get_preset("tiny")
BAD_NUMBERS = [NAN, INF, -INF, "0.5", True, [0.1]]


class Case:
    def __init__(self, entry, arg, value, valid, run):
        self.entry, self.arg, self.value, self.valid, self.run = entry, arg, value, valid, run

    def __repr__(self):
        v = repr(self.value)
        return f"{self.entry}:{self.arg}={v[:40]}:{'ok' if self.valid else 'bad'}"


def expect_error(fn, name, types=CLEAN + (CheckpointError,)):
    with pytest.raises(types) as e:
        fn()
    msg = str(e.value)
    assert re.search(rf"(^|[^\w]){re.escape(name)}($|[^\w])", msg), f"{name!r} not named in: {msg}"
    return msg


def close(a, b, rtol, atol=0.0, what=""):
    assert torch.isfinite(a).all(), f"{what}: non-finite result"
    a, b = a.detach().double(), b.detach().double()
    scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")


def pick(rng, good, bad):
    """(value, valid) from a good or a bad pool (bad 2/3 of the time)."""
    if bad and (not good or rng.random() < 0.67):
        return rng.choice(bad), False
    return rng.choice(good), True


# ---------------------------------------------------------------------------------------------------
# attention ops
# ---------------------------------------------------------------------------------------------------


def _att_tensors(g, B, H, Lq, Lk, D, dtype):
    return [torch.randn(B, H, L, D, generator=g, dtype=dtype) for L in (Lq, Lk, Lk)]


def _attention_case(rng):
    B, H, Lq, Lk, D = (
        rng.choice([1, 2]),
        rng.choice([1, 2]),
        rng.choice([1, 3, 17]),
        rng.choice([1, 5, 16]),
        rng.choice([1, 5, 16]),
    )
    dtype = rng.choice([torch.float32, torch.float64])
    seed = rng.randrange(1 << 30)
    kw = dict(
        scale=None,
        dropout_p=0.0,
        key_lengths=None,
        offset_causal=False,
        generator=None,
        input_precision="ieee",
        backend="triton",
    )
    pools = {
        "scale": (
            [None, 0.0, 0.37, 2.0, 1e-45] + ([1e39, 1e-300] if dtype == torch.float64 else []),
            BAD_NUMBERS + [-1.0] + ([1e39] if dtype == torch.float32 else []),
        ),
        "dropout_p": ([0.0, 0.25], [NAN, 1.0, -0.1, "0.1", None, True]),
        "key_lengths": (["rand", None], ["list", "float", "shape", "over", "neg"]),
        "offset_causal": ([True, False], ["yes", 1]),
        "generator": ([None, "cpu"], ["x", 3]),
        "input_precision": (["ieee"], ["fp64", None]),
        "backend": (["triton", "reference", "auto"], ["cuda", None]),
        "q": (["ok"], [None, "list", "3d", "int", "bf16", "fp16", "D", "dtype_mix"]),
        "k": (["ok"], ["B", "D", None]),
        "v": (["ok"], ["L", "int"]),
    }
    arg = rng.choice(list(pools) + [None])
    value, valid = pick(rng, *pools[arg]) if arg else (None, True)

    def run():
        g = torch.Generator().manual_seed(seed)
        q, k, v = _att_tensors(g, B, H, Lq, Lk, D, dtype)
        args = dict(kw)
        if arg in ("scale", "dropout_p", "offset_causal", "input_precision", "backend"):
            args[arg] = value
        if arg == "generator":
            args["generator"] = torch.Generator().manual_seed(1) if value == "cpu" else value
            args["dropout_p"] = 0.2
        if arg == "key_lengths":
            args["key_lengths"] = {
                "rand": torch.randint(0, Lk + 1, (B,), generator=g),
                None: None,
                "list": [1] * B,
                "float": torch.ones(B),
                "shape": torch.ones(B + 1, dtype=torch.int64),
                "over": torch.full((B,), Lk + 1),
                "neg": torch.full((B,), -1),
            }[value]
        if arg == "scale" and valid and value and value >= 1e30:
            q = q / value  # scores O(1): a saturated softmax of 1e39-sized scores is ill-conditioned
        if arg == "q":
            if value == "D":
                q, k, v = _att_tensors(g, B, H, Lq, Lk, 129, dtype)
            q = {
                "ok": q,
                None: None,
                "list": q.tolist(),
                "3d": q[0],
                "int": q.long(),
                "bf16": q.bfloat16(),
                "fp16": q.half(),
                "D": q,
                "dtype_mix": q.float() if dtype == torch.float64 else q.double(),
            }[value]
        if arg == "k":
            k = {
                "ok": k,
                "B": torch.randn(B + 1, H, Lk, D, dtype=dtype),
                "D": torch.randn(B, H, Lk, D + 1, dtype=dtype),
                None: None,
            }[value]
        if arg == "v":
            v = {"ok": v, "L": torch.randn(B, H, Lk + 1, D, dtype=dtype), "int": v.long()}[value]
        if not valid:
            want = "k" if (arg, value) == ("q", "dtype_mix") else arg
            expect_error(lambda: cross_modal_attention(q, k, v, **args), want)
            return
        tensors = [t.requires_grad_() for t in (q, k, v)]
        p = args["dropout_p"]
        if p > 0:
            out, keep = cross_modal_attention(*tensors, return_keep_mask=True, **args)
        else:
            out, keep = cross_modal_attention(*tensors, **args), None
        do = torch.randn(out.shape, generator=g, dtype=dtype)
        grads = torch.autograd.grad(out, tensors, do)
        rt = [t.detach().double().requires_grad_() for t in tensors]
        kl = args["key_lengths"]
        ref = ref_attention(
            *rt, key_lengths=kl, offset_causal=args["offset_causal"], dropout_p=p, scale=args["scale"], keep_mask=keep
        )
        rgrads = torch.autograd.grad(ref, rt, do.double())
        tol = (2e-5, 2e-6) if dtype == torch.float32 else (1e-9, 1e-11)
        close(out, ref, *tol, what="out")
        for n, a, b in zip("qkv", grads, rgrads):
            close(a, b, tol[0] * 10, tol[1] * 10, what=f"d{n}")

    return Case("cross_modal_attention", arg, value, valid, run)


SEEDS_OK = [None, "pair", "row"]
SEEDS_BAD = ["int32", "shape", "list", "strided", "with_generator"]


def random_args(arg, value) -> dict:
    """The ``generator`` / ``seed`` keywords of a case that replaces ``arg`` by ``value`` (none otherwise)."""
    if arg == "generator":
        return dict(generator=torch.Generator().manual_seed(1) if value == "cpu" else value)
    if arg != "seed":
        return {}
    seed = {
        None: None,
        "pair": torch.tensor([5, 7]),
        "row": torch.arange(6).view(3, 2)[1],
        "int32": torch.tensor([5, 7], dtype=torch.int32),
        "shape": torch.tensor([5, 7, 9]),
        "list": [5, 7],
        "strided": torch.arange(4)[::2],
        "with_generator": torch.tensor([5, 7]),
    }[value]
    return dict(seed=seed, generator=torch.Generator() if value == "with_generator" else None)


def _grouped_case(rng):
    B, H, D = rng.choice([1, 2]), rng.choice([1, 2]), rng.choice([1, 5])
    lens = [(rng.choice([1, 4, 9]), rng.choice([1, 6])) for _ in range(rng.choice([1, 2, 3]))]
    G = len(lens)
    dtype = rng.choice([torch.float32, torch.float64])
    seed = rng.randrange(1 << 30)
    pools = {
        "problems": (["ok"], ["tensor", "empty", "pair", "H"]),
        "dropout_p": ([0.0, [0.0] * G], [[0.1] * (G + 1), [NAN] * G, NAN, "0.1"]),
        "key_lengths": (["some"], ["short", "bad"]),
        "scale": ([None, 0.0, 0.5], BAD_NUMBERS),
        "generator": ([None], ["x"]),
        "offset_causal": ([True], ["no"]),
        "seed": (SEEDS_OK, SEEDS_BAD),
    }
    arg = rng.choice(list(pools) + [None])
    value, valid = pick(rng, *pools[arg]) if arg else (None, True)

    def run():
        g = torch.Generator().manual_seed(seed)
        problems = [_att_tensors(g, B, H, lq, lk, D, dtype) for lq, lk in lens]
        args = dict(backend="triton")
        kls = None
        if arg in ("dropout_p", "scale", "generator", "offset_causal"):
            args[arg] = value
        if arg == "seed":
            args.update(random_args(arg, value))
        if arg == "key_lengths":
            kls = [
                torch.randint(0, lk + 1, (B,), generator=g) if i % 2 == 0 else None for i, (_, lk) in enumerate(lens)
            ]
            if value == "short":
                kls = kls + [None]
            if value == "bad":
                kls[0] = torch.full((B,), lens[0][1] + 2)
            args["key_lengths"] = kls
        if arg == "problems":
            probs = {
                "ok": problems,
                "tensor": problems[0][0],
                "empty": [],
                "pair": [problems[0][:2]],
                "H": problems + [_att_tensors(g, B, H + 1, 2, 2, D, dtype)],
            }[value]
        else:
            probs = problems
        if not valid:
            want = {"problems": "problems", "dropout_p": "dropout_p", "key_lengths": "key_lengths"}.get(arg, arg)
            if arg == "problems" and value == "H":
                want = f"problems[{G}]"
            if arg == "problems" and value == "pair":
                want = "problems[0]"
            if arg == "dropout_p" and isinstance(value, list) and len(value) == G:
                want = "dropout_p[0]"
            if arg == "key_lengths" and value == "bad":
                want = "key_lengths[0]"
            expect_error(lambda: cross_modal_attention_grouped(probs, **args), want)
            return
        if arg == "seed" and value is not None:  # a given seed keys the dropout: the same seed, the same output
            again = [cross_modal_attention_grouped(probs, **{**args, "dropout_p": 0.3}) for _ in range(2)]
            assert all(torch.equal(a, b) for a, b in zip(*again))
        flat = [t.requires_grad_() for p in problems for t in p]
        outs = cross_modal_attention_grouped([tuple(flat[3 * i : 3 * i + 3]) for i in range(G)], **args)
        dos = [torch.randn(o.shape, generator=g, dtype=dtype) for o in outs]
        grads = torch.autograd.grad(outs, flat, dos)
        tol = (2e-5, 2e-6) if dtype == torch.float32 else (1e-9, 1e-11)
        for i, (o, do) in enumerate(zip(outs, dos)):
            rt = [t.detach().double().requires_grad_() for t in flat[3 * i : 3 * i + 3]]
            ref = ref_attention(
                *rt,
                key_lengths=kls[i] if kls else None,
                offset_causal=args.get("offset_causal", False),
                scale=args.get("scale"),
            )
            close(o, ref, *tol, what=f"out[{i}]")
            for a, b in zip(grads[3 * i : 3 * i + 3], torch.autograd.grad(ref, rt, do.double())):
                close(a, b, tol[0] * 10, tol[1] * 10, what=f"grad[{i}]")

    return Case("cross_modal_attention_grouped", arg, value, valid, run)


def _weights_case(rng):
    seed = rng.randrange(1 << 30)
    pools = {"scale": ([None, 0.0, 3.0], BAD_NUMBERS), "key_lengths": (["ok"], ["float"]), "q": (["ok"], [None, "3d"])}
    arg = rng.choice(list(pools))
    value, valid = pick(rng, *pools[arg])

    def run():
        g = torch.Generator().manual_seed(seed)
        q, k, v = _att_tensors(g, 2, 2, 3, 4, 5, torch.float64)
        kl = torch.tensor([0, 3]) if arg != "key_lengths" or value == "ok" else torch.ones(2)
        scale = value if arg == "scale" else None
        if arg == "q":
            q = {"ok": q, None: None, "3d": q[0]}[value]
        if not valid:
            expect_error(lambda: attention_weights(q, k, v, key_lengths=kl, scale=scale), arg)
            return
        w = attention_weights(q, k, v, key_lengths=kl, scale=scale, offset_causal=True)
        ref = ref_attention(q, k, v, key_lengths=kl, scale=scale, offset_causal=True, return_weights=True)[1]
        close(w, ref, 1e-12, 1e-14, what="weights")
        assert torch.equal(w[0], torch.zeros_like(w[0]))  # sample 0 sees no key: weights 0

    return Case("attention_weights", arg, value, valid, run)


def _embed_case(rng):
    E, dtype = rng.choice([1, 6, 30]), rng.choice([torch.float32, torch.float64])
    seed = rng.randrange(1 << 30)
    pools = {
        "xs": (["ok", "strided", "repeated"], ["empty", "tensor", "2d", "E", "dtype_mix", "int"]),
        "table": (["ok"], ["short", "E"]),
        "scale": ([1.0, 0.0, 2.5], BAD_NUMBERS),
        "dropout_p": ([0.0, 0.3], [1.0, NAN, "0.1", [0.1]]),
        "seed": (SEEDS_OK, SEEDS_BAD),
        "generator": ([None, "cpu"], ["x"]),
        "backend": (["triton", "reference", "auto"], ["gpu", None]),
    }
    arg = rng.choice(list(pools) + [None])
    value, valid = pick(rng, *pools[arg]) if arg else (None, True)

    def run():
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(2, E, 5, generator=g, dtype=dtype).permute(2, 0, 1)  # (T, B, E) of (B, E, T) storage
        b = torch.randn(3, 1, E, generator=g, dtype=dtype)
        xs = {
            "ok": [a.contiguous(), b],
            "strided": [a, b],
            "repeated": [a, b, a, a],
            "empty": [],
            "tensor": a,
            "2d": [a[0], b],
            "E": [a, torch.randn(3, 1, E + 1, dtype=dtype)],
            "dtype_mix": [a, b.double() if dtype == torch.float32 else b.float()],
            "int": [a.long(), b.long()],
        }[value if arg == "xs" else "repeated"]
        table = sinusoidal_table(6, E)
        if arg == "table":
            table = {"ok": table, "short": table[:4], "E": sinusoidal_table(6, E + 1)}[value]
        kw = dict(scale=2.5, dropout_p=0.0, backend="triton")
        if arg in ("scale", "dropout_p", "backend"):
            kw[arg] = value
        kw.update(random_args(arg, value))
        if not valid:
            names = {"2d": "xs[0]", "int": "xs[0]", "E": "xs[1]", "dtype_mix": "xs[1]"}
            want = names.get(value, arg) if arg == "xs" else arg
            expect_error(lambda: encoder_embedding_grouped(xs, table, **kw), want)
            return
        if kw["dropout_p"] > 0 or kw.get("seed") is not None:  # the same seed (given or drawn), the same output
            runs = []
            for _ in range(2):
                torch.manual_seed(seed)
                runs.append(encoder_embedding_grouped(xs, table, **{**kw, "dropout_p": 0.3}))
            assert all(torch.equal(u, v) for u, v in zip(*runs))
            return
        leaves = [x.requires_grad_() for x in {id(x): x for x in xs}.values()]
        outs = encoder_embedding_grouped(xs, table, **kw)
        douts = [torch.randn(o.shape, generator=g, dtype=dtype) for o in outs]
        grads = torch.autograd.grad(outs, leaves, douts)
        rl = [x.detach().double().requires_grad_() for x in leaves]
        rxs = [rl[next(i for i, y in enumerate(leaves) if y is x)] for x in xs]
        refs = [ref_embedding(x, table.double(), kw["scale"]) for x in rxs]
        rgrads = torch.autograd.grad(refs, rl, [d.double() for d in douts])
        tol = (1e-6, 1e-6) if dtype == torch.float32 else (1e-12, 1e-12)
        for i, (o, r) in enumerate(zip(outs, refs)):
            close(o, r, *tol, what=f"out[{i}]")
        for i, (a_, b_) in enumerate(zip(grads, rgrads)):
            close(a_, b_, *tol, what=f"grad[{i}]")

    return Case("encoder_embedding_grouped", arg, value, valid, run)


def _ffn_params(g, E, dtype):
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype) * 0.3  # noqa: E731
    return [r(E, E), r(E), 1 + r(E), r(E), r(4 * E, E), r(4 * E), r(E, 4 * E), r(E)]


def _ffn_case(rng):
    """The post-attention block's dropout arguments (its shapes are fuzzed by tests/test_encoder_ffn.py)."""
    E, G = rng.choice([4, 10]), rng.choice([1, 2])
    seed = rng.randrange(1 << 30)
    pools = {
        "res_dropout": ([0.0, 0.2], [1.0, NAN, "0.1", [0.1] * (G + 1)]),
        "relu_dropout": ([0.0, 0.3], [-0.1, INF, None]),
        "seed": (SEEDS_OK, SEEDS_BAD),
        "generator": ([None, "cpu"], ["x"]),
        "eps": ([1e-5], [0.0, NAN, "1e-5"]),
        # True is valid only for an even group of equal shapes: the second group's shapes differ
        "pair_outputs": ([False], [True, "yes", 1]),
    }
    arg = rng.choice(list(pools) + [None])
    value, valid = pick(rng, *pools[arg]) if arg else (None, True)

    def run():
        g = torch.Generator().manual_seed(seed)
        shapes = [(3, 2), (5, 1)][:G]
        xs = [torch.randn(T, B, E, generator=g, dtype=torch.float64) for T, B in shapes]
        os_ = [torch.randn(T, B, E, generator=g, dtype=torch.float64) for T, B in shapes]
        params = list(zip(*[_ffn_params(g, E, torch.float64) for _ in range(G)]))
        kw = dict(backend="triton")
        if arg in ("res_dropout", "relu_dropout", "eps", "pair_outputs"):
            kw[arg] = value
        kw.update(random_args(arg, value))

        def call(**extra):
            return encoder_ffn_block_grouped(xs, os_, *[list(p) for p in params], **{**kw, **extra})

        if not valid:
            expect_error(call, arg)
            return
        if kw.get("res_dropout", 0.0) or kw.get("relu_dropout", 0.0) or kw.get("seed") is not None:
            torch.manual_seed(seed)
            first = call(res_dropout=0.2)
            torch.manual_seed(seed)
            assert all(torch.equal(u, v) for u, v in zip(first, call(res_dropout=0.2)))
            return
        for g_, out in enumerate(call()):
            want = ref_ffn(xs[g_], os_[g_], *(p[g_] for p in params), eps=kw.get("eps", 1e-5))
            close(out, want, 1e-12, 1e-12, what=f"out[{g_}]")

    return Case("encoder_ffn_block_grouped", arg, value, valid, run)


# ---------------------------------------------------------------------------------------------------
# graph distillation
# ---------------------------------------------------------------------------------------------------


def _gd_tensors(g, M, B, R, G, dtype=torch.float64):
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    prior = torch.softmax(torch.randn(M * (M - 1), generator=g, dtype=dtype), 0)
    return [r(M, B, 1), r(M, B, R), r(G, 1), r(G), r(G, R), r(G), r(1, 4 * G), r(1)], prior


def _gd_case(rng):
    M, B, R, G = rng.choice([2, 3]), rng.choice([1, 3]), rng.choice([3, 6]), rng.choice([2, 4])
    dtype = rng.choice([torch.float32, torch.float64])
    seed = rng.randrange(1 << 30)
    pools = {
        "alpha": ([0.125, 0.0, 2.0], BAD_NUMBERS + [None]),
        "reg": ([10.0, 0.0], BAD_NUMBERS + [None]),
        "w_losses": ([(1.0, 10.0), [0.5, 0.0]], ["ab", (1.0,), (1.0, NAN), (INF, 1.0), 3.0, None]),
        "total_weights": ([(1.0, 1.0, 1.0), (1.0, 0.0, 1.0)], [(1.0, 2.0), (NAN, 1.0, 1.0), "abc", None]),
        "prior": (["ok"], ["nan", "inf", "sum", "nan_unchecked"]),
        "logits": (["ok"], [None, "2d", "M1", "int"]),
        "reprs": (["ok"], ["B", None]),
        "softmax_scope": (["joint"], ["x", None]),
        "logit_metric": (["l1", "l2"], ["cosine", 1]),
        "repr_metric": (["l1", "l2", "cosine"], ["x"]),
        "backend": (["triton", "reference"], ["gpu"]),
    }
    arg = rng.choice(list(pools) + [None])
    value, valid = pick(rng, *pools[arg]) if arg else (None, True)

    def run():
        g = torch.Generator().manual_seed(seed)
        t, prior = _gd_tensors(g, M, B, R, G, dtype)
        kw = dict(backend="triton")
        if arg in (
            "alpha",
            "reg",
            "w_losses",
            "total_weights",
            "softmax_scope",
            "logit_metric",
            "repr_metric",
            "backend",
        ):
            kw[arg] = value
        if arg == "prior" and value != "ok":
            prior = prior.clone()
            if value in ("nan", "nan_unchecked"):
                prior[0] = NAN
            elif value == "inf":
                prior[-1] = INF
            else:
                prior = prior * 2
            if value == "nan_unchecked":
                kw["check_prior"] = False  # check_finite (default True) still names the prior
        if arg == "logits":
            t[0] = {"ok": t[0], None: None, "2d": t[0][0], "M1": t[0][:1], "int": t[0].long()}[value]
        if arg == "reprs":
            t[1] = {"ok": t[1], "B": t[1][:, :1] if B > 1 else t[1].repeat(1, 2, 1), None: None}[value]
        if not valid:
            expect_error(lambda: graph_distill(*t, prior, **kw), arg)
            return
        ts = [x.requires_grad_() for x in t]
        res = graph_distill(*ts, prior, **kw)
        rts = [x.detach().double().requires_grad_() for x in t]
        rkw = {k: v for k, v in kw.items() if k != "backend"}
        ref = ref_graph_distill(*rts, prior.double(), **rkw)
        tol = (1e-4, 1e-5) if dtype == torch.float32 else (1e-9, 1e-11)
        for name in ("loss_logit", "loss_repr", "loss_reg", "loss_total", "edges"):
            close(getattr(res, name), getattr(ref, name), *tol, what=name)
        ga = torch.autograd.grad(res.loss_total, ts, allow_unused=True)
        gb = torch.autograd.grad(ref.loss_total, rts, allow_unused=True)
        for i, (a, b) in enumerate(zip(ga, gb)):
            a = torch.zeros_like(ts[i]) if a is None else a
            b = torch.zeros_like(rts[i]) if b is None else b
            close(a, b, tol[0] * 10, tol[1] * 10, what=f"grad {i}")

    return Case("graph_distill", arg, value, valid, run)


# ---------------------------------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------------------------------


def _mha_case(rng):
    seed = rng.randrange(1 << 30)
    pools = {
        "embed_dim": ([8], [0, -8, 8.0, "8", None]),
        "num_heads": ([1, 2, 4], [0, -1, 3, 2.0]),
        "attn_dropout": ([0.0, 0.3], [1.0, NAN, -0.1]),
        "backend": (["triton"], ["x"]),
        "query": (["ok"], [None, "2d", "E", "int", "float64", "list"]),
        "key": (["ok"], ["B", "E"]),
        "value": (["ok"], ["T"]),
        "attn_mask": (["causal", "masked_row"], ["list", "shape", "bool", "3d"]),
    }
    arg = rng.choice(list(pools) + [None])
    value, valid = pick(rng, *pools[arg]) if arg else (None, True)

    def run():
        ctor = dict(embed_dim=8, num_heads=2, attn_dropout=0.0, backend="triton")
        if arg in ctor:
            ctor[arg] = value
        if not valid and arg in ctor:
            expect_error(lambda: MultiheadAttention(**ctor), "embed_dim" if (arg, value) == ("num_heads", 3) else arg)
            return
        torch.manual_seed(seed)
        mha = MultiheadAttention(**ctor).eval()
        ref = MultiheadAttention(**{**ctor, "backend": "reference"}).eval()
        ref.load_state_dict(mha.state_dict())
        E = ctor["embed_dim"]
        x, src = torch.randn(4, 2, E), torch.randn(6, 2, E)
        q, k, v, mask = x, src, src, None
        if arg == "query":
            q = {
                "ok": x,
                None: None,
                "2d": x[0],
                "E": torch.randn(4, 2, E + 1),
                "int": x.long(),
                "float64": x.double(),
                "list": x.tolist(),
            }[value]
        if arg == "key":
            k = {"ok": src, "B": torch.randn(6, 3, E), "E": torch.randn(6, 2, E - 1)}[value]
        if arg == "value":
            v = {"ok": src, "T": torch.randn(5, 2, E)}[value]
        if arg == "attn_mask":
            full = torch.zeros(4, 6)
            full[torch.triu(torch.ones(4, 6, dtype=torch.bool), diagonal=3)] = -INF
            if value == "masked_row":
                full[2] = -INF
            mask = {
                "causal": full,
                "masked_row": full,
                "list": full.tolist(),
                "shape": full[:, :5],
                "bool": full == 0,
                "3d": full[None],
            }[value]
        if not valid:
            expect_error(lambda: mha(q, k, v, attn_mask=mask), arg)
            return
        out, _ = mha(q, k, v, attn_mask=mask)
        if mask is None:  # the Triton core against the reference core
            close(out, ref(q, k, v)[0], 1e-5, 1e-6, what="mha")
        else:  # the dense path is the reference math; masked rows give out_proj(0) = bias
            rows = (mask != -INF).any(-1)
            close(out[rows], ref(q, k, v, attn_mask=mask)[0][rows], 1e-6, 1e-7, what="mha dense")
            close(out[~rows], mha.out_proj.bias.expand_as(out[~rows]), 0, 0, what="masked row")

    return Case("MultiheadAttention", arg, value, valid, run)


def _encoder_case(rng):
    seed = rng.randrange(1 << 30)
    pools = {
        "embed_dim": ([8], [0, -2, 7.5]),
        "num_heads": ([2], [0, 3]),
        "layers": ([1, 2, 0], [-1, 1.5]),
        "attn_dropout": ([0.0], [1.5]),
        "res_dropout": ([0.0], [NAN]),
        "embed_dropout": ([0.0], [-0.5]),
        "attn_mask": ([True, False], ["yes"]),
        "x_in": (["ok"], ["2d", "T0", "B0", "E", "int", None, "float64"]),
        "x_in_k": (["both", "none"], ["only_k", "only_v", "E", "B"]),
    }
    arg = rng.choice(list(pools) + [None])
    value, valid = pick(rng, *pools[arg]) if arg else (None, True)

    def run():
        ctor = dict(
            embed_dim=8,
            num_heads=2,
            layers=2,
            attn_dropout=0.0,
            res_dropout=0.0,
            embed_dropout=0.0,
            attn_mask=True,
            backend="triton",
        )
        if arg in ctor:
            ctor[arg] = value
        if not valid and arg in ctor:
            want = "embed_dim" if (arg, value) == ("num_heads", 3) else arg
            expect_error(lambda: TransformerEncoder(**ctor), want)
            return
        torch.manual_seed(seed)
        enc = TransformerEncoder(**ctor)
        ref = TransformerEncoder(**{**ctor, "backend": "reference"})
        ref.load_state_dict(enc.state_dict())
        E = ctor["embed_dim"]
        x, src = torch.randn(5, 2, E), torch.randn(7, 2, E)
        xs, xk, xv = x, None, None
        if arg == "x_in":
            xs = {
                "ok": x,
                "2d": x[0],
                "T0": x[:0],
                "B0": x[:, :0],
                "E": torch.randn(5, 2, E + 2),
                "int": x.long(),
                None: None,
                "float64": x.double(),
            }[value]
        if arg == "x_in_k":
            xk, xv = {
                "both": (src, src),
                "none": (None, None),
                "only_k": (src, None),
                "only_v": (None, src),
                "E": (torch.randn(7, 2, 3), torch.randn(7, 2, 3)),
                "B": (torch.randn(7, 3, E),) * 2,
            }[value]
        if not valid:
            want = {"only_k": "x_in_v", "only_v": "x_in_k"}.get(value, arg)
            expect_error(lambda: enc(xs, xk, xv), want)
            return
        close(enc(xs, xk, xv), ref(xs, xk, xv), 1e-5, 1e-6, what="encoder")

    return Case("TransformerEncoder", arg, value, valid, run)


def _gd_unit_case(rng):
    seed = rng.randrange(1 << 30)
    pools = {
        "n_classes": ([1], [0, 1.0]),
        "hidden_size": ([6], [-1, 0, 2.5, "6"]),
        "gd_size": ([4], [0, -3]),
        "gd_prior": (["ok"], [[NAN] * 6, [1.0] * 6, [INF] + [0.0] * 5, [-0.5, 1.5, 0, 0, 0, 0], [1 / 5] * 5, "abc"]),
        "gd_reg": ([10.0], BAD_NUMBERS + [None]),
        "w_losses": ([(1.0, 10.0)], ["ab", (1.0, NAN), 2.0]),
        "metric": (["l1", "l2"], ["cosine", None]),
        "alpha": ([0.125], BAD_NUMBERS + [None]),
        "total_weights": ([(1.0, 0.0, 1.0)], [(1.0,), (1.0, 1.0, INF)]),
        "softmax_scope": (["joint"], ["all"]),
        "logits": (["ok"], ["M", None, "1d"]),
    }
    arg = rng.choice(list(pools) + [None])
    value, valid = pick(rng, *pools[arg]) if arg else (None, True)

    def run():
        ctor = dict(
            n_classes=1,
            hidden_size=6,
            gd_size=4,
            to_idx=range(3),
            from_idx=range(3),
            gd_prior=torch.softmax(torch.arange(6.0), 0).tolist(),
            gd_reg=10.0,
            w_losses=(1.0, 10.0),
            metric="l1",
            alpha=0.125,
            total_weights=(1.0, 1.0, 1.0),
            softmax_scope="joint",
            backend="triton",
        )
        if arg in ctor and value != "ok":
            ctor[arg] = value
        if not valid and arg in ctor:
            expect_error(lambda: GDUnit(**ctor), arg)
            return
        torch.manual_seed(seed)
        unit = GDUnit(**ctor)
        ref = GDUnit(**{**ctor, "backend": "reference"})
        ref.load_state_dict(unit.state_dict())
        logits, reprs = torch.randn(3, 4, ctor["n_classes"]), torch.randn(3, 4, ctor["hidden_size"])
        if arg == "logits":
            logits = {"ok": logits, "M": logits[:2], None: None, "1d": logits[0, :, 0]}[value]
        if not valid:
            expect_error(lambda: unit(logits, reprs), arg)
            return
        a, b = unit(logits, reprs), ref(logits, reprs)
        for name in ("loss_logit", "loss_repr", "loss_reg", "loss_total", "edges"):
            close(getattr(a, name), getattr(b, name), 1e-5, 1e-6, what=name)

    return Case("GDUnit", arg, value, valid, run)


def _positional_case(rng):
    pools = {"embedding_dim": ([1, 7, 8], [0, -1, 2.5]), "x": (["ok", "T0"], [None, "2d", "list"])}
    arg = rng.choice(list(pools))
    value, valid = pick(rng, *pools[arg])

    def run():
        dim = value if arg == "embedding_dim" else 8
        if not valid and arg == "embedding_dim":
            expect_error(lambda: SinusoidalPositionalEmbedding(dim), arg)
            return
        pe = SinusoidalPositionalEmbedding(dim)
        x = torch.randn(4, 2, dim)
        x[3, 1] = 0.0  # a padded frame: no embedding
        if arg == "x":
            x = {"ok": x, "T0": x[:0], None: None, "2d": x[0], "list": x.tolist()}[value]
        if not valid:
            expect_error(lambda: pe(x), "x")
            return
        out = pe(x)
        assert out.shape == x.shape and torch.isfinite(out).all()
        if x.shape[0]:
            assert torch.equal(out[3, 1], torch.zeros(dim)) and not torch.equal(out[0, 0], torch.zeros(dim)) or dim == 1

    return Case("SinusoidalPositionalEmbedding", arg, value, valid, run)


# ---------------------------------------------------------------------------------------------------
# model, config
# ---------------------------------------------------------------------------------------------------

_MODELS = {}


def _tiny_models():
    if not _MODELS:
        torch.manual_seed(0)
        _MODELS["ref"] = DMDSystem(TINY, backend="reference").eval()
        _MODELS["tri"] = DMDSystem(TINY, backend="triton").eval()
        _MODELS["tri"].load_state_dict(_MODELS["ref"].state_dict())
    return _MODELS["ref"], _MODELS["tri"]


def _dmd_inputs(g, B, dtype=torch.float32):
    (tl, ta, tv), (dl, da, dv) = TINY.seq_lens, TINY.feature_dims
    return [torch.randn(B, t, d, generator=g, dtype=dtype) for t, d in ((tl, dl), (ta, da), (tv, dv))]


def _dmd_case(rng):
    seed = rng.randrange(1 << 30)
    pools = {
        "text": (["ok"], ["float64", "float16", "B0", "T", None, "int"]),
        "audio": (["ok"], ["B", "d", "2d"]),
        "vision": (["ok"], ["float64"]),
        "labels": (["ok", None, "flat"], ["B", "2col", "int", "list", "3d"]),
        "margin_no_anchor": (["zero", "upstream"], ["skip"]),
    }
    arg = rng.choice(list(pools))
    value, valid = pick(rng, *pools[arg])
    triton = valid and rng.random() < 0.3

    def run():
        ref, tri = _tiny_models()
        g = torch.Generator().manual_seed(seed)
        text, audio, vision = _dmd_inputs(g, 2)
        labels = torch.randn(2, 1, generator=g)
        if arg == "text":
            text = {
                "ok": text,
                "float64": text.double(),
                "float16": text.half(),
                "B0": text[:0],
                "T": text[:, 1:],
                None: None,
                "int": text.long(),
            }[value]
        if arg == "audio":
            audio = {"ok": audio, "B": audio[:1], "d": audio[..., 1:], "2d": audio[0]}[value]
        if arg == "vision":
            vision = {"ok": vision, "float64": vision.double()}[value]
        if arg == "labels":
            labels = {
                "ok": labels,
                None: None,
                "flat": labels.view(-1),
                "B": labels[:1],
                "2col": labels.repeat(1, 2),
                "int": labels.long(),
                "list": labels.tolist(),
                "3d": labels[None],
            }[value]
        if arg == "margin_no_anchor":
            if not valid:
                expect_error(lambda: DMDSystem(TINY, backend="reference", margin_no_anchor=value), arg)
                return
            ref.margin_no_anchor = value
        if not valid:
            expect_error(lambda: ref(text, audio, vision, labels), arg)
            return
        out, losses = ref.train()(text, audio, vision, labels) if labels is not None else ref(text, audio, vision)
        ref.margin_no_anchor = "zero"
        ref.eval()
        assert all(torch.isfinite(v).all() for v in out.values())
        if losses is not None:
            assert all(torch.isfinite(v).all() for v in losses.values() if torch.is_tensor(v))
        if triton:
            a, _ = tri(text, audio, vision)
            b, _ = ref(text, audio, vision)
            for key in ("output_logit", "logits_c", "last_h_l", "last_h_v", "last_h_a"):
                close(a[key], b[key], 1e-4, 1e-5, what=key)

    return Case("DMD/DMDSystem", arg, value, valid, run)


_CONFIG_BAD = {
    "d_model": [0, -1, 12.0, 13],
    "num_heads": [0, 5],
    "nlevels": [0],
    "batch_size": [0, -4, 2.5],
    "learning_rate": [0.0, -1e-3, NAN, INF, "1e-3"],
    "grad_clip": [0.0, NAN, -2.0],
    "attn_dropout": [1.0, NAN],
    "embed_dropout": [-0.1],
    "update_epochs": [0],
    "early_stop": [0],
    "patience": [-1],
    "gd_alpha": [NAN, None],
    "gd_reg": [INF],
    "gd_w_losses": [(1.0,), "ab", (1.0, NAN)],
    "feature_dims": [(32, 8), (32, 0, 12), "abc"],
    "seq_lens": [(12, -1, 16)],
    "conv_kernels": [(3, 1.5, 3)],
    "ort_semantics": ["x"],
    "attn_mask": ["yes"],
    "gd_size_homo": [0],
}
_CONFIG_GOOD = {
    "batch_size": [1, 7],
    "learning_rate": [1e-5],
    "grad_clip": [-1.0, 0.1],
    "attn_dropout": [0.0, 0.9],
    "patience": [0],
    "gd_alpha": [0.0, -1.0],
}


_CONFIG_ALL = [(a, v, False) for a, vs in _CONFIG_BAD.items() for v in vs] + [
    (a, v, True) for a, vs in _CONFIG_GOOD.items() for v in vs
]


_CONFIG_NEXT = itertools.cycle(_CONFIG_ALL)


def _config_case(rng):
    """Every field's values in turn (not drawn: each field is covered whatever the seed)."""
    arg, value, valid = next(_CONFIG_NEXT)

    def run():
        if not valid:
            divides = (arg, value) in (("num_heads", 5), ("d_model", 13))
            want = "config.d_model" if divides else f"config.{arg}"
            msg = expect_error(lambda: TINY.replace(**{arg: value}), want)
            assert msg.startswith("config.")
            expect_error(lambda: DMDConfig.from_dict({**TINY.to_dict(), arg: value}), want)
            return
        cfg = TINY.replace(**{arg: value})
        assert getattr(cfg, arg) == value and DMDConfig.from_dict(cfg.to_dict()) == cfg

    return Case("DMDConfig", arg, value, valid, run)


# ---------------------------------------------------------------------------------------------------
# data, checkpoints, parity, CLI (files must stay byte-identical on failure)
# ---------------------------------------------------------------------------------------------------


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _pickle_case(rng):
    seed = rng.randrange(1 << 30)
    kind = rng.choice(["length", "flip", "truncate", "length", "schema", "ok"])

    def run(tmp):
        d = make_synthetic({"feature_dims": (4, 3, 2), "seq_lens": (3, 3, 3)}, 2, 1, 1, seed=seed % 100)
        r = random.Random(seed)
        if kind == "schema":
            split = r.choice(["train", "valid", "test"])
            key = r.choice(["text", "audio", "vision", "regression_labels"])
            if r.random() < 0.5:
                del d[split][key]
            else:
                d[split][key] = d[split][key][..., :1] * NAN
        path = tmp / "data.pkl"
        write_mmsa_pickle(path, d)
        raw = bytearray(path.read_bytes())
        ops = [(op.name, pos) for op, _, pos in pickletools.genops(bytes(raw))]
        if kind == "length":
            name, pos = r.choice([o for o in ops if o[0] in ("BYTEARRAY8", "FRAME", "SHORT_BINUNICODE", "BININT")])
            width = {"BYTEARRAY8": 8, "FRAME": 8, "SHORT_BINUNICODE": 1, "BININT": 4}[name]
            raw[pos + 1 : pos + 1 + width] = r.choice([2 ** (8 * width) - 1, 2 ** (8 * width - 2), 255]).to_bytes(
                8, "little"
            )[:width]
        elif kind == "flip":
            for _ in range(r.choice([1, 4])):
                raw[r.randrange(len(raw))] = r.randrange(256)
        elif kind == "truncate":
            raw = raw[: r.randrange(1, len(raw))]
        path.write_bytes(bytes(raw))
        before = snapshot(tmp)
        try:
            data = load_mmsa(path)
        except DataError as exc:
            assert "data.pkl" in str(exc) or "split" in str(exc), str(exc)
        except (TypeError, ValueError) as exc:  # a flipped byte can leave a valid pickle of other numbers
            raise AssertionError(f"not the loader's DataError: {type(exc).__name__}: {exc}") from exc
        else:
            for ds in data.values():
                assert all(torch.isfinite(t).all() for t in (ds.text, ds.audio, ds.vision, ds.labels))
        assert snapshot(tmp) == before

    return Case("load_mmsa", "pickle", kind, kind == "ok", run)


def _loader_case(rng):
    pools = {
        "batch_size": ([1, 3], [0, -1, 2.5, "2", None]),
        "seed": ([0, 7], [1.5, "s"]),
        "n_train": ([1, 3], [0, -1, 1.5]),
        "audio_inf_frac": ([0.0, 0.5], [NAN, 1.5, -0.1]),
        "label_noise": ([0.0, 0.3], [NAN, -1.0]),
        "preset": (["mosi", "tiny_dims"], ["imdb", None]),
    }
    arg = rng.choice(list(pools))
    value, valid = pick(rng, *pools[arg])

    def run():
        dims = {"feature_dims": (4, 3, 2), "seq_lens": (3, 3, 3)}
        if arg in ("batch_size", "seed"):
            ds = synthetic_datasets(dims, 3, 1, 1)
            call = lambda: make_loaders(ds, **{arg: value})  # noqa: E731
        elif arg == "preset":
            call = lambda: make_synthetic(dims if value == "tiny_dims" else value, 2, 1, 1)  # noqa: E731
        else:
            call = lambda: make_synthetic(dims, **({"n_train": value} if arg == "n_train" else {arg: value}))  # noqa: E731
        if not valid:
            want = "preset_name_or_dims" if arg == "preset" else arg
            expect_error(call, want)
            return
        out = call()
        assert out and all(len(v) >= 1 for v in out.values())

    return Case("data", arg, value, valid, run)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One finished 1-epoch tiny run: last.pt, best.pt, log.jsonl."""
    out = tmp_path_factory.mktemp("fuzz_run")
    assert (
        main(
            [
                "train",
                "--epochs",
                "1",
                "--synthetic-sizes",
                "16,8,8",
                "--out",
                str(out),
                "--backend",
                "reference",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    return out


def _drop(obj, path):
    """Delete the entry at ``path`` (a tuple of keys) from a nested dict."""
    for k in path[:-1]:
        obj = obj[k]
    del obj[path[-1]]


def _checkpoint_case(rng):
    seed = rng.randrange(1 << 30)
    keys = [
        ("config",),
        ("model",),
        ("optimizer",),
        ("scheduler",),
        ("rng",),
        ("trainer",),
        ("format",),
        ("trainer", "history"),
        ("trainer", "epoch"),
        ("rng", "numpy"),
        ("rng", "torch"),
    ]
    kind = rng.choice(["drop", "drop", "drop", "bytes", "config_value", "config_key", "model_key", "ok", "cli"])
    key = rng.choice(keys)

    def run(tmp, run_dir):
        for name, data in snapshot(run_dir).items():
            (tmp / name).write_bytes(data)
        last = tmp / "last.pt"
        obj = torch.load(last, weights_only=False)
        r = random.Random(seed)
        want = "last.pt"
        if kind == "drop":
            _drop(obj, key)
            want = key[-1]
        elif kind == "config_value":
            obj["config"]["d_model"] = r.choice([0, -1, 13, "x"])
            want = "config"
        elif kind == "config_key":
            obj["config"]["unknown_knob"] = 1
            want = "config"
        elif kind == "model_key":
            obj["model"].pop(next(iter(obj["model"])))
            want = "model"
        if kind != "bytes":
            torch.save(obj, last)
        else:
            raw = bytearray(last.read_bytes())
            cut = r.randrange(len(raw))
            last.write_bytes(bytes(raw[:cut]) if r.random() < 0.5 else bytes(raw[:cut]) + b"\x00" * 8)
        before = snapshot(tmp)
        if kind == "cli":  # resume through the CLI: a finished file is unchanged and the run continues
            _drop(obj, key)
            torch.save(obj, last)
            before = snapshot(tmp)
            rc = main(
                [
                    "train",
                    "--epochs",
                    "2",
                    "--synthetic-sizes",
                    "16,8,8",
                    "--out",
                    str(tmp),
                    "--resume",
                    "--backend",
                    "reference",
                    "--threads",
                    "1",
                ]
            )
            assert rc == 2
            assert snapshot(tmp) == before
            return
        torch.manual_seed(0)
        system = DMDSystem(TINY, backend="reference")
        loaders = make_loaders(synthetic_datasets(TINY, 16, 8, 8), batch_size=TINY.batch_size)
        trainer = Trainer(
            system,
            loaders,
            TrainOptions(max_epochs=2, out_dir=str(tmp), device="cpu", log_every_epoch=False, progress=False),
        )
        if kind == "ok":
            load_checkpoint(last, trainer)
            assert trainer.epoch == 1 and read_checkpoint(tmp / "best.pt")["config"] == TINY.to_dict()
        else:
            msg = expect_error(lambda: load_checkpoint(last, trainer), want)
            assert "last.pt" in msg
        assert snapshot(tmp) == before

    return Case("checkpoint", key if kind in ("drop", "cli") else kind, kind, kind == "ok", run)


_CLI_BAD = [
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--epochs", "-1"], "--epochs"),
    (["train", "--epochs", "1.5"], "--epochs"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--batch-size", "x"], "--batch-size"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--threads", "0"], "--threads"),
    (["train", "--synthetic-sizes", "1,0,1"], "--synthetic-sizes"),
    (["train", "--seeds", "a,b"], "--seeds"),
    (["train", "--amp", "fp8"], "--amp"),
    (["parity", "--fixture", "f", "--tol", "nan"], "--tol"),
    (["parity", "--fixture", "f", "--tol", "0"], "--tol"),
    (["attention-map", "--checkpoint", "c", "--sample", "-1"], "--sample"),
    (["bench", "--time-budget", "nan"], "--time-budget"),
    (["bench", "--time-budget", "0"], "--time-budget"),
    (["bench", "--time-budget", "-5"], "--time-budget"),
    (["bench", "--rep-ms", "nan"], "--rep-ms"),
    (["bench", "--rep-ms", "inf"], "--rep-ms"),
    (["bench", "--rep-ms", "0"], "--rep-ms"),
    (["export", "--checkpoint", "c", "--out", "m.pt2", "--batch-size", "x"], "--batch-size"),
]
_CLI_RUNTIME = [
    "out_file",
    "out_under_file",
    "map_out_file",
    "layer",
    "map_missing_key",
    "preset",
    "data_missing",
    "parity_missing",
    "parity_bad",
    "bench_device",
    "export_batch",
    "export_aoti_triton",
]


def _cli_case(rng):
    if rng.random() < 0.6:
        argv, flag = rng.choice(_CLI_BAD)

        def run(tmp, capsys):
            with pytest.raises(SystemExit) as e:
                main(argv + (["--out", str(tmp / "o")] if argv[0] == "train" else []))
            assert e.value.code == 2
            err = capsys.readouterr().err
            assert flag in err and "Traceback" not in err
            assert not (tmp / "o").exists()

        return Case("cli", " ".join(argv), flag, False, run)
    kind = rng.choice(_CLI_RUNTIME)

    def run(tmp, capsys, run_dir):
        f = tmp / "file"
        f.write_text("keep")
        best = str(run_dir / "best.pt")
        if kind == "map_missing_key":
            obj = torch.load(best, weights_only=False)
            del obj[rng_key]
            torch.save(obj, tmp / "broken.pt")
        before = snapshot(tmp)
        argv, want = {
            "out_file": (["train", "--epochs", "1", "--out", str(f)], "--out"),
            "out_under_file": (["train", "--epochs", "1", "--out", str(f / "run")], "--out"),
            "map_out_file": (["attention-map", "--checkpoint", best, "--out", str(f)], "--out"),
            "layer": (["attention-map", "--checkpoint", best, "--layer", "99", "--out", str(tmp / "m")], "layer"),
            "map_missing_key": (
                ["attention-map", "--checkpoint", str(tmp / "broken.pt"), "--out", str(tmp / "m")],
                f"'{rng_key}'",
            ),
            "preset": (["train", "--preset", "imdb", "--out", str(tmp / "o")], "preset"),
            "data_missing": (["train", "--data", str(tmp / "none.pkl"), "--out", str(tmp / "o")], "none.pkl"),
            "parity_missing": (["parity", "--fixture", str(tmp / "none.pt")], "none.pt"),
            "parity_bad": (["parity", "--fixture", str(f)], str(f)),
            "bench_device": (["bench", "--quick", "--device", "tpu", "--out", str(tmp / "b")], "--device"),
            "export_batch": (
                ["export", "--checkpoint", best, "--out", str(tmp / "m.pt2"), "--batch-size", "0"],
                "--batch-size",
            ),
            "export_aoti_triton": (
                ["export", "--checkpoint", best, "--out", str(tmp / "m.pt2"), "--aoti", "--backend", "triton"],
                "--aoti",
            ),
        }[kind]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and want in err, err
        assert snapshot(tmp) == before  # nothing changed, nothing created

    rng_key = rng.choice(["config", "model"])
    return Case("cli", kind, rng_key if kind == "map_missing_key" else None, False, run)


def _parity_case(rng):
    kind = rng.choice(["tol", "backend", "keys", "missing"])
    value = {
        "tol": rng.choice([NAN, -1.0, 0.0, "x"]),
        "backend": rng.choice(["gpu", None]),
        "keys": rng.choice(["grads", "config", "inputs"]),
        "missing": None,
    }[kind]

    def run(tmp):
        if kind == "tol":
            expect_error(lambda: run_parity(tmp / "x.pt", tol=value), "tol")
        elif kind == "backend":
            expect_error(lambda: run_parity(tmp / "x.pt", backend=value), "backend")
        elif kind == "missing":
            with pytest.raises(FixtureError, match="x.pt"):
                run_parity(tmp / "x.pt")
        else:
            torch.save(
                {
                    k: {}
                    for k in (
                        "config",
                        "state_dict",
                        "gd_homo_state_dict",
                        "gd_hetero_state_dict",
                        "param_names",
                        "inputs",
                        "outputs",
                        "losses",
                        "grads",
                    )
                    if k != value
                },
                tmp / "fx.pt",
            )
            before = snapshot(tmp)
            with pytest.raises(FixtureError, match=value):
                run_parity(tmp / "fx.pt")
            assert snapshot(tmp) == before

    return Case("run_parity", kind, value, False, run)


# ---------------------------------------------------------------------------------------------------
# the generated cases
# ---------------------------------------------------------------------------------------------------


def _grad_sum_case(rng):
    pools = {
        "loss": (["ok", "sum1"], [None, "vector", "no_grad", 1.0]),
        "params": (["ok", "tuple", "frozen"], [None, "tensor", "with_none", "w"]),
    }
    arg = rng.choice(list(pools))
    value, valid = pick(rng, *pools[arg])

    def run():
        w = torch.randn(3, dtype=torch.float64, requires_grad=True)
        w.grad = torch.randn(3, dtype=torch.float64)
        start = w.grad.clone()
        loss = (w * w).sum()
        if arg == "loss":
            loss = {
                "ok": loss,
                "sum1": loss.reshape(1),
                None: None,
                "vector": w * 2,
                "no_grad": loss.detach(),
                1.0: 1.0,
            }[value]
        params = [w]
        if arg == "params":
            params = {"ok": [w], "tuple": (w,), "frozen": [w, torch.ones(2)], None: None, "tensor": w}.get(value)
            params = {"with_none": [w, None], "w": "w"}.get(value, params)
        if not valid:
            expect_error(lambda: backward_into_grads(loss, params), "params" if arg == "params" else "loss")
            assert torch.equal(w.grad, start), "a refused call must leave the gradients as they were"
            return
        backward_into_grads(loss, params)
        close(w.grad, start + 2 * w.detach(), rtol=0, what="grad")

    return Case("backward_into_grads", arg, value, valid, run)


# ---------------------------------------------------------------------------------------------------
# fused loss terms
# ---------------------------------------------------------------------------------------------------


def _loss_terms_case(rng):
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    a, b = (torch.randn(3, 4, 5, generator=g, dtype=torch.float64) for _ in range(2))
    p, y = (torch.randn(3, 1, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn((), generator=g, dtype=torch.float64)
    base = dict(
        terms=[("l1", p, y), ("mse", a, b), ("cosine", a, b), ("value", v, None)],
        weights=[1.0, 0.1, 0.01, 0.05],
        groups=[0, 1, 1, -1],
        n_groups=2,
        eps=1e-12,
    )
    pools = {
        "terms": (
            [[("mse", a.transpose(0, 2), b.transpose(0, 2))], [("l1", p, y)]],
            [
                [],
                "terms",
                [("huber", a, b)],
                [("l1", a, b[:1])],
                [("value", a, None)],
                [("cosine", p, y)],
                [("l1", a, b.float())],
                [("mse", a, None)],
                [("l1", a)],
            ],
        ),  # fmt: skip
        "weights": ([[2.0, 0.0, -1.0, 0.5]], [[1.0], [NAN, 1.0, 1.0, 1.0], "1", None]),
        "groups": ([[-1, -1, -1, -1], [1, 0, 0, 1]], [[0], [0, 1, 2, 0], [0, -2, 0, 0], [0.5, 0, 0, 0]]),
        "n_groups": ([2, 3], [-1, 1.5, "2"]),
        "eps": ([1e-8, 0.0], [NAN, -1.0, "x"]),
    }
    arg = rng.choice(list(pools))
    value, valid = pick(rng, *pools[arg])
    kw = dict(base, **{arg: value})
    if arg == "terms" and valid:
        kw.update(weights=[1.0] * len(value), groups=None, n_groups=0)

    def run():
        if not valid:
            expect_error(lambda: loss_terms(kw["terms"], **{k: kw[k] for k in kw if k != "terms"}, backend="triton"),
                         arg if arg != "groups" else "groups")  # fmt: skip
            return
        rest = {k: kw[k] for k in kw if k != "terms"}
        got = loss_terms(kw["terms"], **rest, backend="triton")
        want = loss_terms(kw["terms"], **rest, backend="reference")
        for x, ref in zip(got, want):
            close(x, ref, rtol=1e-12, atol=1e-14, what="loss_terms")

    return Case("loss_terms", arg, value, valid, run)


def _margin_case(rng):
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    N = rng.choice([3, 12, 48])
    feats = torch.randn(N, 6, generator=g, dtype=torch.float64)
    ids = (torch.randint(0, 3, (N, 1), generator=g) * 0.5).double()
    pools = {
        "ids": (["ok", "flat", "all_equal"], [None, "short", "int", "3d"]),
        "feats": (["ok", "strided"], [None, "1d", "fp16", "empty", "too_many"]),
    }
    arg = rng.choice(list(pools))
    value, valid = pick(rng, *pools[arg])
    i, f = ids, feats
    if arg == "ids":
        i = {"ok": ids, "flat": ids.reshape(-1), "all_equal": torch.ones_like(ids), None: None,
             "short": ids[:-1], "int": ids.long(), "3d": ids.reshape(N, 1, 1)}[value]  # fmt: skip
    else:
        many = torch.randn(65, 6, dtype=torch.float64)
        f = {"ok": feats, "strided": feats.t().contiguous().t(), None: None, "1d": feats[:, 0],
             "fp16": feats.half(), "empty": feats[:0], "too_many": many}[value]  # fmt: skip
        if value == "empty":
            i = ids[:0]
        if value == "too_many":
            i = torch.zeros(65, 1, dtype=torch.float64)

    def run():
        if not valid:
            expect_error(lambda: margin_loss(i, f, backend="triton"), arg)
            return
        got = margin_loss(i, f, backend="triton")
        close(got, margin_loss_loop(i.reshape(-1, 1), f), rtol=1e-12, atol=1e-14, what="margin_loss")

    return Case("margin_loss", arg, value, valid, run)


def _linear_case(rng):
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    x, w, b = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((4, 6), (3, 6), (3,)))
    pools = {
        "xs": (["ok", "strided"], [None, "1d", "k_mismatch", "fp32", "empty"]),
        "ws": (["ok"], [None, "3d", "fp32"]),
        "bs": (["ok"], [None, "n_mismatch", "two"]),
    }
    arg = rng.choice(list(pools))
    value, valid = pick(rng, *pools[arg])
    xs, ws, bs = [x], [w], [b]
    if arg == "xs":
        xs = {"ok": [x], "strided": [x.t().contiguous().t()], None: None, "1d": [x[0]], "k_mismatch": [x[:, :5]],
              "fp32": [x.float()], "empty": [x[:0]]}[value]  # fmt: skip
    elif arg == "ws":
        ws = {"ok": [w], None: None, "3d": [w[None]], "fp32": [w.float()]}[value]
    else:
        bs = {"ok": [b], None: None, "n_mismatch": [b[:2]], "two": [b, b]}[value]

    def run():
        if not valid:
            names = {"n_mismatch": "bs", "two": "bs", "k_mismatch": "ws"}
            expect_error(lambda: linear_grouped(xs, ws, bs, backend="triton"), names.get(value, arg))
            return
        got = linear_grouped(xs, ws, bs, backend="triton")[0]
        close(got, torch.nn.functional.linear(xs[0], ws[0], bs[0]), rtol=1e-12, atol=1e-14, what="linear_grouped")

    return Case("linear_grouped", arg, value, valid, run)


PLAN = [
    (_attention_case, 90),
    (_grouped_case, 30),
    (_weights_case, 14),
    (_gd_case, 60),
    (_mha_case, 30),
    (_encoder_case, 30),
    (_gd_unit_case, 30),
    (_positional_case, 10),
    (_dmd_case, 16),
    (_config_case, len(_CONFIG_ALL)),
    (_pickle_case, 18),
    (_loader_case, 14),
    (_checkpoint_case, 14),
    (_cli_case, 22),
    (_parity_case, 6),
    (_grad_sum_case, 12),
    (_loss_terms_case, 16),
    (_margin_case, 12),
    (_linear_case, 12),
    (_embed_case, 30),
    (_ffn_case, 20),
]


def _generate():
    rng = random.Random(SEED)
    return [make(rng) for make, n in PLAN for _ in range(n)]


CASES = _generate()
_PLAIN = [c for c in CASES if c.entry not in ("load_mmsa", "checkpoint", "cli", "run_parity")]
_FILES = [c for c in CASES if c not in _PLAIN]


def test_case_count():
    assert len(CASES) >= 300
    assert sum(c.valid for c in CASES) >= 60 and sum(not c.valid for c in CASES) >= 150


@pytest.mark.parametrize("case", _PLAIN, ids=repr)
def test_call(case):
    case.run()


@pytest.mark.parametrize("case", _FILES, ids=repr)
def test_file_call(case, tmp_path, capsys, request):
    import inspect

    params = inspect.signature(case.run).parameters
    kw = {"tmp": tmp_path}
    if "capsys" in params:
        kw["capsys"] = capsys
    if "run_dir" in params:
        kw["run_dir"] = request.getfixturevalue("run_dir")
    case.run(**kw)
