"""Grouped launches: G independent problems of one kernel in one grid, described by a device table.

Each problem has one int64 descriptor row. A :class:`DescriptorLayout` defines the row once: named
scalar columns first, then one slot of ``SLOT`` columns per tensor — its data address, then its
strides (up to 4, zero-padded). One index per tensor serves the pointer and the strides alike, so
host rows and kernel decoding cannot disagree about where a tensor lives. Kernels decode rows with
the ``@triton.jit`` helpers below, given the layout's columns as ``tl.constexpr`` values
(:meth:`DescriptorLayout.constexpr`).

Tables are pure functions of their rows: :func:`descriptor_table` caches them (a steady state does
no host-to-device copy) and stays safe under CUDA-graph capture, where nothing may be allocated on
the host and the graph's copy node reads the host rows on every replay: tables built while
capturing are staged in a pinned arena allocated beforehand (at an eager grouped call), never
reused, and kept for the life of the process.
"""

from __future__ import annotations

import array
import itertools
import struct
from collections import OrderedDict

import torch
import triton
import triton.language as tl

SLOT = 5  # a tensor's columns: address, then 4 strides


class DescriptorLayout:
    """The columns of one descriptor row: ``scalars`` (one int64 each), then a slot per tensor."""

    def __init__(self, scalars: tuple[str, ...], tensors: tuple[str, ...]):
        names = (*scalars, *tensors)
        if len(set(names)) != len(names):
            raise ValueError(f"DescriptorLayout: names must be unique, got {names}")
        self.scalars, self.tensors = tuple(scalars), tuple(tensors)
        self._scalar_col = {n: i for i, n in enumerate(scalars)}
        self._slot_col = {n: len(scalars) + SLOT * i for i, n in enumerate(tensors)}
        self.width = len(scalars) + SLOT * len(tensors)

    def col(self, name: str) -> int:
        """Column of a scalar, or the first column (the address) of a tensor's slot."""
        if name in self._scalar_col:
            return self._scalar_col[name]
        return self._slot_col[name]

    def constexpr(self, name: str) -> tl.constexpr:
        """:meth:`col` as a ``tl.constexpr`` for the kernels (``"width"``: the row width)."""
        return tl.constexpr(self.width if name == "width" else self.col(name))

    def pack(self, scalars, tensors) -> list[int]:
        """One problem's row: ``scalars`` values in column order, then ``tensors`` in slot order (None, or
        fewer than the slots, leaves the rest 0); each tensor's address and strides read once."""
        row = list(scalars)
        for t in tensors:
            if t is None:
                row += _EMPTY_SLOT
            else:
                strides = t.stride()
                row.append(t.data_ptr())
                row += strides
                row += _PAD[len(strides)]
        row += [0] * (self.width - len(row))
        return row


_EMPTY_SLOT = [0] * SLOT
_PAD = [[0] * (SLOT - 1 - n) for n in range(SLOT)]


def f32_bits(x: float) -> int:
    """The fp32 bit pattern of x as a signed 32-bit integer (what :func:`desc_f32` casts back)."""
    return struct.unpack("i", struct.pack("f", x))[0]


# ----------------------------------------------------------------------------------------------
# jit decoders (COL / WIDTH: constexpr columns of a DescriptorLayout)
# ----------------------------------------------------------------------------------------------


@triton.jit
def desc_problem(desc, i_g, WIDTH: tl.constexpr):
    """Row of problem i_g."""
    return desc + i_g.to(tl.int64) * WIDTH


@triton.jit
def desc_i32(desc, COL: tl.constexpr):
    """An int32 scalar column (lengths, thresholds)."""
    return tl.load(desc + COL).to(tl.int32)


@triton.jit
def desc_f32(desc, COL: tl.constexpr):
    """An fp32 scalar column stored as its bits (:func:`f32_bits`)."""
    return tl.load(desc + COL).to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def desc_ptr(desc, COL: tl.constexpr, like):
    """The tensor at slot COL as a pointer of ``like``'s element type."""
    return tl.load(desc + COL).to(tl.pointer_type(like.dtype.element_ty))


@triton.jit
def desc_strided(desc, COL: tl.constexpr, like):
    """Pointer and strides 0, 1, 2 (b, h, t; t as int32, launcher-checked) of the tensor at slot COL.

    A (B, H, T, D) tensor's last-dim stride stays a kernel argument shared by the group, so a
    grouped launch compiles to the same tile layouts (and bitwise the same results) as a single one."""
    c = desc + COL
    p = tl.load(c).to(tl.pointer_type(like.dtype.element_ty))
    return p, tl.load(c + 1), tl.load(c + 2), tl.load(c + 3).to(tl.int32)


# ----------------------------------------------------------------------------------------------
# host side: rows sharing a last-dim stride, and the cached, capture-safe device table
# ----------------------------------------------------------------------------------------------


def unify_last_stride(ts) -> list:
    """Copy the odd ones out so a group of 4-D tensors shares one last-dim stride (rarely copies)."""
    if len({t.stride(3) for t in ts}) > 1:
        ts = [t if t.stride(3) == 1 else t.contiguous() for t in ts]
    return list(ts)


def group_stride_args(what: str, *roles) -> list[int]:
    """Stride arguments of a grouped launch, 4 per tensor role: b, h, t come from the descriptor (0
    here); the last-dim stride is passed for real, so it must agree across the group per role."""
    args = []
    for ts in roles:
        sd = {t.stride(3) for t in ts}
        if len(sd) != 1:
            raise ValueError(f"{what}: the last-dim stride must agree across problems per tensor, got {sorted(sd)}")
        args += [0, 0, 0, sd.pop()]
    return args


_CACHE: OrderedDict[tuple, tuple] = OrderedDict()
CACHE_SIZE = 512  # a DMD training step uses 24 tables; room for eval batches and other shapes
_ARENA_VALUES = 1 << 18  # int64 values per pinned arena chunk (2 MiB)
_ARENA = {"chunk": None, "used": 0}
_CAPTURED: list = []  # (host slice, device table) built during capture: never freed (a few KiB each)


def cached_tables() -> set:
    """Keys of the tables held by the eager cache (tests check eviction with it)."""
    return set(_CACHE)


def _arena_ready(need: int = _ARENA_VALUES // 2):
    """Outside capture: make sure the pinned arena has ``need`` free values (a new chunk if not; old
    chunks stay alive through the slices that graphs read)."""
    if _ARENA["chunk"] is None or _ARENA["used"] + need > _ARENA["chunk"].numel():
        _ARENA["chunk"] = torch.empty(_ARENA_VALUES, dtype=torch.int64, pin_memory=True)
        _ARENA["used"] = 0


def _captured_table(rows, device, what) -> torch.Tensor:
    n = len(rows) * len(rows[0])
    chunk = _ARENA["chunk"]
    if chunk is None or _ARENA["used"] + n > chunk.numel():
        state = "not allocated" if chunk is None else "full"
        raise RuntimeError(
            f"{what} under CUDA-graph capture: the pinned descriptor arena is {state}; run the captured "
            "function once eagerly (a warm-up call) before capturing"
        )
    host = chunk[_ARENA["used"] : _ARENA["used"] + n]
    _ARENA["used"] += n
    host.copy_(_host_rows(rows).view(-1))  # CPU only
    dev = torch.empty((len(rows), len(rows[0])), dtype=torch.int64, device=device)
    dev.view(-1).copy_(host, non_blocking=True)  # captured: a copy node that reads `host` on each replay
    _CAPTURED.append((host, dev))
    return dev


def _host_rows(rows: list[list[int]]) -> torch.Tensor:
    """int64 (G, width) CPU tensor of ``rows`` through one packed buffer (about half the host time of
    ``torch.tensor`` on nested lists, which a grouped launch pays whenever its pointers change)."""
    flat = bytearray(array.array("q", itertools.chain.from_iterable(rows)))
    return torch.frombuffer(flat, dtype=torch.int64).view(len(rows), -1)


def descriptor_table(rows: list[list[int]], device, what: str = "grouped launch") -> torch.Tensor:
    """int64 (G, width) table of ``rows`` on ``device``, cached by content (LRU of CACHE_SIZE)."""
    cuda = torch.device(device).type == "cuda"
    if cuda and torch.cuda.is_current_stream_capturing():
        return _captured_table(rows, device, what)
    key = (str(device), tuple(tuple(r) for r in rows))
    entry = _CACHE.get(key)
    if entry is None:
        host = _host_rows(rows)
        if cuda:
            _arena_ready()
            host = host.pin_memory()
            entry = (host, host.to(device, non_blocking=True))  # the entry keeps the pinned copy alive
        else:
            entry = (host, host)
        _CACHE[key] = entry
        if len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return entry[1]
