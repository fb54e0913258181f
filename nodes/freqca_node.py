"""The nodes (ComfyUI V3 schema).

- **FreqCa Accelerate**: MODEL in, accelerated MODEL out, with the six settings most users need (method,
  interval, warm-up, final full steps, start / end as points of the noise schedule, as in ComfyUI's own
  EasyCache and ControlNet nodes).
- **FreqCa Options**: every advanced per-method setting, plugged into FreqCa Accelerate's optional
  ``options`` input (the pattern of several popular packs: the main node stays small and a saved workflow
  without the options node keeps the defaults).

Errors: ComfyUI 0.3.64 checks int/float ranges itself, once, on the input; it does not check V3 combo values,
and it repeats a ``validate_inputs`` message once for every input that function takes. So each node's
``validate_inputs`` takes exactly one input (``method``; ``gates_file``), and the other checks that need
several values (end before start, a combo sent by the API) raise at execution with the input's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from comfy_api.latest import ComfyExtension, io

from ..freqca_core import METHODS, REGISTRY, SCHEDULES, CacheConfig
from ..freqca_core.methods.feb import LEVELS as FEB_LEVELS
from ..freqca_core.validation import check_choice, check_float
from .families import FAMILIES, detect_family
from .files import NO_FILE, create_model_folder, gates_file_options, load_gates
from .attach import FreqCaSettings, apply_freqca

# The node's defaults: the configuration that wins the most budgets on the testbed (README "Methods": res-taylor,
# order 1, warm-up 1, the last step full); CacheConfig's own defaults are the paper's FreqCa, one click away.
DEFAULTS = CacheConfig(method="res-taylor", warmup=1, final_full=1, taylor_order=1)
SUPPORTED = "; ".join(f.name for f in FAMILIES)
OPTIONS = io.Custom("FREQCA_OPTIONS")


@dataclass(frozen=True)
class AdvancedOptions:
    """What the FreqCa Options node outputs: ``CacheConfig`` fields, whether to log every call and whether
    method auto calibrates again instead of using its stored profile."""

    cache: dict = field(default_factory=dict)
    verbose: bool = False
    recalibrate: bool = False


class FreqCaAccelerate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        methods = " ".join(f"{spec.name}: {spec.summary}." for spec in REGISTRY.values())
        return io.Schema(
            node_id="FreqCaAccelerate",
            display_name="FreqCa Accelerate",
            category="sampling/acceleration",
            description=("Feature caching for diffusion transformers: between full steps the transformer blocks "
                         "are skipped and their output is reused or forecast. Advanced settings: plug a "
                         f"FreqCa Options node into `options`. Supported models: {SUPPORTED}."),
            inputs=[
                io.Model.Input("model", tooltip=f"The diffusion model to accelerate. Supported: {SUPPORTED}."),
                io.Combo.Input("method", options=list(METHODS), default=DEFAULTS.method,
                               tooltip=f"How a skipped step gets its features. {methods}"),
                io.Int.Input("interval", default=DEFAULTS.interval, min=1, max=100,
                             tooltip="Run the full model every N steps after warm-up; the steps between are "
                                     "cached. 1 = no caching. Higher is faster and less faithful. With the "
                                     "adaptive schedule (FreqCa Options): the most steps between full steps."),
                io.Int.Input("warmup_steps", default=DEFAULTS.warmup, min=0, max=100,
                             tooltip="First steps always computed in full (the layout forms there)."),
                io.Int.Input("final_full_steps", default=DEFAULTS.final_full, min=0, max=100,
                             tooltip="Last steps always computed in full (fine detail forms there)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Point of the noise schedule before which nothing is cached (0: the "
                                       "start), as in ComfyUI's EasyCache and ControlNet nodes."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Point of the noise schedule after which nothing is cached (1: the end)."),
                OPTIONS.Input("options", optional=True,
                              tooltip="Advanced settings from a FreqCa Options node (schedule, per-method "
                                      "parameters, cache offload, logging). Without it: the defaults."),
            ],
            outputs=[io.Model.Output(tooltip="The model with FreqCa attached (the input model is unchanged).")],
            hidden=[io.Hidden.unique_id],
            # V3 outputs are cached without the node id: two equal FreqCa nodes would share one output and
            # report their run statistics to the same node.
            not_idempotent=True,
        )

    @classmethod
    def validate_inputs(cls, method: str | None = None) -> bool | str:
        # One input only (see the module docstring). A linked input is None here; execute() checks it then.
        if method is not None and method not in METHODS:
            return f"method must be one of {', '.join(METHODS)}; got {method!r}"
        return True

    @classmethod
    def execute(cls, model, method: str, interval: int, warmup_steps: int, final_full_steps: int,
                start_percent: float, end_percent: float, options: AdvancedOptions | None = None) -> io.NodeOutput:
        start_percent = check_float("start_percent", start_percent, 0.0, 1.0)
        end_percent = check_float("end_percent", end_percent, 0.0, 1.0)
        if end_percent < start_percent:
            raise ValueError(f"end_percent ({end_percent}) must be >= start_percent ({start_percent})")
        options = options or AdvancedOptions()
        family = detect_family(model.get_model_object("diffusion_model"))
        # the node's defaults for everything a FreqCa Options node would set (without one: DEFAULTS' values)
        cache = replace(DEFAULTS, method=method, interval=interval, warmup=warmup_steps, final_full=final_full_steps,
                        fit_short_runs=True, **options.cache)
        sampling = model.get_model_object("model_sampling")
        settings = FreqCaSettings(cache, float(sampling.percent_to_sigma(start_percent)),
                                  float(sampling.percent_to_sigma(end_percent)), options.verbose,
                                  node_id=cls.hidden.unique_id if cls.hidden else None,
                                  recalibrate=options.recalibrate)
        return io.NodeOutput(apply_freqca(model, settings, family))


class FreqCaOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FreqCaOptions",
            display_name="FreqCa Options",
            category="sampling/acceleration",
            description="Advanced settings of FreqCa Accelerate: plug into its `options` input.",
            inputs=[
                io.Combo.Input("schedule", options=list(SCHEDULES), default=DEFAULTS.schedule,
                               tooltip="fixed: a full step every `interval` steps. adaptive: each run measures "
                                       "its forecast's error at its full steps and places the next full step "
                                       "where the expected error reaches `tolerance`, at most `interval` "
                                       "steps later. Methods with their own schedule (feb's table, frdiff's "
                                       "gates file) ignore it."),
                io.Float.Input("tolerance", default=DEFAULTS.tolerance, min=0.0, max=10.0, step=0.005,
                               tooltip="Adaptive schedule only: the expected relative feature error allowed "
                                       "at a cached step (noise-weighted). Lower is more faithful and slower."),
                io.Int.Input("taylor_order", default=DEFAULTS.taylor_order, min=0, max=3,
                             tooltip="Methods taylor and res-taylor: order of the forecast (0 = reuse, 1 = "
                                     "linear, 2 = quadratic; res-taylor at 2+: the low band at this order, the "
                                     "high band linear). Lower orders extrapolate more safely over long "
                                     "intervals."),
                io.Float.Input("cutoff", default=DEFAULTS.cutoff, min=0.0, max=1.0, step=0.01,
                               tooltip="Methods freqca and res-taylor (order 2+): radius of the low band as a "
                                       "fraction of the highest frequency."),
                io.Float.Input("hermite_scale", default=DEFAULTS.hermite_scale, min=0.01, max=2.0, step=0.01,
                               tooltip="Method freqca: scale of the Hermite forecast (paper: 0.71)."),
                io.Combo.Input("feb_level", options=list(FEB_LEVELS), default=DEFAULTS.feb_level,
                               tooltip="Method feb: speed level of FEB-Cache's cache table (quality: "
                                       "attention reused every other step; balanced: F a b; fast: F a b b, "
                                       "after 10% full warm-up steps; the last step full)."),
                io.Float.Input("exposure_delta", default=DEFAULTS.exposure_delta, min=0.5, max=1.5, step=0.005,
                               tooltip="Method feb: exposure-bias scale of steps that reuse features. The "
                                       "predicted noise is divided by it (< 1 enlarges it; FEB-Cache: 0.965). "
                                       "1 = off."),
                io.Combo.Input("gates_file", options=gates_file_options(), default=NO_FILE,
                               tooltip="Method frdiff: per-step gates learned by Auto-FR (python -m "
                                       "freqca_lab.autofr), a JSON file in ComfyUI's models/freqca folder; they "
                                       "replace the schedule (resampled to the run's steps). none: the schedule."),
                io.Boolean.Input("offload_cache", default=DEFAULTS.offload,
                                 tooltip="Keep the cached features in CPU memory instead of on the GPU (less "
                                         "VRAM, a copy per cached step). Most useful for feb, which caches "
                                         "every attention layer."),
                io.Boolean.Input("verbose", default=False,
                                 tooltip="Log the decision of every model call, not only the per-run summary."),
                io.Boolean.Input("recalibrate", default=False,
                                 tooltip="Method auto: ignore the stored profile of this model, steps, schedule "
                                         "and size; each run computes every step and replaces the profile. "
                                         "Turn it off again to use the new profile."),
            ],
            outputs=[OPTIONS.Output(tooltip="Plug into FreqCa Accelerate's `options` input.")],
        )

    @classmethod
    def validate_inputs(cls, gates_file: str | None = None) -> bool | str:
        # One input only (see the module docstring); stands in for ComfyUI's list check (accepts the old "").
        if gates_file is not None:
            try:
                load_gates(gates_file)
            except ValueError as exc:
                return str(exc)
        return True

    @classmethod
    def execute(cls, schedule: str, tolerance: float, taylor_order: int, cutoff: float, hermite_scale: float,
                feb_level: str, exposure_delta: float, gates_file: str, offload_cache: bool,
                verbose: bool, recalibrate: bool = False) -> io.NodeOutput:
        check_choice("schedule", schedule, SCHEDULES)
        check_choice("feb_level", feb_level, FEB_LEVELS)
        cache = {"schedule": schedule, "tolerance": tolerance, "taylor_order": taylor_order, "cutoff": cutoff,
                 "hermite_scale": hermite_scale, "feb_level": feb_level, "exposure_delta": exposure_delta,
                 "gates": load_gates(gates_file), "offload": offload_cache}
        CacheConfig(**cache)  # a bad value is reported here, on this node, with the input's name
        return io.NodeOutput(AdvancedOptions(cache, verbose, recalibrate))


class FreqCaExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        create_model_folder()  # here, not in on_load: ComfyUI 0.3.64 calls no on_load
        return [FreqCaAccelerate, FreqCaOptions]
