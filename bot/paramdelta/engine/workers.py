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
model's size. When finished shards go to a hook (an upload that then deletes
them), shards are written one at a time: a unit of shard s starts only once
every earlier shard has been handed over, so disk holds about one shard being
uploaded plus the one being written.
"""

from __future__ import annotations

import ctypes
import os
import resource
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from huggingface_hub.utils import tqdm

from paramdelta.engine.checkpoint import Source
from paramdelta.engine.delta import DeltaReport
from paramdelta.engine.kernel import (
    CPU_BLOCK,
    OPERANDS,
    TORCH_DTYPES,
    Moments,
    NonFinite,
    check_copy,
    copy_into,
    merge_into,
    scratch_buffers,
)
from paramdelta.engine.merge_plan import ROLE_TITLES, TORCH_DTYPE_NAMES, MergePlan
from paramdelta.engine.options import DEFAULT_MAX_MEMORY
from paramdelta.engine.safetensors_format import ITEMSIZE
from paramdelta.engine.writer import OutputWriter, ShardPlan
from paramdelta.errors import CheckpointError, UsageError

MIN_CHUNK_ELEMENTS = 4096  # also the alignment of bigger chunks
# On a GPU, bigger transfers amortise the copies: 8 Mi elements per chunk.
CUDA_CHUNK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class Read:
    role: str
    source: Source
    file: str
    offset: int
    nbytes: int
    dtype: str


@dataclass(frozen=True)
class Unit:
    """One chunk: ``count`` output elements, written at ``out_offset`` of shard ``shard``.

    ``op``: "merge" (reads are post, base, new_base), "convert" (one read, cast to
    the output dtype) or "raw" (one read straight into the output buffer).
    """

    tensor: str
    shard: int
    out_offset: int
    count: int
    out_dtype: str
    op: str
    reads: tuple[Read, ...]

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
    per_element = workers * (3 * in_size + _out_itemsize(plan))
    elements = max(MIN_CHUNK_ELEMENTS, min(wanted, max_memory // per_element))
    return elements - elements % MIN_CHUNK_ELEMENTS


def _max_in_itemsize(plan: MergePlan) -> int:
    return max(
        (ITEMSIZE[ref.dtype] for i in plan.items for s in i.segments for _, ref, _ in s.inputs),
        default=1,
    )


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
            if segment.op == "merge":
                op = "merge"
            elif segment.inputs[0][1].dtype == item.dtype:
                op = "raw"
            else:
                op = "convert"
            for start in range(0, segment.count, elements):
                count = min(elements, segment.count - start)
                reads = tuple(
                    Read(
                        role,
                        sources[role],
                        ref.file,
                        ref.entry.offset + (first + start) * ITEMSIZE[ref.dtype],
                        count * ITEMSIZE[ref.dtype],
                        ref.dtype,
                    )
                    for role, ref, first in segment.inputs
                )
                out_offset = tensor_offset + (segment.out_start + start) * out_size
                units.append(Unit(item.name, shard, out_offset, count, item.dtype, op, reads))
    units.sort(key=lambda u: u.shard)  # stable: file order within a shard is kept
    return units


def _host_buffer(nbytes: int, pinned: bool) -> tuple[torch.Tensor, memoryview]:
    """A uint8 tensor and a writable memoryview of the same memory (for preadv/pwrite)."""
    tensor = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=pinned)
    raw = (ctypes.c_char * tensor.numel()).from_address(tensor.data_ptr())
    return tensor, memoryview(raw).cast("B")


class _Worker:
    """One worker's buffers and the read -> compute -> write of a unit.

    Each worker sums the delta report of the chunks it merged (`delta`); a chunk
    whose output holds NaN or Inf stops the merge with an error naming the tensor.
    """

    def __init__(self, device: torch.device, elements: int, in_bytes: int, out_bytes: int):
        self.on_cuda = device.type == "cuda"
        self.delta = DeltaReport()
        self.inputs = [_host_buffer(in_bytes, self.on_cuda) for _ in range(3)]
        self.out = _host_buffer(out_bytes, self.on_cuda)
        # A GPU has bandwidth to spare: one block per chunk, no Python loop.
        self.scratch = scratch_buffers(
            elements if self.on_cuda else min(elements, CPU_BLOCK), device
        )
        if self.on_cuda:
            self.stream = torch.cuda.Stream(device)
            self.dev_in = [
                torch.empty(in_bytes, dtype=torch.uint8, device=device) for _ in range(3)
            ]
            self.dev_out = torch.empty(out_bytes, dtype=torch.uint8, device=device)

    def read(self, unit: Unit) -> None:
        # A raw copy needs no conversion: straight into the output buffer.
        targets = [self.out] if unit.op == "raw" else self.inputs
        for read, (_, view) in zip(unit.reads, targets, strict=False):
            read.source.read_into(read.file, read.offset, view[: read.nbytes])

    def compute(self, unit: Unit, alpha: float) -> None:
        if unit.op == "raw":
            view = self.out[0][: unit.out_nbytes].view(TORCH_DTYPES[unit.out_dtype])
            moments = Moments(nonfinite=check_copy(view))
        elif self.on_cuda:
            with torch.cuda.stream(self.stream):
                moments = self._compute(unit, alpha)
            self.stream.synchronize()
        else:
            moments = self._compute(unit, alpha)
        self.delta.add(unit.tensor, moments)
        if moments.nonfinite is not None and moments.nonfinite.output:
            raise _nonfinite_error(unit, moments.nonfinite)

    def _compute(self, unit: Unit, alpha: float) -> Moments:
        ins = []
        for i, read in enumerate(unit.reads):
            data = self.inputs[i][0][: read.nbytes]
            if self.on_cuda:
                data = self.dev_in[i][: read.nbytes].copy_(data, non_blocking=True)
            ins.append(data.view(TORCH_DTYPES[read.dtype]))
        host_out = self.out[0][: unit.out_nbytes]
        out = self.dev_out[: unit.out_nbytes] if self.on_cuda else host_out
        typed = out.view(TORCH_DTYPES[unit.out_dtype])
        if unit.op == "merge":
            moments = merge_into(typed, ins[0], ins[1], ins[2], alpha, self.scratch)
        else:
            moments = Moments(nonfinite=copy_into(typed, ins[0]))
        if self.on_cuda:
            host_out.copy_(out, non_blocking=True)
        return moments

    def output(self, unit: Unit) -> memoryview:
        return self.out[1][: unit.out_nbytes]


def _nonfinite_error(unit: Unit, counts: NonFinite) -> CheckpointError:
    """One line naming the tensor, what is not finite, and in which input it started."""
    out = len(OPERANDS) - 1
    what = f"{counts.nan[out]} NaN and {counts.inf[out]} Inf values"
    if unit.op != "merge":
        role = ROLE_TITLES[unit.reads[0].role]
        return CheckpointError(
            f"tensor {unit.tensor!r}: {what} in the elements copied from the {role} checkpoint"
        )
    inputs = [
        f"{ROLE_TITLES[role]} {counts.nan[i]} NaN/{counts.inf[i]} Inf"
        for i, role in enumerate(OPERANDS[:out])
        if counts.nan[i] or counts.inf[i]
    ]
    if inputs:
        cause = f"the inputs hold them there: {', '.join(inputs)}"
    else:
        dtype = TORCH_DTYPE_NAMES.get(unit.out_dtype, unit.out_dtype)
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
    every earlier shard has been handed over (to the writer's hook), so only
    one shard is being written while the previous one uploads.
    """

    def __init__(self, units: list[Unit], shards: int, one_shard_at_a_time: bool) -> None:
        self._pending = iter(units)
        self._remaining = [0] * shards
        for unit in units:
            self._remaining[unit.shard] += 1
        self._handed_over = [count == 0 for count in self._remaining]
        self._gated = one_shard_at_a_time
        self._cond = threading.Condition()
        self.stop = threading.Event()

    def empty_shards(self) -> list[int]:
        """Shards of empty tensors only: nothing to compute, but each is still a file."""
        return [shard for shard, count in enumerate(self._remaining) if count == 0]

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


def execute(
    plan: MergePlan,
    sources: dict[str, Source],
    writer: OutputWriter,
    *,
    device: str = "auto",
    max_memory: int = DEFAULT_MAX_MEMORY,
    progress: bool = True,
) -> MergeStats:
    """Compute every output tensor of ``plan`` into ``writer``'s shards."""
    started, cpu_started = time.perf_counter(), time.process_time()
    dev = resolve_device(device)
    used = list(sources.values())
    workers = worker_count(used)
    elements = chunk_elements(plan, used, workers, max_memory, dev.type == "cuda")
    units = plan_units(plan, writer.shards, sources, elements)
    schedule = _Schedule(units, len(writer.shards), writer.on_shard_written is not None)
    for shard in schedule.empty_shards():
        writer.shard_done(shard)
    in_bytes = elements * _max_in_itemsize(plan)
    out_bytes = elements * _out_itemsize(plan)
    failures: list[BaseException] = []
    reports: list[DeltaReport] = []
    bar = tqdm(
        total=plan.nbytes,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="merge",
        disable=not progress,
    )

    def work() -> None:
        try:
            worker = _Worker(dev, elements, in_bytes, out_bytes)
            reports.append(worker.delta)
            while (unit := schedule.next()) is not None:
                worker.read(unit)
                worker.compute(unit, plan.alpha)
                writer.write(unit.shard, unit.out_offset, worker.output(unit))
                with bar.get_lock():  # tqdm's counter is not atomic
                    bar.update(unit.out_nbytes)
                if schedule.done(unit):
                    writer.shard_done(unit.shard)
                    schedule.handed_over(unit.shard)
        except BaseException as e:  # re-raised by the calling thread
            failures.append(e)
            schedule.abort()

    threads = [
        threading.Thread(target=work, name=f"paramdelta-merge-{i}", daemon=True)
        for i in range(workers)
    ]
    with _torch_threads(1):
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        except BaseException:  # Ctrl-C lands here: let the workers stop at a unit boundary
            schedule.abort()
            for thread in threads:
                if thread.ident is not None:  # it may land before every worker has started
                    thread.join()
            raise
        finally:
            bar.close()
    if failures:
        raise failures[0]
    delta = DeltaReport({item.name: Moments() for item in plan.items})  # in the plan's order
    delta.merge(reports)
    return MergeStats(
        tensors=len(plan.items),
        bytes=plan.nbytes,
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
        device=str(dev),
        workers=workers,
        chunk_elements=elements,
        peak_rss_bytes=peak_rss_bytes(),
        delta=delta,
    )


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
