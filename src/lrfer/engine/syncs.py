"""Count the operations that make the host wait for the GPU (host-device synchronisations).

A CUDA kernel launch returns at once, so the host can assemble the next batch while the GPU still runs the
previous backward. An operation whose result the *host* needs (a tensor's value as a Python number, a
data-dependent output shape, a blocking copy) drains the GPU queue first and ends that overlap.
:class:`SyncCounter` counts such operations with a ``TorchDispatchMode`` (what ATen runs) and a
``TorchFunctionMode`` (what Python asks for), so that a CPU test can show that a training step has none:

* ``_local_scalar_dense`` — ``.item()`` (also under ``inference_mode``, where it arrives as ``aten.item``),
  ``int(t)``, ``float(t)``, ``bool(t)`` (``if tensor:``), and ATen ops that read a value internally
  (``repeat_interleave`` without ``output_size``, ...);
* ``is_nonzero`` and ``equal``;
* data-dependent output shapes: ``nonzero``, ``unique``, ``masked_select``, boolean-mask indexing
  (``x[mask]``, ``x[mask] = v``), ``repeat_interleave`` with tensor repeats and no ``output_size``;
* ``bincount`` (the output's length comes from the input's largest value, read on the host);
* ``linalg_eigh`` (its error check reads the solver's status on the host: FSR-FER's covariance pooling
  has one per call by design);
* ``to_host`` — ``.tolist()``, ``.numpy()``, ``.cpu()`` of any tensor (a device-to-host copy on a GPU);
* ``from_python`` — ``torch.tensor(data, device=...)`` / ``torch.as_tensor(data, device=...)`` with an
  explicit device (a blocking host-to-device copy of pageable memory on a GPU);
* ``cross_device_copy`` — a copy between two devices that blocks (device to host, or not
  ``non_blocking``): only seen on a machine with a GPU.

On a CPU every tensor lives on the host, so a CPU run sees all but the last kind; the count is what the
same code would do on a GPU. ``_local_scalar_dense`` on an optimiser's own ``step`` counters is not
counted, nor are the host tensors an optimiser creates for them: torch keeps them on the host on purpose
(non-fused Adam), so they never wait for the GPU (fused Adam, the trainer's choice on CUDA, reads nothing).

The counter's ``phase`` labels the counts (the trainer's steps, an epoch's set-up and end), see
:func:`phased`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten

#: ATen overload packets that always synchronise (value read on the host or data-dependent shape).
ALWAYS = {
    "_local_scalar_dense": _aten._local_scalar_dense,
    "is_nonzero": _aten.is_nonzero,
    "equal": _aten.equal,
    "nonzero": _aten.nonzero,
    "unique": _aten._unique2,
    "unique_dim": _aten.unique_dim,
    "unique_consecutive": _aten.unique_consecutive,
    "masked_select": _aten.masked_select,
    "linalg_eigh": _aten._linalg_eigh,
    "bincount": _aten.bincount,
}
_PACKETS = {packet: name for name, packet in ALWAYS.items()}
# Under torch.inference_mode (evaluation) ``.item()`` reaches the mode as ``aten.item``, not decomposed into
# ``_local_scalar_dense``: the same read.
_PACKETS[_aten.item] = "_local_scalar_dense"
_FROM_PYTHON = {torch.tensor, torch.as_tensor}
_TO_HOST = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu}


def _is_bool_index(indices) -> bool:
    return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in (indices or ()))


def _storage(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except RuntimeError:
        return None


class _Dispatch(TorchDispatchMode):
    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _PACKETS.get(func.overloadpacket)
        if name == "_local_scalar_dense" and self.counter.is_host_scalar(args[0]):
            name = None
        elif name is None:
            packet = func.overloadpacket
            if packet in (_aten.index, _aten.index_put, _aten.index_put_) and _is_bool_index(args[1]):
                name = "boolean_index"
            elif packet is _aten.repeat_interleave and kwargs.get("output_size") is None:
                # repeat_interleave(repeats) or (x, repeats: Tensor): the output size is summed on the device
                if len(args) == 1 or isinstance(args[1], torch.Tensor):
                    name = "repeat_interleave"
            elif packet in (_aten._to_copy, _aten.copy_):
                name = self._cross_device(func, args, kwargs)
        if name is not None:
            self.counter.add(name)
        return func(*args, **kwargs)

    @staticmethod
    def _cross_device(func, args, kwargs) -> str | None:
        src = args[0] if func.overloadpacket is _aten._to_copy else args[1]
        if not isinstance(src, torch.Tensor):
            return None
        if func.overloadpacket is _aten._to_copy:
            dst = kwargs.get("device") or src.device
            non_blocking = kwargs.get("non_blocking", False)
        else:
            dst = args[0].device
            non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        dst = torch.device(dst)
        if dst == src.device:
            return None
        if dst.type == "cpu" or not non_blocking:
            return "cross_device_copy"
        return None


class _Function(TorchFunctionMode):
    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _TO_HOST:
            self.counter.add("to_host")
        elif func in _FROM_PYTHON and kwargs.get("device") is not None:
            data = args[0] if args else kwargs.get("data")
            host = torch.device(kwargs["device"]).type == "cpu"
            if not isinstance(data, torch.Tensor) and not (host and self.counter.in_optimizer):
                self.counter.add("from_python")
        return func(*args, **kwargs)


class SyncCounter:
    """Context manager counting synchronising operations per ``phase`` (see the module docstring).

    ``counts[phase][kind]`` is the number of operations of ``kind`` seen while ``phase`` was set; the
    modes are thread-local, so work done by other threads (a prefetching thread) is not counted.
    """

    def __init__(self) -> None:
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.phase = "outside"
        self._host_scalars: set[int] = set()
        self._hooks: list = []
        self._optimizers: list = []
        self.in_optimizer = False
        self._modes = (_Function(self), _Dispatch(self))

    # -- optimiser step counters --------
    def _note_optimizer(self, optimizer, *_args, **_kwargs) -> None:
        for state in optimizer.state.values():
            step = state.get("step") if isinstance(state, dict) else None
            if isinstance(step, torch.Tensor) and step.device.type == "cpu" and step.dim() == 0:
                ptr = _storage(step)
                if ptr is not None:
                    self._host_scalars.add(ptr)

    def is_host_scalar(self, t) -> bool:
        """Whether ``t`` is an optimiser's host-resident ``step`` counter (reading it never waits)."""
        if not isinstance(t, torch.Tensor) or t.dim() != 0 or t.device.type != "cpu":
            return False
        # The counters are created inside the first optimizer.step; note them lazily.
        for opt in self._optimizers:
            self._note_optimizer(opt)
        return _storage(t) in self._host_scalars

    def add(self, kind: str) -> None:
        self.counts[self.phase][kind] += 1

    def total(self, phase: str) -> int:
        return sum(self.counts.get(phase, {}).values())

    def __enter__(self) -> SyncCounter:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        def pre(optimizer, *args, **kwargs):
            if optimizer not in self._optimizers:
                self._optimizers.append(optimizer)

            self.in_optimizer = True

        def post(optimizer, *args, **kwargs):
            self.in_optimizer = False

        self._hooks = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def phased(batches: Iterable, counter: SyncCounter) -> Iterator:
    """Yield ``batches`` while labelling the counter's phases ``step <i>`` (assembling batch i and the
    training on it, until batch i+1 is asked for) and ``epoch end`` (after the last batch)."""
    it = iter(batches)
    i = 0
    while True:
        counter.phase = f"step {i}"
        try:
            batch = next(it)
        except StopIteration:
            counter.phase = "epoch end"
            return
        yield batch
        i += 1
