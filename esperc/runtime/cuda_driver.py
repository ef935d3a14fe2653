"""A thin ctypes binding of the few CUDA driver API calls needed to load and launch cubins.

``libcuda.so.1`` is opened on first use, so importing this module works on a machine without
CUDA. Every call's ``CUresult`` is checked; a failure raises :class:`CudaDriverError` naming the
call and the driver's error name and text. Constants are copied from ``cuda.h`` (CUDA 12).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

CUDA_SUCCESS = 0

CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97

CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK = 0
CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES = 1
CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES = 3
CU_FUNC_ATTRIBUTE_NUM_REGS = 4
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 14
CU_FUNC_CACHE_PREFER_SHARED = 1

CU_LAUNCH_ATTRIBUTE_COOPERATIVE = 2
CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION = 4
CU_LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE = 5
CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6
CU_CLUSTER_SCHEDULING_POLICY_SPREAD = 1


class CudaDriverError(RuntimeError):
    """A CUDA driver API call returned an error (or libcuda could not be opened)."""

    def __init__(self, call: str, code: int, name: str, text: str) -> None:
        super().__init__(f"{call} failed: {name} ({code}): {text}")
        self.call = call
        self.code = code


class CUlaunchAttributeValue(ctypes.Union):
    """``CUlaunchAttributeValue``: a 64-byte union; only the members Triton kernels use."""

    _fields_ = [
        ("pad", ctypes.c_char * 64),
        ("align", ctypes.c_void_p),  # the C union holds pointers: 8-byte aligned
        ("cooperative", ctypes.c_int),
        ("clusterDim", ctypes.c_uint * 3),
        ("clusterSchedulingPolicyPreference", ctypes.c_int),
        ("programmaticStreamSerializationAllowed", ctypes.c_int),
    ]


class CUlaunchAttribute(ctypes.Structure):
    """``CUlaunchAttribute``: an id (padded to 8 bytes) and its value."""

    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", CUlaunchAttributeValue)]


class CUlaunchConfig(ctypes.Structure):
    """``CUlaunchConfig`` as taken by ``cuLaunchKernelEx``."""

    _fields_ = [
        ("gridDimX", ctypes.c_uint),
        ("gridDimY", ctypes.c_uint),
        ("gridDimZ", ctypes.c_uint),
        ("blockDimX", ctypes.c_uint),
        ("blockDimY", ctypes.c_uint),
        ("blockDimZ", ctypes.c_uint),
        ("sharedMemBytes", ctypes.c_uint),
        ("hStream", ctypes.c_void_p),
        ("attrs", ctypes.POINTER(CUlaunchAttribute)),
        ("numAttrs", ctypes.c_uint),
    ]


_P = ctypes.c_void_p
_PP = ctypes.POINTER(ctypes.c_void_p)
_PI = ctypes.POINTER(ctypes.c_int)
# name -> argtypes; all return CUresult (int). Versioned names are the ABI symbols cuda.h maps to.
_SIGNATURES: dict[str, list[Any]] = {
    "cuInit": [ctypes.c_uint],
    "cuDeviceGet": [_PI, ctypes.c_int],
    "cuDeviceGetCount": [_PI],
    "cuDeviceGetAttribute": [_PI, ctypes.c_int, ctypes.c_int],
    "cuDevicePrimaryCtxRetain": [_PP, ctypes.c_int],
    "cuCtxGetCurrent": [_PP],
    "cuCtxPushCurrent_v2": [_P],
    "cuCtxPopCurrent_v2": [_PP],
    "cuModuleLoadData": [_PP, ctypes.c_char_p],
    "cuModuleUnload": [_P],
    "cuModuleGetFunction": [_PP, _P, ctypes.c_char_p],
    "cuFuncGetAttribute": [_PI, ctypes.c_int, _P],
    "cuFuncSetAttribute": [_P, ctypes.c_int, ctypes.c_int],
    "cuFuncSetCacheConfig": [_P, ctypes.c_int],
    "cuLaunchKernelEx": [ctypes.POINTER(CUlaunchConfig), _P, _PP, _PP],
    "cuGetErrorName": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
    "cuGetErrorString": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
}


class Driver:
    """The opened libcuda with typed entry points; ``call`` checks the result code."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = ctypes.c_int

    def call(self, name: str, *args: Any) -> None:
        """Call ``name(*args)``; raise :class:`CudaDriverError` unless it returns CUDA_SUCCESS."""
        code = getattr(self._lib, name)(*args)
        if code != CUDA_SUCCESS:
            raise CudaDriverError(name, code, *self._describe(code))

    def entry(self, name: str) -> Any:
        """The typed ctypes function ``name`` (for hot paths that check the code themselves)."""
        return getattr(self._lib, name)

    def error(self, name: str, code: int) -> CudaDriverError:
        """The :class:`CudaDriverError` of ``name`` returning ``code``."""
        return CudaDriverError(name, code, *self._describe(code))

    def _describe(self, code: int) -> tuple[str, str]:
        name, text = ctypes.c_char_p(), ctypes.c_char_p()
        self._lib.cuGetErrorName(code, ctypes.byref(name))
        self._lib.cuGetErrorString(code, ctypes.byref(text))
        return (
            (name.value or b"CUDA_ERROR_UNKNOWN").decode(),
            (text.value or b"unknown error").decode(),
        )

    def device_attribute(self, attribute: int, device: int) -> int:
        value = ctypes.c_int()
        self.call("cuDeviceGetAttribute", ctypes.byref(value), attribute, device)
        return value.value

    def function_attribute(self, attribute: int, function: int) -> int:
        value = ctypes.c_int()
        self.call("cuFuncGetAttribute", ctypes.byref(value), attribute, function)
        return value.value


@functools.cache
def driver() -> Driver:
    """Open libcuda.so.1 once per process and ``cuInit`` it.

    Raises:
        CudaDriverError: the library cannot be opened (no NVIDIA driver) or cuInit fails.
    """
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise CudaDriverError("dlopen(libcuda.so.1)", -1, "NO_DRIVER", str(exc)) from exc
    drv = Driver(lib)
    drv.call("cuInit", 0)
    return drv


def local_arch() -> str | None:
    """The ``sm_XY`` arch of the first visible CUDA device, or None without one.

    The device is ordinal 0 after ``CUDA_VISIBLE_DEVICES``, the one torch would call current.
    Costs a failed ``dlopen`` (well under 1 ms) on a machine without libcuda, and ``cuInit``
    (tens to hundreds of ms, once per process) on one with a driver; never imports torch.
    Never raises: a driver that cannot be opened or initialised, or no device, is None.
    """
    try:
        drv = driver()
        count, device = ctypes.c_int(), ctypes.c_int()
        drv.call("cuDeviceGetCount", ctypes.byref(count))
        if count.value == 0:
            return None
        drv.call("cuDeviceGet", ctypes.byref(device), 0)
        major = drv.device_attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device.value)
        minor = drv.device_attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device.value)
    except (CudaDriverError, AttributeError):  # AttributeError: a pre-CUDA-12 libcuda
        return None
    return f"sm_{major}{minor}"
