"""freqca_core: frequency-aware feature caching for diffusion transformers (pure torch, no ComfyUI).

The runtime the node imports: ``CacheConfig`` builds a ``CacheController`` for a run from the method
registry (``methods``); spectral split, forecasters, CRF cache and schedules are its parts.
"""
from .adaptive import AdaptiveSchedule
from .cache import CRFHistory, StreamCache
from .config import SCHEDULES, CacheConfig, make_method
from .controller import CacheController, CallPlan, RunStats
from .forecast import HermiteForecaster, ReuseForecaster, TaylorForecaster
from .methods import METHODS, REGISTRY, CacheMethod
from .methods.freqca import FreqCaMethod
from .schedule import FixedSchedule, StepLocator
from .spectral import BandSplitter, Segment, TokenLayout

__all__ = [
    "AdaptiveSchedule", "BandSplitter", "CRFHistory", "CacheConfig", "CacheController", "CacheMethod", "CallPlan",
    "FixedSchedule", "FreqCaMethod", "HermiteForecaster", "METHODS", "REGISTRY", "ReuseForecaster", "RunStats",
    "SCHEDULES", "Segment", "make_method", "StepLocator", "StreamCache", "TaylorForecaster", "TokenLayout",
]
