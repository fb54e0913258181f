"""Cache methods and their registry. Adding a method = one module here with a ``SPEC`` + one line below."""
from . import auto, feb, frdiff, freqca, restaylor, reuse, taylor
from .base import CacheMethod, ForecastMethod, MethodSpec

REGISTRY: dict[str, MethodSpec] = {spec.name: spec for spec in (
    freqca.SPEC,
    reuse.SPEC,
    taylor.SPEC,
    frdiff.SPEC,
    feb.SPEC,
    restaylor.SPEC,
    auto.SPEC,
)}
METHODS = tuple(REGISTRY)

__all__ = ["METHODS", "REGISTRY", "CacheMethod", "ForecastMethod", "MethodSpec"]
