"""Sizes, bit helpers and IOVA arithmetic, as the kernel spells them.

Mirrors: ``include/linux/bitops.h`` (``__ffs``, ``__fls``, ``fls_long``), ``include/linux/log2.h``
(``roundup_pow_of_two``, ``order_base_2``, ``is_power_of_2``), ``include/linux/dma-mapping.h``
(``DMA_BIT_MASK``), ``include/linux/iova.h`` (``iova_shift``, ``iova_mask``, ``iova_offset``,
``iova_align``, ``iova_align_down``), ``include/uapi/asm-generic/errno*.h`` (errno values).

Everything is a plain ``int`` in bytes or pfns, exactly as the kernel has it; ``u64`` wrap-around is
applied explicitly with :data:`U64_MASK` where the kernel relies on unsigned arithmetic.
"""

from __future__ import annotations

__all__ = [
    "SZ_4K", "SZ_16K", "SZ_64K", "SZ_128K", "SZ_2M", "SZ_32M", "SZ_512M", "SZ_1G",
    "PAGE_SIZE", "U64_MASK", "ULONG_MAX",
    "DMA_BIT_MASK", "DMA_MAPPING_ERROR", "MAX_MAP_SIZE", "check_cpu", "check_size", "check_phys",
    "__ffs", "__fls", "ffs_index", "fls_index", "fls_long", "is_power_of_2", "roundup_pow_of_two",
    "order_base_2",
    "bits_per", "GENMASK",
    "iova_shift", "iova_mask", "iova_offset", "iova_align", "iova_align_down",
    "EPERM", "EIO", "ENOMEM", "EFAULT", "EEXIST", "ENODEV", "EINVAL", "ENOSPC", "ERANGE", "EOPNOTSUPP",
    "EREMOTEIO", "ENXIO", "EADDRINUSE",
    "ERRNO_NAMES", "errname",
    "DmaError", "hx", "fmt_size", "parse_int",
]

SZ_4K = 0x1000
SZ_16K = 0x4000
SZ_64K = 0x10000
SZ_128K = 0x20000
SZ_2M = 0x200000
SZ_32M = 0x2000000
SZ_512M = 0x20000000
SZ_1G = 0x40000000

#: CPU page size of the simulated kernel (x86-64 default). Scenarios may model other page sizes
#: explicitly; the IOVA granule is always <= PAGE_SIZE (``init_iova_domain`` BUG_ON).
PAGE_SIZE = SZ_4K

U64_MASK = (1 << 64) - 1
#: ``ULONG_MAX`` on a 64-bit kernel.
ULONG_MAX = U64_MASK
#: ``DMA_MAPPING_ERROR`` (include/linux/dma-mapping.h): ``(dma_addr_t)~0``.
DMA_MAPPING_ERROR = U64_MASK

# errno values (include/uapi/asm-generic/errno-base.h, errno.h)
EPERM = 1
EIO = 5
ENXIO = 6
ENOMEM = 12
EFAULT = 14
EEXIST = 17
ENODEV = 19
EINVAL = 22
ENOSPC = 28
ERANGE = 34
EOPNOTSUPP = 95
EADDRINUSE = 98
EREMOTEIO = 121

ERRNO_NAMES = {
    EPERM: "EPERM", EIO: "EIO", ENOMEM: "ENOMEM", EFAULT: "EFAULT", EEXIST: "EEXIST", ENODEV: "ENODEV",
    EINVAL: "EINVAL", ENOSPC: "ENOSPC", ERANGE: "ERANGE", EOPNOTSUPP: "EOPNOTSUPP", EREMOTEIO: "EREMOTEIO",
    ENXIO: "ENXIO", EADDRINUSE: "EADDRINUSE",
}


def errname(errno: int) -> str:
    """``-EIO`` style name of a (negative or positive) errno value."""
    name = ERRNO_NAMES.get(abs(errno), str(abs(errno)))
    return f"-{name}" if errno < 0 else name


class DmaError(Exception):
    """A call the kernel answers with an errno (often after ``WARN_ON_ONCE``).

    ``errno`` is negative, as the kernel returns it (``-EIO``); ``rule`` says in words which rule
    the call broke; ``func`` names the kernel function that refused it.
    """

    def __init__(self, errno: int, rule: str, func: str = "", warned: bool | str = False):
        self.errno = -abs(errno)
        self.rule = rule
        self.func = func
        #: False, or the kernel macro that warned: True means ``WARN_ON_ONCE``; a string names it
        #: (``"WARN_ON"`` for the unmap paths' ``WARN_ON(unmapped != size)``)
        self.warned = warned
        where = f"{func}: " if func else ""
        warn = f"{'WARN_ON_ONCE' if warned is True else warned}, " if warned else ""
        super().__init__(f"{where}{warn}{errname(self.errno)}: {rule}")


def DMA_BIT_MASK(n: int) -> int:
    """``DMA_BIT_MASK(n)`` (include/linux/dma-mapping.h): ``n`` low bits set; 64 gives ``~0ULL``."""
    if not 0 <= n <= 64:
        raise ValueError(f"DMA_BIT_MASK({n}): n must be 0..64")
    return U64_MASK if n == 64 else (1 << n) - 1


def __ffs(x: int) -> int:
    """``__ffs(x)`` (bitops): index of the lowest set bit; undefined for 0 (raises here)."""
    if x <= 0:
        raise ValueError(f"__ffs({x}): argument must be non-zero")
    return (x & -x).bit_length() - 1


def __fls(x: int) -> int:
    """``__fls(x)`` (bitops): index of the highest set bit; undefined for 0 (raises here)."""
    if x <= 0:
        raise ValueError(f"__fls({x}): argument must be non-zero")
    return x.bit_length() - 1


def fls_long(x: int) -> int:
    """``fls_long(x)`` (bitops.h): 1-based index of the highest set bit, 0 for 0 (u64 semantics)."""
    return (x & U64_MASK).bit_length()


def ffs_index(x: int) -> int:
    """Same as :func:`__ffs` (a name that Python mangles inside classes)."""
    return __ffs(x)


def fls_index(x: int) -> int:
    """Same as :func:`__fls` (a name that Python mangles inside classes)."""
    return __fls(x)


def GENMASK(h: int, l: int) -> int:  # noqa: E741 - kernel name
    """``GENMASK(h, l)`` (include/linux/bits.h): bits ``l..h`` set."""
    return ((1 << (h + 1)) - 1) & ~((1 << l) - 1)


def is_power_of_2(n: int) -> bool:
    """``is_power_of_2(n)`` (include/linux/log2.h): ``n != 0 && (n & (n - 1)) == 0``."""
    return n > 0 and (n & (n - 1)) == 0


def roundup_pow_of_two(n: int) -> int:
    """``roundup_pow_of_two(n)`` (include/linux/log2.h) for ``n >= 1``."""
    if n < 1:
        raise ValueError(f"roundup_pow_of_two({n}): n must be >= 1")
    return 1 << (n - 1).bit_length()


def order_base_2(n: int) -> int:
    """``order_base_2(n)`` (include/linux/log2.h): ``ilog2(roundup_pow_of_two(n))``, 0 for n <= 1."""
    return 0 if n <= 1 else (n - 1).bit_length()


def bits_per(n: int) -> int:
    """``bits_per(n)`` (include/linux/log2.h): bits needed to hold ``n`` (1 for 0 and 1)."""
    return 1 if n < 2 else n.bit_length()


def iova_shift(granule: int) -> int:
    """``iova_shift(iovad)`` (include/linux/iova.h): ``__ffs(granule)``."""
    return __ffs(granule)


def iova_mask(granule: int) -> int:
    """``iova_mask(iovad)`` (include/linux/iova.h): ``granule - 1``."""
    return granule - 1


def iova_offset(granule: int, iova: int) -> int:
    """``iova_offset(iovad, iova)`` (include/linux/iova.h): ``iova & (granule - 1)``."""
    return iova & (granule - 1)


def iova_align(granule: int, size: int) -> int:
    """``iova_align(iovad, size)`` (include/linux/iova.h): ``ALIGN(size, granule)``."""
    return (size + granule - 1) & ~(granule - 1)


def iova_align_down(granule: int, size: int) -> int:
    """``iova_align_down(iovad, size)`` (include/linux/iova.h): ``ALIGN_DOWN(size, granule)``."""
    return size & ~(granule - 1)


def hx(x: int | None) -> str:
    """Hex for display: ``0x1234``; ``None`` stays ``None`` as text."""
    return "None" if x is None else hex(x)


def fmt_size(n: int) -> str:
    """Human size with binary units when exact (``4 KiB``, ``1.25 GiB``), else bytes in hex."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            if v == int(v):
                return f"{int(v)} {unit}"
            if n % (1 << (shift - 10)) == 0 or shift == 10:
                return f"{v:.2f} {unit}".replace(".00 ", " ")
    return f"{n} B" if n < 1024 else hex(n)


def parse_int(text: str | int) -> int:
    """Parse ``0x1f``, ``31``, ``1_000``, ``4K``/``2M``/``1G`` (binary units) into an int.

    Raises ``ValueError`` naming the text when it is not a number.
    """
    if isinstance(text, int):
        return text
    s = str(text).strip().replace("_", "")
    mult = 1
    if s and s[-1] in "kKmMgGtT" and not s.lower().startswith("0x"):
        mult = 1 << {"k": 10, "m": 20, "g": 30, "t": 40}[s[-1].lower()]
        s = s[:-1]
    elif s.lower().endswith(("kib", "mib", "gib", "tib")):
        mult = 1 << {"k": 10, "m": 20, "g": 30, "t": 40}[s[-3].lower()]
        s = s[:-3]
    try:
        return int(s, 0) * mult
    except ValueError:
        raise ValueError(f"{text!r} is not a number (use decimal, 0x-hex, or 4K/2M/1G)") from None


# -- argument checks shared by the DMA layers (ValueError naming the value and the rule) --------------
#: Largest size one DMA call may map (bytes): 2^36 = 64 GiB. The kernel has no such limit (``size_t``);
#: it bounds the work one typed-in size can cause (64 GiB in 4 KiB pages is 16M PTEs, under a second).
#: Larger sizes raise ``ValueError`` before any state changes.
MAX_MAP_SIZE = 1 << 36


def _is_int(v) -> bool:
    return type(v) is int or (isinstance(v, int) and not isinstance(v, bool))


def check_cpu(func: str, cpu, ncpus: int) -> None:
    """``cpu`` must be an int in ``0..ncpus-1`` (``smp_processor_id()`` of a possible CPU)."""
    if (type(cpu) is not int and not _is_int(cpu)) or not 0 <= cpu < ncpus:
        raise ValueError(f"{func}: cpu {cpu!r} is not one of this domain's CPUs 0..{ncpus - 1}")


def check_size(func: str, size, *, zero_ok: bool = False) -> None:
    """``size`` must be an int in ``1..MAX_MAP_SIZE`` (``0..`` with ``zero_ok``)."""
    if (type(size) is not int and not _is_int(size)) or not (0 if zero_ok else 1) <= size <= MAX_MAP_SIZE:
        raise ValueError(f"{func}: size {size!r} must be an int in {0 if zero_ok else 1}..{MAX_MAP_SIZE:#x} "
                         "(MAX_MAP_SIZE: the simulator's bound of 64 GiB per call)")


def check_phys(func: str, phys, size: int) -> None:
    """``phys`` must be a ``phys_addr_t`` (u64) with ``phys + size`` inside the 64-bit space."""
    if (type(phys) is not int and not _is_int(phys)) or not 0 <= phys or phys + size - 1 > U64_MASK:
        raise ValueError(f"{func}: phys {phys!r} + size {size:#x} is not inside the 64-bit physical address "
                         "space (phys_addr_t)")
