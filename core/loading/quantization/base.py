"""What a quantization backend is, and the registry of them by name.

Each backend (one file in this package) is a :class:`QuantizationBackend` registered under the name memory presets
and training configs use (``bnb-nf4``, ``quanto-int8``, ``fp8-layerwise``...). The planner asks it for bytes, the
loader for its ``from_pretrained`` config or to apply it after loading, the presets whether group offloading can
move it, the trainer whether it can hold the frozen transformer and whether it runs here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.errors import UserError

if TYPE_CHECKING:
    import torch

    from core.loading.model_sizes import ComponentSize


class UnknownQuantizationError(UserError, ValueError):
    """A quantization name no backend is registered under; the message names the choices."""


@dataclass(frozen=True)
class QuantizationBackend:
    """One way of holding ``nn.Linear`` weights in fewer bytes.

    Attributes:
        name: as presets and configs spell it, e.g. ``bnb-nf4``.
        library: the package that does the work, as users install it (``bitsandbytes``, ``optimum-quanto``).
        at_load: quantizes while ``from_pretrained`` loads (:meth:`load_config`); otherwise after loading
            (:meth:`apply`), which is what the adapter and a ControlNet added later need.
        needs_cuda: its kernels need a CUDA GPU.
        group_offloadable: diffusers' group offloading can move its weights (plain tensors). Quantizers' tensor
            subclasses it cannot: quanto, diffusers issue #12610; bitsandbytes nf4, an illegal memory access on
            an H200 in our bench.
        trains_frozen_base: the trainer can hold the frozen FLUX transformer in it (``models.base_quantization``).
    """

    name: str
    library: str
    at_load: bool = False
    needs_cuda: bool = False
    group_offloadable: bool = False
    trains_frozen_base: bool = True

    # -- bytes (no torch: the planner runs without it)
    def linear_bytes(self, params: int, rows: int, dtype_bytes: int) -> float:
        """Bytes of ``params`` ``nn.Linear`` weights in ``rows`` output rows once converted (scales included)."""
        raise NotImplementedError

    def weight_bytes(self, size: "ComponentSize", dtype_bytes: int, kept_bytes: int) -> int:
        """Bytes of one component held in this backend: its converted Linear weights, everything else in the compute
        dtype (``dtype_bytes`` each) and the modules the model class keeps unconverted at ``kept_bytes`` each."""
        quantized = self.linear_bytes(size.quantizable_params, size.quantizable_rows, dtype_bytes)
        return int(quantized + (size.other_params - size.kept_params) * dtype_bytes + size.kept_params * kept_bytes)

    # -- availability
    def unavailable(self, device_type: str) -> str | None:
        """Why it cannot run on a ``device_type`` device here (one clause), or None when it can."""
        return None

    # -- quantizing while loading
    def load_config(self, component: str, compute_dtype: "torch.dtype"):
        """The ``quantization_config`` of ``component`` (``transformer``: diffusers'; text encoders:
        transformers') for ``from_pretrained``; only for ``at_load`` backends."""
        raise ValueError(f"{self.name} quantizes after loading: it has no load-time config")

    def loaded_quantized(self, module: "torch.nn.Module") -> bool:
        """True when ``module`` was loaded quantized by this backend (``at_load`` backends)."""
        return False

    # -- quantizing after loading
    def apply(self, module: "torch.nn.Module", exclude: list[str] | tuple[str, ...] = ()) -> None:
        """Quantize ``module``'s weights in place, leaving the submodules named in ``exclude`` (and what they hold)
        as they are."""
        raise ValueError(f"{self.name} quantizes while loading: load the model with its quantization_config")

    def applied(self, name: str) -> str:
        """The step line for component ``name`` after :meth:`apply`."""
        return f"{name} quantized to {self.name}"

    def apply_to_adapter(self, transformer: "torch.nn.Module | None", processors: list[str],
                         components: list[tuple[str, "torch.nn.Module"]]) -> list[str]:
        """Quantize the adapter: the ``processors`` (module names inside ``transformer``) and the pipeline's adapter
        ``components`` (``(name, module)``). Returns the steps taken, one line each."""
        raise ValueError(f"the adapter is quantized after loading, and {self.name} quantizes while loading")


_BACKENDS: dict[str, QuantizationBackend] = {}


def register(backend: QuantizationBackend) -> QuantizationBackend:
    """Add ``backend`` to the registry under its name (a backend file does this once, at import)."""
    if backend.name in _BACKENDS:
        raise ValueError(f"quantization backend {backend.name!r} is registered twice")
    _BACKENDS[backend.name] = backend
    return backend


def backends() -> tuple[QuantizationBackend, ...]:
    """Every registered backend, in registration order."""
    return tuple(_BACKENDS.values())


def quantization_backend(name: str) -> QuantizationBackend:
    """The backend called ``name``; raises :class:`UnknownQuantizationError` naming the choices."""
    try:
        return _BACKENDS[name]
    except (KeyError, TypeError):
        raise UnknownQuantizationError(f"quantization {name!r} unknown; expected one of "
                                       f"{', '.join(_BACKENDS)}") from None
