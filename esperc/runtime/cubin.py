"""Load AOT-compiled cubins and launch them through the CUDA driver API, without Triton.

A :class:`~esperc.backend.triton.aot.CompiledKernel` (or anything with the same attributes, such
as one rebuilt from a .kpkg manifest) carries the cubin, its entry symbol and its parameter
layout. :class:`CubinRuntime` loads the cubin once per (cubin SHA-256, device) with
``cuModuleLoadData`` into the device's primary context (the one PyTorch uses), raises the
dynamic shared-memory limit above 48 KiB when the kernel needs it, and launches with
``cuLaunchKernelEx`` on the caller's stream, appending the scratch pointers Triton >= 3.3
kernels take (null when their size is 0, else a buffer from PyTorch's allocator).

Neither Triton nor PyTorch is imported at module import; PyTorch is imported on first launch.
Launch semantics follow Triton's own launcher (``backends/nvidia/driver.c``): blockDim.x =
32 * num_warps, gridDim.x = grid[0] * num_ctas, cluster dims (num_ctas, 1, 1) when num_ctas > 1.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from esperc.runtime import cuda_driver as cu

if TYPE_CHECKING:
    from esperc.backend.triton.aot import CompiledKernel, KernelArg

_MAX_GRID = (2**31 - 1, 65535, 65535)
_DEFAULT_SHARED_LIMIT = 48 * 1024

_INT_CTYPES: dict[str, tuple[type, int, int]] = {
    "i1": (ctypes.c_int8, 0, 1),
    "i8": (ctypes.c_int8, -(2**7), 2**7 - 1),
    "u8": (ctypes.c_uint8, 0, 2**8 - 1),
    "i16": (ctypes.c_int16, -(2**15), 2**15 - 1),
    "u16": (ctypes.c_uint16, 0, 2**16 - 1),
    "i32": (ctypes.c_int32, -(2**31), 2**31 - 1),
    "u32": (ctypes.c_uint32, 0, 2**32 - 1),
    "i64": (ctypes.c_int64, -(2**63), 2**63 - 1),
    "u64": (ctypes.c_uint64, 0, 2**64 - 1),
}


class CubinLaunchError(RuntimeError):
    """A cubin could not be loaded or launched: bad arguments, wrong device, or a CUDA error."""


@dataclass(frozen=True, slots=True)
class LoadedKernel:
    """A cubin loaded into one device's primary context.

    Attributes:
        module: the ``CUmodule`` handle.
        function: the ``CUfunction`` handle.
        device: CUDA device ordinal.
        n_regs: registers per thread, as the driver reports.
        local_bytes: local memory per thread in bytes (spills, stack).
        static_shared: static shared memory per CTA in bytes.
        max_threads: most threads per CTA this function can be launched with.
    """

    module: int
    function: int
    device: int
    n_regs: int
    local_bytes: int
    static_shared: int
    max_threads: int


class CubinRuntime:
    """Loads cubins per device and launches them; holds the per-process module cache."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str, int], LoadedKernel] = {}
        self._contexts: dict[int, int] = {}

    def load(self, kernel: CompiledKernel, device: int) -> LoadedKernel:
        """Load ``kernel.cubin`` on ``device`` (cached) and return its handles.

        Raises:
            CubinLaunchError: wrong architecture, too much shared memory or threads, or a
                driver error (e.g. CUDA_ERROR_NO_BINARY_FOR_GPU, CUDA_ERROR_INVALID_PTX).
        """
        key = (hashlib.sha256(kernel.cubin).hexdigest(), kernel.name, device)
        loaded = self._loaded.get(key)
        if loaded is None:
            try:
                loaded = self._load(kernel, device)
            except cu.CudaDriverError as exc:
                raise CubinLaunchError(f"loading {kernel.name} on cuda:{device}: {exc}") from exc
            self._loaded[key] = loaded
        return loaded

    def launch(
        self,
        kernel: CompiledKernel,
        grid: Sequence[int],
        *args: Any,
        stream: int | None = None,
        device: int | None = None,
    ) -> None:
        """Launch ``kernel`` on ``grid`` with the user arguments ``args`` (scratch excluded).

        Args:
            kernel: the compiled kernel and its layout.
            grid: 1 to 3 CTA counts (x, y, z) before the num_ctas multiplication; a zero launches
                nothing, as in Triton.
            *args: one value per ``kernel.user_args`` entry, in order: a CUDA ``torch.Tensor``, an
                int address or None for pointers; int/float/bool for scalars.
            stream: a ``CUstream`` handle; default PyTorch's current stream on ``device``.
            device: CUDA ordinal; default PyTorch's current device.

        Raises:
            CubinLaunchError: wrong argument count, type, device, range or alignment, or a CUDA
                error from the load or the launch.
        """
        import torch

        device = torch.cuda.current_device() if device is None else device
        if stream is None:
            stream = torch.cuda.current_stream(device).cuda_stream
        gx, gy, gz = _check_grid(kernel, grid)
        loaded = self.load(kernel, device)
        if gx * gy * gz == 0:
            return
        keep: list[Any] = []  # ctypes values and scratch tensors alive until the call returns
        params = _pack_args(kernel, args, device, (gx, gy, gz), stream, keep)
        config, attrs = _launch_config(kernel, (gx, gy, gz), stream)
        keep.append(attrs)
        try:
            with self._context(device):
                cu.driver().call(
                    "cuLaunchKernelEx", ctypes.byref(config), loaded.function, params, None
                )
        except cu.CudaDriverError as exc:
            raise CubinLaunchError(f"launching {kernel.name} on cuda:{device}: {exc}") from exc

    def bind(
        self, kernel: CompiledKernel, grid: Sequence[int], args: Sequence[Any], device: int
    ) -> BoundLaunch | None:
        """A launch of ``kernel`` on ``grid`` with ``args`` whose tensor arguments change per call.

        The scalars, grid and launch config are packed once; ``BoundLaunch.run`` writes the
        tensors' addresses and launches. None when the kernel needs scratch memory (allocated
        per launch: such kernels go through :meth:`launch`); zero-size scratch pointers are
        bound as null, as Triton's launcher passes them.

        Raises:
            CubinLaunchError: as :meth:`launch`, for a bad argument or a failed module load.
        """
        import torch

        if kernel.global_scratch_size or kernel.profile_scratch_size:
            return None  # a scratch buffer per launch: such kernels go through ``launch``
        gx, gy, gz = _check_grid(kernel, grid)
        loaded = self.load(kernel, device)
        if len(args) != len(kernel.user_args):
            raise CubinLaunchError(f"{kernel.name} takes {len(kernel.user_args)} arguments")
        values, slots = [], []
        for spec, value in zip(kernel.user_args, args, strict=True):
            if isinstance(value, torch.Tensor):
                _to_ctype(kernel, spec, value, device)  # device and alignment checks
                slot = ctypes.c_uint64(0)
                slots.append(slot)
                values.append(slot)
            else:
                values.append(_to_ctype(kernel, spec, value, device))
        # Triton >= 3.3 kernels take trailing scratch pointers; null when their size is 0
        values += [ctypes.c_uint64(0) for _ in kernel.args[len(kernel.user_args) :]]
        params = (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))
        config, attrs = _launch_config(kernel, (gx, gy, gz), 0)
        return BoundLaunch(
            kernel.name, loaded.function, params, slots, config, (values, attrs),
            empty=gx * gy * gz == 0,
        )  # fmt: skip

    def enter(self, device: int) -> Any:
        """Make ``device``'s primary context current; returns the undo (None: nothing to undo)."""
        ctx = self._context(device)
        ctx.__enter__()
        return ctx.__exit__ if ctx._pushed else None  # noqa: SLF001 - its own helper class

    def close(self) -> None:
        """Unload every module this runtime loaded (kernels must no longer be running)."""
        drv = cu.driver()
        for loaded in self._loaded.values():
            with self._context(loaded.device):
                drv.call("cuModuleUnload", loaded.module)
        self._loaded.clear()

    def _load(self, kernel: CompiledKernel, device: int) -> LoadedKernel:
        drv = cu.driver()
        _check_arch(kernel, device)
        module, function = ctypes.c_void_p(), ctypes.c_void_p()
        with self._context(device):
            drv.call("cuModuleLoadData", ctypes.byref(module), kernel.cubin)
            drv.call("cuModuleGetFunction", ctypes.byref(function), module, kernel.name.encode())
            fn = function.value
            static_shared = drv.function_attribute(cu.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, fn)
            if kernel.shared > _DEFAULT_SHARED_LIMIT:
                optin = drv.device_attribute(
                    cu.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, device
                )
                if kernel.shared + static_shared > optin:
                    raise CubinLaunchError(
                        f"{kernel.name} needs {kernel.shared} + {static_shared} bytes of shared "
                        f"memory per CTA; cuda:{device} allows {optin}"
                    )
                drv.call("cuFuncSetCacheConfig", fn, cu.CU_FUNC_CACHE_PREFER_SHARED)
                drv.call(
                    "cuFuncSetAttribute",
                    fn,
                    cu.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    optin - static_shared,
                )
            if kernel.num_ctas == 16:  # Triton does the same: 16-CTA clusters are non-portable
                drv.call(
                    "cuFuncSetAttribute",
                    fn,
                    cu.CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
                    1,
                )
            loaded = LoadedKernel(
                module=module.value,
                function=fn,
                device=device,
                n_regs=drv.function_attribute(cu.CU_FUNC_ATTRIBUTE_NUM_REGS, fn),
                local_bytes=drv.function_attribute(cu.CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES, fn),
                static_shared=static_shared,
                max_threads=drv.function_attribute(cu.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, fn),
            )
        if kernel.num_warps * 32 > loaded.max_threads:
            raise CubinLaunchError(
                f"{kernel.name} uses {kernel.num_warps * 32} threads per CTA; "
                f"the function allows {loaded.max_threads}"
            )
        return loaded

    def _context(self, device: int) -> _PrimaryContext:
        if device not in self._contexts:
            drv = cu.driver()
            dev, ctx = ctypes.c_int(), ctypes.c_void_p()
            drv.call("cuDeviceGet", ctypes.byref(dev), device)
            drv.call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), dev)
            self._contexts[device] = ctx.value
        return _PrimaryContext(self._contexts[device])


class _PrimaryContext:
    """Make a context current for a block, restoring the previous one only if it was changed."""

    def __init__(self, ctx: int) -> None:
        self._ctx = ctx
        self._pushed = False

    def __enter__(self) -> None:
        drv = cu.driver()
        current = ctypes.c_void_p()
        drv.call("cuCtxGetCurrent", ctypes.byref(current))
        if current.value != self._ctx:
            drv.call("cuCtxPushCurrent_v2", self._ctx)
            self._pushed = True

    def __exit__(self, *exc: object) -> None:
        if self._pushed:
            cu.driver().call("cuCtxPopCurrent_v2", ctypes.byref(ctypes.c_void_p()))


class BoundLaunch:
    """One kernel launch with everything but its tensor addresses packed (``CubinRuntime.bind``).

    Not thread-safe on its own: ``run`` writes into the shared parameter array (the caller, a
    ``runtime.launch_list.LaunchList``, holds a lock).
    """

    def __init__(
        self,
        name: str,
        function: int,
        params: ctypes.Array[ctypes.c_void_p],
        slots: list[ctypes.c_uint64],
        config: cu.CUlaunchConfig,
        keep: Any,
        empty: bool = False,
    ) -> None:
        self.name, self._function, self._params, self._slots = name, function, params, slots
        self._config, self._keep, self._empty = config, keep, empty
        self._config_ref = ctypes.byref(config)
        self._launch = cu.driver().entry("cuLaunchKernelEx")

    def run(self, tensors: Sequence[Any], stream: int) -> None:
        """Launch on ``stream`` with these tensors (one per tensor argument, in order).

        Raises:
            CubinLaunchError: the driver refused the launch.
        """
        if self._empty:
            return
        for slot, t in zip(self._slots, tensors, strict=True):
            slot.value = t.data_ptr()
        self._config.hStream = stream
        code = self._launch(self._config_ref, self._function, self._params, None)
        if code:
            exc = cu.driver().error("cuLaunchKernelEx", code)
            raise CubinLaunchError(f"launching {self.name}: {exc}") from exc


_DEFAULT: list[CubinRuntime] = []


def default_runtime() -> CubinRuntime:
    """The process's runtime: CUDA modules are process state, so one cache serves everyone."""
    if not _DEFAULT:
        _DEFAULT.append(CubinRuntime())
    return _DEFAULT[0]


def launch(kernel: CompiledKernel, grid: Sequence[int], *args: Any, **kw: Any) -> None:
    """:meth:`CubinRuntime.launch` on :func:`default_runtime`."""
    default_runtime().launch(kernel, grid, *args, **kw)


def _check_arch(kernel: CompiledKernel, device: int) -> None:
    """sm_XY cubins run on sm_XZ with Z >= Y; sm_90+ ("a" features) only on the exact arch."""
    drv = cu.driver()
    major = drv.device_attribute(cu.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
    minor = drv.device_attribute(cu.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
    want = int(kernel.target.removeprefix("sm_").rstrip("a"))
    have = major * 10 + minor
    if want // 10 != major or (want % 10 > minor) or (want >= 90 and want != have):
        raise CubinLaunchError(
            f"{kernel.name} was compiled for {kernel.target}; cuda:{device} is sm_{have}"
        )


def _check_grid(kernel: CompiledKernel, grid: Sequence[int]) -> tuple[int, int, int]:
    if not 1 <= len(grid) <= 3 or not all(isinstance(g, int) and g >= 0 for g in grid):
        raise CubinLaunchError(f"{kernel.name}: grid {tuple(grid)} is not 1-3 counts >= 0")
    gx, gy, gz = (*grid, 1, 1)[:3]
    for value, limit, axis in zip((gx * kernel.num_ctas, gy, gz), _MAX_GRID, "xyz", strict=True):
        if value > limit:
            raise CubinLaunchError(f"{kernel.name}: grid {axis} = {value} exceeds {limit}")
    return gx, gy, gz


def _pack_args(
    kernel: CompiledKernel,
    args: Sequence[Any],
    device: int,
    grid: tuple[int, int, int],
    stream: int,
    keep: list[Any],
) -> ctypes.Array[ctypes.c_void_p]:
    """The ``void**`` kernelParams array: user arguments, then scratch pointers."""
    user = kernel.user_args
    if len(args) != len(user):
        raise CubinLaunchError(
            f"{kernel.name} takes {len(user)} arguments ({', '.join(a.name for a in user)}), "
            f"got {len(args)}"
        )
    values = [_to_ctype(kernel, a, v, device) for a, v in zip(user, args, strict=True)]
    ctas = math.prod(grid) * kernel.num_ctas
    for arg in kernel.args[len(user) :]:
        size, align = (
            (kernel.global_scratch_size, kernel.global_scratch_align)
            if arg.kind.value == "global_scratch"
            else (kernel.profile_scratch_size, kernel.profile_scratch_align)
        )
        values.append(ctypes.c_uint64(_scratch(size * ctas, align, device, stream, keep)))
    keep.extend(values)
    return (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))


def _to_ctype(kernel: CompiledKernel, arg: KernelArg, value: Any, device: int) -> Any:
    where = f"{kernel.name}: argument {arg.name!r} ({arg.type})"
    if arg.kind.value == "pointer":
        address = _address(where, value, device)
        if arg.divisible_by_16 and address % 16:
            raise CubinLaunchError(f"{where}: address {address:#x} is not 16-byte aligned")
        return ctypes.c_uint64(address)
    if arg.type in _INT_CTYPES:
        ctype, low, high = _INT_CTYPES[arg.type]
        if isinstance(value, float) or not low <= int(value) <= high:
            raise CubinLaunchError(f"{where}: {value!r} is not an integer in [{low}, {high}]")
        if arg.divisible_by_16 and int(value) % 16:
            raise CubinLaunchError(f"{where}: {value} was promised divisible by 16")
        return ctype(int(value))
    if arg.type == "fp32":
        return ctypes.c_float(value)
    if arg.type == "fp64":
        return ctypes.c_double(value)
    if arg.type == "fp16":
        return ctypes.c_uint16(struct.unpack("<H", struct.pack("<e", value))[0])
    if arg.type == "bf16":  # round-to-nearest-even of the fp32 bits, NaN kept quiet
        bits = struct.unpack("<I", struct.pack("<f", value))[0]
        if math.isnan(value):
            return ctypes.c_uint16(0x7FC0)
        return ctypes.c_uint16((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16)
    raise CubinLaunchError(f"{where}: unsupported scalar type")


def _address(where: str, value: Any, device: int) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    if hasattr(value, "data_ptr") and hasattr(value, "device"):  # a torch.Tensor
        if value.device.type != "cuda" or value.device.index != device:
            raise CubinLaunchError(
                f"{where}: tensor is on {value.device}, launch is on cuda:{device}"
            )
        return int(value.data_ptr())
    raise CubinLaunchError(f"{where}: expected a CUDA tensor, an int address or None")


def _scratch(nbytes: int, align: int, device: int, stream: int, keep: list[Any]) -> int:
    """Address of ``nbytes`` of device memory aligned to ``align`` (0 when nbytes is 0)."""
    if nbytes == 0:
        return 0
    import torch

    buf = torch.empty(nbytes + align, dtype=torch.uint8, device=f"cuda:{device}")
    if stream != torch.cuda.current_stream(device).cuda_stream:
        # the caching allocator must not hand the block out again before this launch finishes
        buf.record_stream(torch.cuda.ExternalStream(stream, device=device))
    keep.append(buf)
    return -(-buf.data_ptr() // align) * align


def _launch_config(
    kernel: CompiledKernel, grid: tuple[int, int, int], stream: int
) -> tuple[cu.CUlaunchConfig, ctypes.Array[cu.CUlaunchAttribute]]:
    attrs = (cu.CUlaunchAttribute * 4)()
    n = 0
    if kernel.launch_pdl:
        attrs[n].id = cu.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
        attrs[n].value.programmaticStreamSerializationAllowed = 1
        n += 1
    if kernel.launch_cooperative_grid:
        attrs[n].id = cu.CU_LAUNCH_ATTRIBUTE_COOPERATIVE
        attrs[n].value.cooperative = 1
        n += 1
    if kernel.num_ctas != 1:
        attrs[n].id = cu.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
        attrs[n].value.clusterDim[:] = [kernel.num_ctas, 1, 1]
        attrs[n + 1].id = cu.CU_LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE
        attrs[
            n + 1
        ].value.clusterSchedulingPolicyPreference = cu.CU_CLUSTER_SCHEDULING_POLICY_SPREAD
        n += 2
    config = cu.CUlaunchConfig(
        gridDimX=grid[0] * kernel.num_ctas,
        gridDimY=grid[1],
        gridDimZ=grid[2],
        blockDimX=32 * kernel.num_warps,
        blockDimY=1,
        blockDimZ=1,
        sharedMemBytes=kernel.shared,
        hStream=stream,
        attrs=attrs,
        numAttrs=n,
    )
    return config, attrs
