"""Several devices on one machine: one engine per device under the local runner (data parallel).

Any engine with a `device` option takes part: the transformers engine places its model on the device; the vLLM
engine pins its engine-core process to the GPU (tensor parallel is the engine option `tensor_parallel_size`, on
the GPUs CUDA_VISIBLE_DEVICES shows, without --devices).

The pure part decides which devices to use and which requests of a batch go to which device (balanced,
deterministic, testable without a GPU); `MultiDeviceCaptioner` holds one Captioner per device and runs a
batch's shares in parallel threads (torch releases the GIL inside its kernels). The pipeline hands it
batches of ``per-device batch x devices`` and sees one captioner. See docs/scale-out.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from capmill.errors import ConfigError
from capmill.records import Generation, Item, Record, Request


def resolve_devices(spec: str | None, cuda_count: int | None = None) -> list[str]:
    """The device list for ``--devices``: None/"auto" (every GPU, else the CPU), "all", "cpu", "0,1",
    "cuda:0,cuda:2", or "cpu,cpu" (several CPU engines). ``cuda_count`` defaults to torch's count."""
    text = (spec or "auto").strip().lower()
    if cuda_count is None:
        cuda_count = _cuda_count() if text != "cpu" and not set(text.split(",")) <= {"cpu"} else 0
    if text in ("auto", "all"):
        if cuda_count:
            return [f"cuda:{i}" for i in range(cuda_count)]
        if text == "all":
            raise ConfigError("--devices all: no CUDA device is visible here")
        return ["cpu"]
    devices: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ConfigError(f"--devices {spec!r}: empty entry")
        if part == "cpu":
            devices.append("cpu")
            continue
        index = part.removeprefix("cuda:")
        if not index.isdigit():
            raise ConfigError(f"--devices {spec!r}: {part!r} is not cpu, N or cuda:N")
        if int(index) >= cuda_count:
            raise ConfigError(
                f"--devices {spec!r}: cuda:{index} asked for, but {cuda_count} CUDA device(s) are visible"
            )
        name = f"cuda:{int(index)}"
        if name in devices:
            raise ConfigError(f"--devices {spec!r}: {name} twice (one engine per GPU)")
        devices.append(name)
    return devices


def split_batch(costs: Sequence[float], n_devices: int) -> list[list[int]]:
    """Indices of a batch per device: counts differ by at most one and estimated costs are balanced.

    Largest first, each to the least-loaded device that still has room (ties: the lower device); so the same
    costs always give the same split. Each share keeps input order.
    """
    if n_devices < 1:
        raise ConfigError("need at least one device")
    n = len(costs)
    room = [n // n_devices + (1 if d < n % n_devices else 0) for d in range(n_devices)]
    load = [0.0] * n_devices
    shares: list[list[int]] = [[] for _ in range(n_devices)]
    for i in sorted(range(n), key=lambda i: (-costs[i], i)):
        d = min((d for d in range(n_devices) if room[d] > 0), key=lambda d: (load[d], d))
        shares[d].append(i)
        load[d] += costs[i]
        room[d] -= 1
    return [sorted(share) for share in shares]


def request_cost(request: Request) -> float:
    """Rough work of one request: image pixels in 16x16 patches, video frames alike, prompt characters / 4."""
    pixels = sum(im.size[0] * im.size[1] for im in request.images)
    pixels += sum(f.size[0] * f.size[1] for v in request.videos for f in v)
    chars = sum(len(str(m.get("content"))) for m in request.messages) + len(request.prompt_text or "")
    return pixels / 256 + chars / 4


def engine_options_for(options: dict[str, Any], device: str) -> dict[str, Any]:
    """The engine options of one device's engine: the shared ones with ``device`` set."""
    return {**options, "device": device}


def captioner_factory(
    kwargs: dict[str, Any], spec: str | None, make_captioner: Callable[[dict[str, Any]], Any]
) -> tuple[Callable[[], Any], int]:
    """(factory of the run's captioner, number of devices) for ``--devices spec`` (None: the engine decides).

    Several devices give a MultiDeviceCaptioner whose engines each get ``device=...``; ConfigError when the
    engine has no device option or ``--device`` names one device as well.
    """
    if spec is None:
        return (lambda: make_captioner(kwargs)), 1
    devices = resolve_devices(spec)
    options = dict(kwargs.get("engine_options") or {})
    if len(devices) == 1:
        return (lambda: make_captioner({**kwargs, "engine_options": engine_options_for(options, devices[0])})), 1
    if options.get("device"):
        raise ConfigError("give either --device (one device) or --devices (several), not both")
    from capmill.engines import ENGINES

    engine = kwargs.get("engine") or "transformers"
    if "device" not in ENGINES.get(engine).Options.model_fields:
        raise ConfigError(
            f"--devices: engine {engine!r} has no device option; one engine per device needs an engine that has "
            "(transformers, vllm)"
        )

    def make() -> MultiDeviceCaptioner:
        return MultiDeviceCaptioner(
            lambda d: make_captioner({**kwargs, "engine_options": engine_options_for(options, d)}), devices
        )

    return make, len(devices)


class MultiDeviceCaptioner:
    """One Captioner per device behind the Captioner interface the pipeline uses.

    ``make(device)`` builds the captioner of one device. Everything but `generate` goes to the first one
    (they differ only in the device, which is no part of a record or of the resume key).
    """

    def __init__(self, make: Callable[[str], Any], devices: Sequence[str]):
        if not devices:
            raise ConfigError("no devices given")
        self.devices = list(devices)
        self.captioners = [make(d) for d in self.devices]
        self.main = self.captioners[0]
        self._pool = ThreadPoolExecutor(max_workers=len(self.devices), thread_name_prefix="capmill-device")
        self._lock = threading.Lock()
        self._loaded = False

    def __getattr__(self, name: str) -> Any:  # mode, profile, model, prompt_hash, render_prompt ...
        return getattr(self.__dict__["main"], name)

    @property
    def engine(self) -> Any:
        """Load every device's weights (in parallel) and return the first engine."""
        with self._lock:
            if not self._loaded:
                list(self._pool.map(lambda c: c.engine, self.captioners))
                self._loaded = True
        return self.main.engine

    def settings(self) -> dict[str, Any]:
        return self.main.settings()

    def prepare(self, item: Item, mode: str | None = None) -> Request:
        return self.main.prepare(item, mode)

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """Split by `split_batch`, one share per device in parallel, answers back in request order."""
        requests = list(requests)
        if not requests:
            return []
        shares = split_batch([request_cost(r) for r in requests], len(self.captioners))
        jobs = [
            (share, self._pool.submit(captioner.generate, [requests[i] for i in share]))
            for share, captioner in zip(shares, self.captioners, strict=True)
            if share
        ]
        out: list[Generation | None] = [None] * len(requests)
        for share, future in jobs:
            for i, generation in zip(share, future.result(), strict=True):
                out[i] = generation
        return [g for g in out if g is not None]

    def fast_paths(self) -> dict[str, Any]:
        """Each fast path as the devices report it: one device's entry when they agree, else every device's."""
        reports = {device: c.fast_paths() for device, c in zip(self.devices, self.captioners, strict=True)}
        paths = {name for report in reports.values() for name in report}
        out: dict[str, Any] = {}
        for name in sorted(paths):
            states = {device: report.get(name, {}) for device, report in reports.items()}
            if len({s.get("state") for s in states.values()}) == 1:
                out[name] = next(iter(states.values()))
            else:
                out[name] = {"state": "disabled" if any(s.get("state") == "disabled" for s in states.values())
                             else "mixed", "devices": states}  # fmt: skip
        return out

    def finish(self, item: Item, request: Request | None, generation: Generation) -> Record:
        return self.main.finish(item, request, generation)

    def error_record(self, item: Item, error: Any) -> Record:
        return self.main.error_record(item, error)

    def close(self) -> None:
        for captioner in self.captioners:
            close = getattr(captioner, "close", None)
            if close:
                close()
        self._pool.shutdown(wait=True)


def _cuda_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
