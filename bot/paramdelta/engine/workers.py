"""Run a `MergePlan`: every chunk is read, merged and written by one worker, workers in parallel.

A unit of work is one chunk of one tensor: read its input byte ranges into the
worker's own buffers (positional reads, no mmap: touched mapped pages count as
resident memory and would grow with the model), run the kernel, `pwrite` the
result at its planned offset. One worker per core; file I/O and torch kernels
release the GIL, so while one worker reads another computes or writes.

Why not a read -> compute -> write pipeline of threads? On a CPU the merge is
memory-bound. Chunks handed between threads leave the cache, so every byte
crosses DRAM several times; a worker that keeps its chunk (about 1 MiB per
input locally) in cache from read to write moves little more than ``cat`` of
the inputs plus a write of the output (see benchmarks/merge_bench.py). Remote
sources want large ranges and many requests in flight, so they ask for bigger
chunks and more workers through `Source.read_size` / `Source.parallel_reads`.

Memory is the workers' buffers, bounded by ``max_memory``, whatever the
model's size. `Execution.shards` yields each finished shard to its caller; in
hand-over mode (an upload that then deletes each shard) a unit of shard s
starts only once the caller has taken every earlier shard, so disk holds about
one shard being uploaded plus the one being written.
"""

from __future__ import annotations

import ctypes
import os
import queue
import resource
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, NamedTuple, cast

import torch

from paramdelta.engine.adapter import LoraRef, scratch_bytes
from paramdelta.engine.batches import batch_units
from paramdelta.engine.checkpoint import Source, TensorRef
from paramdelta.engine.delta import DeltaReport
from paramdelta.engine.dtypes import ITEMSIZE, TORCH_NAMES
from paramdelta.engine.fp8 import merge_band
from paramdelta.engine.fp8_layout import BLOCK, blocks
from paramdelta.engine.gc_pause import gc_paused
from paramdelta.engine.kernel import (
    CPU_BLOCK,
    OUTPUT,
    TORCH_DTYPES,
    Delta,
    Difference,
    Moments,
    NonFinite,
    check_copy,
    copy_into,
    merge_into,
    operand_roles,
    scratch_buffers,
)
from paramdelta.engine.lora_bands import LoraBands
from paramdelta.engine.merge_plan import MergeItem, MergePlan, Segment
from paramdelta.engine.progress import MergeProgress
from paramdelta.engine.recipe import Runtime
from paramdelta.engine.roles import title
from paramdelta.engine.writer import OutputWriter, ShardPlan
from paramdelta.errors import CheckpointError, UsageError

MIN_CHUNK_ELEMENTS = 4096  # also the alignment of bigger chunks
# On a GPU, bigger transfers amortise the copies: 8 Mi elements per chunk.
CUDA_CHUNK_ELEMENTS = 1 << 23


class Read(NamedTuple):  # tuples, not dataclasses: cheap to make, ~100k of them for MoE
    role: str
    source: Source
    file: str
    offset: int
    nbytes: int
    dtype: str


class Band(NamedTuple):
    """What an FP8 unit adds (whole 128-row blocks of a 2-D weight, all ``cols`` columns):
    each input's scale rows (None for a float input), where the output's scales go."""

    cols: int
    scales: tuple[Read | None, ...]
    scale_offset: int | None
    scale_nbytes: int = 0


@dataclass(frozen=True)
class LoraRead:
    """A chunk of an adapter's delta ``s·B@A``: computed in float32 from A and B, not read."""

    role: str
    source: Source
    lora: LoraRef
    first: int
    count: int

    dtype = LoraRef.dtype

    @property
    def nbytes(self) -> int:
        return self.count * ITEMSIZE[self.dtype]


@dataclass(frozen=True)
class Unit:
    """One chunk: ``count`` output elements, written at ``out_offset`` of shard ``shard``.

    ``op``: "merge" (reads are the new base, then each delta's post and base, with
    one weight per delta), "convert" (one read, cast to the output dtype) or "raw"
    (one read straight into the output buffer).
    """

    tensor: str
    shard: int
    out_offset: int
    count: int
    out_dtype: str
    op: Literal["merge", "convert", "raw"]
    reads: tuple[Read | LoraRead, ...]
    weights: tuple[float, ...] = ()
    band: Band | None = None  # an FP8 block-scaled merge (`paramdelta.engine.fp8`)
    parts: tuple[Unit, ...] = ()  # a batch of small units computed as one (`engine.batches`)

    @property
    def computed(self) -> bool:
        """Some input is computed (an adapter's s·B@A, `LoraRead`), not read."""
        return any(isinstance(read, LoraRead) for read in self.reads)

    @property
    def out_nbytes(self) -> int:
        return self.count * ITEMSIZE[self.out_dtype]


@dataclass(frozen=True)
class MergeStats:
    tensors: int
    bytes: int
    seconds: float
    cpu_seconds: float  # of the whole process while merging: stabler than wall time on a busy host
    device: str
    workers: int
    chunk_elements: int
    peak_rss_bytes: int
    delta: DeltaReport  # measured in the same pass, see engine.delta


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use --device cpu)")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, not {device!r}")
    return torch.device(device)


def worker_count(sources: Sequence[Source]) -> int:
    return max(os.cpu_count() or 1, *(s.parallel_reads for s in sources))


def chunk_elements(
    plan: MergePlan, sources: Sequence[Source], workers: int, max_memory: int, on_cuda: bool
) -> int:
    """Elements per chunk: what the sources read best, within ``max_memory`` for all workers."""
    in_size = _max_in_itemsize(plan)
    wanted = CUDA_CHUNK_ELEMENTS if on_cuda else max(s.read_size for s in sources) // in_size
    per_element = workers * (plan.operands * in_size + _out_itemsize(plan))
    refs = {op.ref for i in plan.items for s in i.segments for op in s.inputs}
    fixed = workers * scratch_bytes(r for r in refs if isinstance(r, LoraRef))
    elements = max(MIN_CHUNK_ELEMENTS, min(wanted, (max_memory - fixed) // per_element))
    return elements - elements % MIN_CHUNK_ELEMENTS


def _max_in_itemsize(plan: MergePlan) -> int:
    return plan.input_itemsize


def _out_itemsize(plan: MergePlan) -> int:
    # Raw copies are read straight into the output buffer, so it fits inputs too.
    return max(max((ITEMSIZE[i.dtype] for i in plan.items), default=1), _max_in_itemsize(plan))


def plan_units(
    plan: MergePlan,
    shards: Sequence[ShardPlan],
    sources: dict[str, Source],
    elements: int,
) -> list[Unit]:
    """Cut every segment of every tensor into chunks of at most ``elements``, in file order."""
    shard_of = {name: i for i, shard in enumerate(shards) for name in shard.offsets}
    units: list[Unit] = []
    for item in plan.items:
        shard = shard_of[item.name]
        tensor_offset = shards[shard].offsets[item.name]
        out_size = ITEMSIZE[item.dtype]
        for segment in item.segments:
            op: Literal["merge", "convert", "raw"]
            if segment.op == "merge":
                op = "merge"
            elif segment.start.ref.dtype == item.dtype:
                op = "raw"
            else:
                op = "convert"
            step = _band_elements(item, elements) if item.fp8 else elements
            inputs, weights = segment.inputs, segment.weights  # once per segment, not per unit
            for start in range(0, segment.count, step):
                count = min(step, segment.count - start)
                reads = tuple(
                    [
                        _read(role, sources[role], ref, first + start, count)
                        for role, ref, first in inputs
                    ]
                )
                out_offset = tensor_offset + (segment.out_start + start) * out_size
                band = (
                    None
                    if item.fp8 is None
                    else _band(item, segment, sources, shards[shard], start, count)
                )
                units.append(
                    Unit(item.name, shard, out_offset, count, item.dtype, op, reads, weights, band)
                )
    units.sort(key=lambda u: u.shard)  # stable: file order within a shard is kept
    return units


def _read(
    role: str, source: Source, ref: TensorRef | LoraRef, first: int, count: int
) -> Read | LoraRead:
    """How ``count`` elements of an operand from element ``first`` reach a worker's buffer."""
    if isinstance(ref, LoraRef):
        return LoraRead(role, source, ref, first, count)
    size = ITEMSIZE[ref.dtype]
    return Read(role, source, ref.file, ref.entry.offset + first * size, count * size, ref.dtype)


def _band_elements(item: MergeItem, elements: int) -> int:
    """Elements per FP8 unit: whole blocks of rows, at least one, within a quarter of
    ``elements`` (the band is widened to float32 temporaries, one per input)."""
    cols = item.shape[1]
    return BLOCK * cols * max(1, elements // (4 * BLOCK * cols))


def _band(
    item: MergeItem,
    segment: Segment,
    sources: dict[str, Source],
    shard: ShardPlan,
    start: int,
    count: int,
) -> Band | None:
    """The scale rows an FP8 unit reads and writes: block rows ``start // (128·cols)`` on."""
    if item.fp8 is None:
        return None
    cols = item.shape[1]
    first, rows = start // cols // BLOCK, blocks(count // cols)
    row_bytes = 4 * blocks(cols)  # one float32 per block of a row of blocks
    scales = tuple(
        None
        if ref is None
        else Read(
            role,
            sources[role],
            ref.file,
            ref.entry.offset + first * row_bytes,
            rows * row_bytes,
            "F32",
        )
        for (role, _, _), ref in zip(segment.inputs, item.fp8.scales, strict=True)
    )
    out = item.fp8.out_scale
    offset = None if out is None else shard.offsets[out] + first * row_bytes
    return Band(cols, scales, offset, rows * row_bytes if out else 0)


def _writes_scales(unit: Unit) -> bool:
    return unit.band is not None and unit.band.scale_offset is not None


def _read_scales(unit: Unit, operand: int) -> torch.Tensor:
    """One input's block scales for every part of ``unit``, back to back (a few hundred bytes)."""
    data = b"".join(
        scale.source.read(scale.file, scale.offset, scale.nbytes)
        for part in unit.parts or (unit,)
        if part.band is not None and (scale := part.band.scales[operand]) is not None
    )
    return torch.frombuffer(bytearray(data), dtype=torch.float32)


def _runs(reads: Iterable[Read]) -> Iterator[tuple[Source, str, int, int]]:
    """``reads`` as (source, file, offset, nbytes), each run of back-to-back reads as one."""
    run: tuple[Source, str, int, int] | None = None
    for read in reads:
        if run is not None:
            source, file, offset, nbytes = run
            if read.source is source and read.file == file and read.offset == offset + nbytes:
                run = (source, file, offset, nbytes + read.nbytes)
                continue
            yield run
        run = (read.source, read.file, read.offset, read.nbytes)
    if run is not None:
        yield run


def _spans(writes: Iterable[tuple[int, int, int]]) -> Iterator[tuple[int, int, int]]:
    """(shard, offset, nbytes) writes, each run of back-to-back ones in a shard as one."""
    shard, offset, nbytes = -1, 0, 0
    for s, o, n in writes:
        if s == shard and o == offset + nbytes:
            nbytes += n
            continue
        if shard >= 0:
            yield shard, offset, nbytes
        shard, offset, nbytes = s, o, n
    if shard >= 0:
        yield shard, offset, nbytes


def _host_buffer(nbytes: int, pinned: bool) -> tuple[torch.Tensor, memoryview]:
    """A uint8 tensor and a writable memoryview of the same memory (for preadv/pwrite)."""
    tensor = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=pinned)
    raw = (ctypes.c_char * tensor.numel()).from_address(tensor.data_ptr())
    return tensor, memoryview(raw).cast("B")


class _Worker:
    """One worker's host buffers and the read -> compute -> write of a unit.

    Each worker sums the delta report of the chunks it merged (`delta`); a chunk
    whose output holds NaN or Inf stops the merge with an error naming the tensor.
    Where the arithmetic runs is a subclass's: `_CpuWorker`, `_CudaWorker`.
    """

    pinned = False
    scratch: tuple[torch.Tensor, torch.Tensor]  # the kernel's float32 rows, on the device
    band_scales: list[torch.Tensor | None]  # an FP8 unit's input scales, on the host
    out_scale: torch.Tensor  # and its output's

    def __init__(self, operands: int, in_bytes: int, out_bytes: int) -> None:
        self.delta = DeltaReport()
        self.inputs = [_host_buffer(in_bytes, self.pinned) for _ in range(operands)]
        self.out = _host_buffer(out_bytes, self.pinned)
        self.bands = LoraBands()

    def run(self, unit: Unit, writer: OutputWriter) -> None:
        """Read, compute and write ``unit``; a batch that is not all finite part by part."""
        self.read(unit)
        moments = self.compute(unit)
        if unit.parts and moments.nonfinite is not None:  # find the tensor to name
            for part in unit.parts:
                self.run(part, writer)
            return
        self.delta.add(unit.tensor, moments)
        if moments.nonfinite is not None and moments.nonfinite.output:
            raise _nonfinite_error(unit, moments.nonfinite)
        self.write(unit, writer)

    def read(self, unit: Unit) -> None:
        # A raw copy needs no conversion: straight into the output buffer.
        targets = [self.out] if unit.op == "raw" else self.inputs
        parts = unit.parts or (unit,)  # a batch's parts back to back in each buffer
        for i, (_, view) in zip(range(len(unit.reads)), targets, strict=False):
            first = unit.reads[i]
            if isinstance(first, LoraRead):  # an adapter's delta, computed (never batched)
                self.bands.fill(first.source, first.lora, first.first, view[: first.nbytes])
                continue
            filled = 0
            # Parts that lie back to back in one file (experts usually do) are one read.
            reads = (cast(Read, part.reads[i]) for part in parts)  # a batch reads bytes only
            for source, file, offset, nbytes in _runs(reads):
                source.read_into(file, offset, view[filled : filled + nbytes])
                filled += nbytes
        if unit.band is not None:
            self.band_scales = [
                None if r is None else _read_scales(unit, i) for i, r in enumerate(unit.band.scales)
            ]

    def compute(self, unit: Unit) -> Moments:
        if unit.op == "raw":
            view = self.out[0][: unit.out_nbytes].view(TORCH_DTYPES[unit.out_dtype])
            return Moments(nonfinite=check_copy(view))
        return self._compute(unit)

    def write(self, unit: Unit, writer: OutputWriter) -> None:
        """The output buffer at each part's offset, and an FP8 output's scales at theirs."""
        data, cursor = self.out[1], 0
        scales = memoryview(self.out_scale.numpy().tobytes()) if _writes_scales(unit) else None
        scale_cursor = 0
        parts = unit.parts or (unit,)
        # A batch's parts are consecutive tensors of one shard: contiguous ones are one write.
        for shard, offset, nbytes in _spans((p.shard, p.out_offset, p.out_nbytes) for p in parts):
            writer.write(shard, offset, data[cursor : cursor + nbytes])
            cursor += nbytes
        for part in parts:
            if scales is not None and part.band is not None and part.band.scale_offset is not None:
                end = scale_cursor + part.band.scale_nbytes
                writer.write(part.shard, part.band.scale_offset, scales[scale_cursor:end])
                scale_cursor = end

    def _compute(self, unit: Unit) -> Moments:
        """Merge or convert the unit's inputs into the host output buffer."""
        raise NotImplementedError

    def _kernel(self, unit: Unit, ins: list[torch.Tensor], out: torch.Tensor) -> Moments:
        typed = out.view(TORCH_DTYPES[unit.out_dtype])
        if unit.band is not None:
            scales = [None if s is None else s.to(out.device) for s in self.band_scales]
            cols = unit.band.cols
            rows = (unit.parts[0].count if unit.parts else unit.count) // cols
            moments, out_scale = merge_band(
                typed, ins, scales, unit.weights, (rows, cols), self.scratch
            )
            if out_scale is not None:
                self.out_scale = out_scale.cpu()
            return moments
        if unit.op == "convert":
            return Moments(nonfinite=copy_into(typed, ins[0]))
        deltas: list[Delta] = []
        for i, weight in enumerate(unit.weights):
            post, base = ins[1 + 2 * i], ins[2 + 2 * i]
            computed = isinstance(unit.reads[1 + 2 * i], LoraRead)
            deltas.append(Difference(post, base, weight) if computed else (post, base, weight))
        return merge_into(typed, ins[0], deltas, self.scratch)

    def _input_bytes(self, unit: Unit) -> list[torch.Tensor]:
        """The bytes each read of ``unit`` filled, in its host buffer."""
        return [self.inputs[i][0][: read.nbytes] for i, read in enumerate(unit.reads)]


class _CpuWorker(_Worker):
    """Computes in place in the host buffers, in cache-sized blocks."""

    def __init__(self, operands: int, elements: int, in_bytes: int, out_bytes: int) -> None:
        super().__init__(operands, in_bytes, out_bytes)
        self.scratch = scratch_buffers(
            min(elements, CPU_BLOCK), torch.device("cpu"), _deltas(operands)
        )

    def _compute(self, unit: Unit) -> Moments:
        ins = [
            data.view(TORCH_DTYPES[read.dtype])
            for data, read in zip(self._input_bytes(unit), unit.reads, strict=True)
        ]
        return self._kernel(unit, ins, self.out[0][: unit.out_nbytes])


class _CudaWorker(_Worker):
    """Copies each chunk to the GPU (pinned buffers, its own stream), computes it there in
    one block (a GPU has bandwidth to spare: no Python loop), and copies the result back."""

    pinned = True

    def __init__(
        self, device: torch.device, operands: int, elements: int, in_bytes: int, out_bytes: int
    ) -> None:
        super().__init__(operands, in_bytes, out_bytes)
        self.scratch = scratch_buffers(elements, device, _deltas(operands))
        self.stream = torch.cuda.Stream(device)
        self.dev_in = [
            torch.empty(in_bytes, dtype=torch.uint8, device=device) for _ in range(operands)
        ]
        self.dev_out = torch.empty(out_bytes, dtype=torch.uint8, device=device)

    def _compute(self, unit: Unit) -> Moments:
        with torch.cuda.stream(self.stream):
            ins = [
                self.dev_in[i][: read.nbytes]
                .copy_(data, non_blocking=True)
                .view(TORCH_DTYPES[read.dtype])
                for i, (data, read) in enumerate(
                    zip(self._input_bytes(unit), unit.reads, strict=True)
                )
            ]
            out = self.dev_out[: unit.out_nbytes]
            moments = self._kernel(unit, ins, out)
            self.out[0][: unit.out_nbytes].copy_(out, non_blocking=True)
        self.stream.synchronize()
        return moments


def _worker(
    device: torch.device, operands: int, elements: int, in_bytes: int, out_bytes: int
) -> _Worker:
    if device.type == "cuda":
        return _CudaWorker(device, operands, elements, in_bytes, out_bytes)
    return _CpuWorker(operands, elements, in_bytes, out_bytes)


def _deltas(operands: int) -> int:
    """How many deltas a unit of ``operands`` inputs sums: the new base, a post and a base each."""
    return max(1, (operands - 1) // 2)


def _nonfinite_error(unit: Unit, counts: NonFinite) -> CheckpointError:
    """One line naming the tensor, what is not finite, and in which input it started."""
    what = f"{counts.nan[OUTPUT]} NaN and {counts.inf[OUTPUT]} Inf values"
    if unit.op != "merge":
        role = title(unit.reads[0].role)
        return CheckpointError(
            f"tensor {unit.tensor!r}: {what} in the elements copied from the {role} checkpoint"
        )
    inputs = [
        f"{title(role)} {counts.nan[i]} NaN/{counts.inf[i]} Inf"
        for i, role in enumerate(operand_roles(len(unit.weights)))
        if i != OUTPUT and i < len(counts.nan) and (counts.nan[i] or counts.inf[i])
    ]
    if inputs:
        cause = f"the inputs hold them there: {', '.join(inputs)}"
    else:
        dtype = TORCH_NAMES.get(unit.out_dtype, unit.out_dtype)
        cause = f"the inputs are finite there: the result overflows {dtype}"
    return CheckpointError(
        f"merged tensor {unit.tensor!r} is not finite: {what} in a chunk of {unit.count}"
        f" elements ({cause})"
    )


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Our workers are the parallelism; torch's own intra-op threads would oversubscribe."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Schedule:
    """Hands out units in file order and tells which unit completes its shard.

    With ``one_shard_at_a_time`` a unit of shard s is handed out only once
    every earlier shard has been handed over (to the caller), so only one
    shard is being written while the previous one uploads.
    """

    def __init__(
        self, units: list[Unit], shards: Sequence[int], count: int, one_shard_at_a_time: bool
    ) -> None:
        self._pending = iter(units)
        self._shards = shards  # the ones to write, of ``count``
        self._remaining = [0] * count
        for unit in units:
            self._remaining[unit.shard] += 1
        self._handed_over = [count == 0 for count in self._remaining]
        self._gated = one_shard_at_a_time
        self._cond = threading.Condition()
        self.stop = threading.Event()

    def empty_shards(self) -> list[int]:
        """Shards of empty tensors only: nothing to compute, but each is still a file."""
        return [shard for shard in self._shards if self._remaining[shard] == 0]

    def next(self) -> Unit | None:
        with self._cond:
            unit = next(self._pending, None)
            if unit is not None and self._gated:
                self._cond.wait_for(
                    lambda: self.stop.is_set() or all(self._handed_over[: unit.shard])
                )
        return None if self.stop.is_set() else unit

    def done(self, unit: Unit) -> bool:
        """Count ``unit`` as written; True if it was the last of its shard."""
        with self._cond:
            self._remaining[unit.shard] -= 1
            return self._remaining[unit.shard] == 0

    def handed_over(self, shard: int) -> None:
        with self._cond:
            self._handed_over[shard] = True
            self._cond.notify_all()

    def abort(self) -> None:
        self.stop.set()
        with self._cond:
            self._cond.notify_all()


_WORKER_EXITED = -1  # what a worker thread puts on the finished-shards queue as it ends


class Execution:
    """The computation of every output tensor of ``plan`` into ``writer``'s shards.

    `shards` runs it and yields each shard as it is finished (written, closed,
    renamed); `stats` is set once every shard is. ``hand_over``: the caller takes
    the shards one at a time (see `_Schedule`). ``only``: the indexes of the shards
    to write (a fan-out leg's, see `paramdelta.engine.legs`); None: all of them.
    """

    def __init__(
        self,
        plan: MergePlan,
        sources: dict[str, Source],
        writer: OutputWriter,
        runtime: Runtime,
        *,
        hand_over: bool,
        only: Sequence[int] | None = None,
    ) -> None:
        self.plan, self.writer, self.runtime = plan, writer, runtime
        chosen = range(len(writer.shards)) if only is None else sorted(only)
        names = {name for s in chosen for name in writer.shards[s].offsets}
        self.items = [item for item in plan.items if item.name in names]
        self.device = resolve_device(runtime.device)
        used = list(sources.values())
        self.workers = worker_count(used)
        self.elements = chunk_elements(
            plan, used, self.workers, runtime.max_memory, self.device.type == "cuda"
        )
        wanted = frozenset(chosen)
        # A leg's shards only; a batch never spans two shards, so batching after is exact.
        with gc_paused():
            units = plan_units(plan, writer.shards, sources, self.elements)
            units = batch_units([u for u in units if u.shard in wanted], self.elements // 4)
        self.schedule = _Schedule(units, chosen, len(writer.shards), hand_over)
        # Each worker's buffers: every operand of the widest unit, in the widest dtypes
        # (an FP8 unit is at least one band of 128 rows, however wide).
        widest = max((u.count for u in units if u.band), default=self.elements)
        elements = max(self.elements, widest)
        self.buffers = (
            plan.operands,
            elements,
            elements * _max_in_itemsize(plan),
            elements * _out_itemsize(plan),
        )
        self.stats: MergeStats | None = None

    def shards(self) -> Iterator[int]:
        """Compute everything; yield each shard's index as soon as its file is complete."""
        started, cpu_started = time.perf_counter(), time.process_time()
        for shard in self.schedule.empty_shards():
            self.writer.shard_done(shard)
            yield shard
        finished: queue.Queue[int] = queue.Queue()  # its get() is interruptible (Ctrl-C)
        failures: list[tuple[tuple[int, int], BaseException]] = []  # (where, error)
        reports: list[DeltaReport] = []
        bar = MergeProgress(sum(item.nbytes for item in self.items), enabled=self.runtime.progress)
        threads = [
            threading.Thread(
                target=self._work,
                args=(finished, failures, reports, bar),
                name=f"paramdelta-merge-{i}",
                daemon=True,
            )
            for i in range(self.workers)
        ]
        with _torch_threads(1):
            try:
                for thread in threads:
                    thread.start()
                running = len(threads)
                while running:
                    shard = finished.get()
                    if shard == _WORKER_EXITED:
                        running -= 1
                        continue
                    yield shard
                    self.schedule.handed_over(shard)
            finally:  # done, failed, interrupted (Ctrl-C) or abandoned by the caller
                self.schedule.abort()  # the workers stop at a unit boundary
                for thread in threads:
                    if thread.ident is not None:  # it may stop before every worker started
                        thread.join()
                bar.close()
        if failures:  # two workers may fail at once: the unit first in file order is named
            raise min(failures, key=lambda f: f[0])[1]
        # In the plan's order (of this execution's items); an output scale tensor is part
        # of its weight.
        with gc_paused():
            delta = DeltaReport(
                {i.name: Moments() for i in self.items if i.scale_of is None}, self.plan.deltas
            )
            delta.merge(reports)
        self.stats = MergeStats(
            tensors=len(self.items),
            bytes=sum(item.nbytes for item in self.items),
            seconds=time.perf_counter() - started,
            cpu_seconds=time.process_time() - cpu_started,
            device=str(self.device),
            workers=self.workers,
            chunk_elements=self.elements,
            peak_rss_bytes=peak_rss_bytes(),
            delta=delta,
        )

    def _work(
        self,
        finished: queue.Queue[int],
        failures: list[tuple[tuple[int, int], BaseException]],
        reports: list[DeltaReport],
        bar: MergeProgress,
    ) -> None:
        schedule, writer = self.schedule, self.writer
        unit: Unit | None = None
        try:
            worker = _worker(self.device, *self.buffers)
            reports.append(worker.delta)
            while (unit := schedule.next()) is not None:
                worker.run(unit, writer)
                bar.update(unit.out_nbytes + (unit.band.scale_nbytes if unit.band else 0))
                if schedule.done(unit):
                    writer.shard_done(unit.shard)
                    finished.put(unit.shard)
        except BaseException as e:  # re-raised by the calling thread
            failures.append(((unit.shard, unit.out_offset) if unit else (-1, -1), e))
            schedule.abort()
        finally:
            finished.put(_WORKER_EXITED)


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
