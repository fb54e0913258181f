"""freqca_core: frequency-aware feature caching for diffusion transformers (pure torch, no ComfyUI)."""
from .adaptive import AdaptiveSchedule
from .cache import CRFHistory, StreamCache
from .controller import CacheController, CallPlan, RunStats
from .forecast import HermiteForecaster, ReuseForecaster, TaylorForecaster
from .methods import METHODS, CacheMethod, FreqCaMethod, make_method
from .schedule import FixedSchedule, StepLocator
from .spectral import BandSplitter, Segment, TokenLayout

__all__ = [
    "AdaptiveSchedule", "BandSplitter", "CRFHistory", "CacheController", "CacheMethod", "CallPlan", "FixedSchedule",
    "FreqCaMethod", "HermiteForecaster", "METHODS", "ReuseForecaster", "RunStats", "Segment", "StepLocator",
    "StreamCache", "TaylorForecaster", "TokenLayout", "make_method",
]
