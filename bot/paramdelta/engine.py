"""Run a `MergePlan`: stream chunks through reusable buffers, overlap read, compute, write.

Three stages, each on its own thread, connected by queues and a fixed set of
buffer slots: the reader fills a slot with the input byte ranges of one chunk
(positional reads, no mmap: touched mapped pages would count as resident
memory and grow with the model), the compute stage (the calling thread) runs
the kernel, the writer `pwrite`s the result at its planned offset. Memory is
the slots plus one float32 scratch buffer, sized from ``max_memory`` and
independent of the model's size. File I/O and torch kernels release the GIL,
so the stages really run at the same time.
"""

from __future__ import annotations

import ctypes
import queue
import resource
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from huggingface_hub.utils import tqdm

from paramdelta.checkpoint import Source
from paramdelta.errors import UsageError
from paramdelta.kernel import TORCH_DTYPES, merge_into
from paramdelta.merge import MergePlan
from paramdelta.safetensors_format import ITEMSIZE
from paramdelta.writer import OutputWriter, ShardPlan

DEFAULT_MAX_MEMORY = 256 * 2**20
SLOTS = 3  # one chunk being read, one computed, one written
MIN_CHUNK_ELEMENTS = 4096  # also the alignment of bigger chunks


@dataclass(frozen=True)
class Read:
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

    shard: int
    out_offset: int
    count: int
    out_dtype: str
    op: str
    reads: tuple[Read, ...]
    last_in_shard: bool = False

    @property
    def out_nbytes(self) -> int:
        return self.count * ITEMSIZE[self.out_dtype]


@dataclass(frozen=True)
class MergeStats:
    tensors: int
    bytes: int
    seconds: float
    device: str
    chunk_elements: int
    peak_rss_bytes: int


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use --device cpu)")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, not {device!r}")
    return torch.device(device)


def chunk_elements(plan: MergePlan, max_memory: int) -> int:
    """Elements per chunk so that all slots and the scratch buffer fit in ``max_memory``."""
    per_element = SLOTS * (3 * _max_in_itemsize(plan) + _out_itemsize(plan)) + 4
    elements = max(MIN_CHUNK_ELEMENTS, max_memory // per_element)
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
    """Cut every segment of every tensor into chunks of at most ``elements``, in shard order."""
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
                        sources[role],
                        ref.file,
                        ref.entry.offset + (first + start) * ITEMSIZE[ref.dtype],
                        count * ITEMSIZE[ref.dtype],
                        ref.dtype,
                    )
                    for role, ref, first in segment.inputs
                )
                out_offset = tensor_offset + (segment.out_start + start) * out_size
                units.append(Unit(shard, out_offset, count, item.dtype, op, reads))
    return _mark_shard_ends(units, len(shards))


def _mark_shard_ends(units: list[Unit], n_shards: int) -> list[Unit]:
    last: dict[int, int] = {}
    for i, unit in enumerate(units):
        last[unit.shard] = i
    for shard in range(n_shards):
        if shard not in last:  # only empty tensors: the shard still needs closing
            units.append(Unit(shard, 0, 0, "U8", "raw", ()))
            last[shard] = len(units) - 1
    for i in last.values():
        u = units[i]
        units[i] = Unit(u.shard, u.out_offset, u.count, u.out_dtype, u.op, u.reads, True)
    units.sort(key=lambda u: u.shard)  # stable: chunk order within a shard is kept
    return units


def _host_buffer(nbytes: int, pinned: bool) -> tuple[torch.Tensor, memoryview]:
    """A uint8 tensor and a writable memoryview of the same memory (for preadv/pwrite)."""
    tensor = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=pinned)
    raw = (ctypes.c_char * tensor.numel()).from_address(tensor.data_ptr())
    return tensor, memoryview(raw).cast("B")


class _Slot:
    def __init__(self, in_bytes: int, out_bytes: int, pinned: bool) -> None:
        self.inputs = [_host_buffer(in_bytes, pinned) for _ in range(3)]
        self.out = _host_buffer(out_bytes, pinned)


class _Compute:
    """The compute stage: runs the kernel on one slot, on the CPU or a CUDA device."""

    def __init__(self, device: torch.device, elements: int, in_bytes: int, out_bytes: int):
        self.device = device
        self.on_cuda = device.type == "cuda"
        self.work = torch.empty(elements, dtype=torch.float32, device=device)
        if self.on_cuda:
            self.dev_in = [
                torch.empty(in_bytes, dtype=torch.uint8, device=device) for _ in range(3)
            ]
            self.dev_out = torch.empty(out_bytes, dtype=torch.uint8, device=device)

    def run(self, unit: Unit, slot: _Slot, alpha: float) -> None:
        if unit.op == "raw" or unit.count == 0:
            return  # the reader put the bytes straight into the output buffer
        ins = []
        for i, read in enumerate(unit.reads):
            host = slot.inputs[i][0][: read.nbytes]
            if self.on_cuda:
                host = self.dev_in[i][: read.nbytes].copy_(host, non_blocking=True)
            ins.append(host.view(TORCH_DTYPES[read.dtype]))
        out_host = slot.out[0][: unit.out_nbytes]
        out = (self.dev_out[: unit.out_nbytes] if self.on_cuda else out_host).view(
            TORCH_DTYPES[unit.out_dtype]
        )
        if unit.op == "merge":
            work = out if out.dtype == torch.float32 else self.work[: unit.count]
            merge_into(out, work, ins[0], ins[1], ins[2], alpha)
        else:
            out.copy_(ins[0])
        if self.on_cuda:
            out_host.copy_(self.dev_out[: unit.out_nbytes], non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()


_DONE = object()


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
    started = time.perf_counter()
    dev = resolve_device(device)
    elements = chunk_elements(plan, max_memory)
    in_bytes = elements * _max_in_itemsize(plan)
    out_bytes = elements * _out_itemsize(plan)
    units = plan_units(plan, writer.shards, sources, elements)
    pinned = dev.type == "cuda"
    slots = [_Slot(in_bytes, out_bytes, pinned) for _ in range(SLOTS)]
    compute = _Compute(dev, elements, in_bytes, out_bytes)

    free: queue.Queue[int] = queue.Queue()
    for i in range(SLOTS):
        free.put(i)
    computed: queue.Queue[object] = queue.Queue()
    to_write: queue.Queue[object] = queue.Queue()
    stop = threading.Event()
    failures: list[BaseException] = []

    def read_stage() -> None:
        try:
            for unit in units:
                index = free.get()
                if stop.is_set():
                    return
                slot = slots[index]
                raw = unit.op == "raw"  # no conversion: straight into the output buffer
                targets = [slot.out[1]] if raw else [buf[1] for buf in slot.inputs]
                for read, view in zip(unit.reads, targets, strict=False):
                    read.source.read_into(read.file, read.offset, view[: read.nbytes])
                computed.put((unit, index))
        except BaseException as e:  # handed to the main thread, which re-raises it
            failures.append(e)
            stop.set()
        finally:
            computed.put(_DONE)

    bar = tqdm(
        total=plan.nbytes,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="merge",
        disable=not progress,
    )

    def write_stage() -> None:
        while (job := to_write.get()) is not _DONE:
            unit, index = job  # type: ignore[misc]
            try:
                if not stop.is_set():
                    writer.write(
                        unit.shard, unit.out_offset, slots[index].out[1][: unit.out_nbytes]
                    )
                    if unit.last_in_shard:
                        writer.shard_done(unit.shard)
                    bar.update(unit.out_nbytes)
            except BaseException as e:
                failures.append(e)
                stop.set()
            finally:
                free.put(index)

    reader = threading.Thread(target=read_stage, name="paramdelta-read", daemon=True)
    writer_thread = threading.Thread(target=write_stage, name="paramdelta-write", daemon=True)
    reader.start()
    writer_thread.start()
    try:
        while (job := computed.get()) is not _DONE:
            if stop.is_set():
                free.put(job[1])  # type: ignore[index]
                continue
            unit, index = job  # type: ignore[misc]
            compute.run(unit, slots[index], plan.alpha)
            to_write.put(job)
    except BaseException as e:
        failures.append(e)
        stop.set()
    finally:
        stop_reader = stop.is_set()
        if stop_reader:
            for i in range(SLOTS):
                free.put(i)  # wake a reader blocked on a slot so it can see `stop`
        to_write.put(_DONE)
        reader.join()
        writer_thread.join()
        bar.close()
    if failures:
        raise failures[0]
    return MergeStats(
        tensors=len(plan.items),
        bytes=plan.nbytes,
        seconds=time.perf_counter() - started,
        device=str(dev),
        chunk_elements=elements,
        peak_rss_bytes=peak_rss_bytes(),
    )


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
