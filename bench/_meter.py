"""Memory-traffic recorder for Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1, CPU tensors).

    with TrafficMeter() as meter:
        out = some_op(x)                 # every interpreted kernel launch inside is recorded
    launch = meter.launches[0]           # Launch: kernel name, grid, bytes and sectors per access kind

While active it wraps the interpreter's `GridExecutor.__call__` (one call = one launch = one grid execution)
and the builder's `create_masked_load`, `create_masked_store`, `create_atomic_rmw` and `create_atomic_cas`
(plain loads/stores, atomic loads/stores and tensor-descriptor loads/stores all go through the first two).
The builder's `grid_idx` says which program instance issued each access. Per launch and access kind
(load, store, atomic) it keeps:
- requested bytes: masked-in lanes x element size;
- L2<->SM sectors: the sum over program instances of the distinct 32-byte sectors the instance touches;
- DRAM sectors: the distinct 32-byte sectors touched by the whole launch;
- atomic lanes, and the element count of the tensors the atomics land in.
Host-side tensor passes run by the op's Python code outside kernels (`torch.zeros` fills, casts, `torch.cat`,
scalar multiplies) are logged as `host_passes` (name, bytes read + written), modelled as one read of each input
and one write of the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

SECTOR_BYTES = 32
KINDS = ("load", "store", "atomic")
# Per-program sector arrays kept for the launch-wide DRAM count are merged (np.unique) past this many entries.
COMPACT_ENTRIES = 1 << 22


@dataclass
class Launch:
    """Traffic of one kernel launch. Byte and sector figures are per access kind (KINDS)."""

    kernel: str
    grid: tuple[int, int, int]
    requested: dict[str, int]
    l2_sectors: dict[str, int]
    dram_sectors: dict[str, int]
    atomics: int
    atomic_target_elements: int
    l2_sectors_by_tensor: dict[str, int] = field(default_factory=dict)

    @property
    def requested_bytes(self) -> int:
        return sum(self.requested.values())

    @property
    def l2_bytes(self) -> int:
        return SECTOR_BYTES * sum(self.l2_sectors.values())

    @property
    def dram_bytes(self) -> int:
        return SECTOR_BYTES * sum(self.dram_sectors.values())


class _LaunchRecorder:
    """Accumulates the accesses of one launch, program instance by program instance."""

    def __init__(self, kernel: str, tensors: list[tuple[str, int, int, int]]):
        self.kernel = kernel
        # (name, first sector, last sector + 1, numel), sorted by address, for the per-tensor breakdown.
        self.tensors = sorted(((name, start // SECTOR_BYTES, -(-(start + nbytes) // SECTOR_BYTES), numel)
                               for name, start, nbytes, numel in tensors), key=lambda t: t[1])
        self.starts = np.array([t[1] for t in self.tensors], dtype=np.int64)
        self.ends = np.array([t[2] for t in self.tensors], dtype=np.int64)
        self.program = None
        self.pending = {kind: [] for kind in KINDS}
        self.seen = {kind: [] for kind in KINDS}
        self.seen_entries = {kind: 0 for kind in KINDS}
        self.requested = dict.fromkeys(KINDS, 0)
        self.l2 = dict.fromkeys(KINDS, 0)
        self.by_tensor = np.zeros(len(self.tensors) + 1, dtype=np.int64)  # last slot: outside every tensor
        self.atomics = 0
        self.atomic_tensors: set[int] = set()

    def access(self, kind: str, program: tuple, pointers: np.ndarray, mask: np.ndarray | None, size: int) -> None:
        if program != self.program:
            self.flush()
            self.program = program
        pointers = np.asarray(pointers)
        if mask is not None:
            pointers = pointers[np.broadcast_to(np.asarray(mask, dtype=bool), pointers.shape)]
        addresses = pointers.ravel().astype(np.int64)
        if addresses.size == 0:
            return
        self.requested[kind] += addresses.size * size
        first = addresses // SECTOR_BYTES
        last = (addresses + size - 1) // SECTOR_BYTES
        straddle = last != first
        sectors = np.concatenate([first, last[straddle]]) if straddle.any() else first
        self.pending[kind].append(sectors)
        if kind == "atomic":
            self.atomics += addresses.size
            self.atomic_tensors.update(int(i) for i in np.unique(self._tensor_index(np.unique(first))))

    def _tensor_index(self, sectors: np.ndarray) -> np.ndarray:
        """Index into self.tensors of each sector's tensor, len(self.tensors) where it is in none."""
        index = np.searchsorted(self.starts, sectors, side="right") - 1
        inside = (index >= 0) & (sectors < self.ends[np.maximum(index, 0)])
        return np.where(inside, index, len(self.tensors))

    def flush(self) -> None:
        """Close the current program instance: count its distinct sectors per kind."""
        for kind in KINDS:
            if not self.pending[kind]:
                continue
            unique = np.unique(np.concatenate(self.pending[kind]))
            self.pending[kind] = []
            self.l2[kind] += unique.size
            self.by_tensor += np.bincount(self._tensor_index(unique), minlength=self.by_tensor.size)
            self.seen[kind].append(unique)
            self.seen_entries[kind] += unique.size
            if self.seen_entries[kind] > COMPACT_ENTRIES:
                self.seen[kind] = [np.unique(np.concatenate(self.seen[kind]))]
                self.seen_entries[kind] = self.seen[kind][0].size

    def finish(self, grid: tuple) -> Launch:
        self.flush()
        dram = {kind: (np.unique(np.concatenate(self.seen[kind])).size if self.seen[kind] else 0) for kind in KINDS}
        names = [t[0] for t in self.tensors] + ["(other)"]
        by_tensor = {name: int(count) for name, count in zip(names, self.by_tensor) if count}
        return Launch(self.kernel, tuple(int(g) for g in grid), dict(self.requested), dict(self.l2), dram,
                      self.atomics, sum(self.tensors[i][3] for i in self.atomic_tensors if i < len(self.tensors)),
                      by_tensor)


def _tensor_arguments(names, args, kwargs) -> list[tuple[str, int, int, int]]:
    """(name, start address, storage bytes from start, numel) of every tensor argument of a launch."""
    found = []
    for name, value in list(zip(names, args)) + list(kwargs.items()):
        value = getattr(value, "base", value)  # triton's TensorWrapper
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            start = value.data_ptr()
            found.append((name, start, storage.data_ptr() + storage.nbytes() - start, value.numel()))
    return found


def _nbytes(value) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


class TrafficMeter:
    """Context manager recording every interpreted Triton launch (`launches`) and host passes (`host_passes`)."""

    def __init__(self):
        self.launches: list[Launch] = []
        self.host_passes: list[tuple[str, int]] = []
        self._recorder: _LaunchRecorder | None = None
        self._builder = None
        self._restore: list[tuple[object, str, object]] = []

    # -- patching ---------------------------------------------------------------------------------------------
    def _patch(self, owner, name: str, make_wrapper) -> None:
        """Replace owner.name by make_wrapper(original) until __exit__ (inherited attributes are deleted again)."""
        original = getattr(owner, name)
        own = name in vars(owner)
        self._restore.append((owner, name, original if own else None))
        setattr(owner, name, make_wrapper(original))

    def _record(self, kind: str, pointers, mask) -> None:
        if self._recorder is not None:
            size = max(1, pointers.get_element_ty().primitive_bitwidth // 8)
            self._recorder.access(kind, self._builder.grid_idx, pointers.data, None if mask is None else mask.data,
                                  size)

    def __enter__(self) -> TrafficMeter:
        from triton.runtime import interpreter

        if not hasattr(interpreter, "interpreter_builder"):
            raise RuntimeError("the traffic meter needs Triton's interpreter (set TRITON_INTERPRET=1 before "
                               "importing triton)")
        self._builder = interpreter.interpreter_builder
        record = self._record

        def load(original):
            def wrapper(builder, ptrs, mask, *args, **kwargs):
                record("load", ptrs, mask)
                return original(builder, ptrs, mask, *args, **kwargs)
            return wrapper

        def store(original):
            def wrapper(builder, ptrs, value, mask, *args, **kwargs):
                record("store", ptrs, mask)
                return original(builder, ptrs, value, mask, *args, **kwargs)
            return wrapper

        def atomic_rmw(original):
            def wrapper(builder, op, ptr, value, mask, *args, **kwargs):
                record("atomic", ptr, mask)
                return original(builder, op, ptr, value, mask, *args, **kwargs)
            return wrapper

        def atomic_cas(original):
            def wrapper(builder, ptr, *args, **kwargs):
                record("atomic", ptr, None)
                return original(builder, ptr, *args, **kwargs)
            return wrapper

        builder_class = interpreter.InterpreterBuilder
        self._patch(builder_class, "create_masked_load", load)
        self._patch(builder_class, "create_masked_store", store)
        self._patch(builder_class, "create_atomic_rmw", atomic_rmw)
        self._patch(builder_class, "create_atomic_cas", atomic_cas)
        self._patch(interpreter.GridExecutor, "__call__", self._launch_wrapper)
        self._patch_host_passes()
        return self

    def _launch_wrapper(self, original):
        meter = self

        def launch(executor, *args, **kwargs):
            if meter._recorder is not None:  # a launch inside a launch: counted in the outer one
                return original(executor, *args, **kwargs)
            meter._recorder = _LaunchRecorder(getattr(executor.fn, "__name__", "kernel"),
                                              _tensor_arguments(executor.arg_names, args, kwargs))
            try:
                result = original(executor, *args, **kwargs)
                meter.launches.append(meter._recorder.finish(meter._builder.grid_dim))
            finally:
                meter._recorder = None
            return result
        return launch

    def _patch_host_passes(self) -> None:
        """Log the tensor passes the ops' Python code runs between kernels (bytes read + written)."""
        meter = self

        def logged(name, moved_bytes):
            def make_wrapper(original):
                def wrapper(*args, **kwargs):
                    result = original(*args, **kwargs)
                    if meter._recorder is None:
                        moved = moved_bytes(result, args)
                        if moved:
                            meter.host_passes.append((name, moved))
                    return result
                return wrapper
            return make_wrapper

        def written(result, args):
            return _nbytes(result)

        def concatenated(result, args):
            return _nbytes(result) + sum(_nbytes(t) for t in args[0])

        def elementwise(result, args):  # a method returning self moved nothing
            return 0 if result is args[0] else _nbytes(result) + sum(_nbytes(a) for a in args)

        self._patch(torch, "zeros", logged("zeros", written))
        self._patch(torch, "zeros_like", logged("zeros_like", written))
        self._patch(torch, "cat", logged("cat", concatenated))
        for method in ("to", "contiguous", "__mul__", "mul", "__rmul__"):
            self._patch(torch.Tensor, method, logged(method, elementwise))

    def __exit__(self, *exc) -> None:
        while self._restore:
            owner, name, original = self._restore.pop()
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._recorder = None

    # -- totals -----------------------------------------------------------------------------------------------
    @property
    def host_bytes(self) -> int:
        return sum(moved for _, moved in self.host_passes)
