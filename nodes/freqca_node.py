"""The "FreqCa Accelerate" node (ComfyUI V3 schema): MODEL in, accelerated MODEL out."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from ..freqca_core import METHODS
from ..freqca_core.feb import LEVELS as FEB_LEVELS
from ..freqca_core.validation import check_float
from .families import FAMILIES, detect_family
from .files import NO_FILE, create_model_folder, gates_file_options, load_gates
from .hooks import SCHEDULES, FreqCaSettings, apply_freqca

DEFAULTS = FreqCaSettings()
SUPPORTED = "; ".join(f.name for f in FAMILIES)


class FreqCaAccelerate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FreqCaAccelerate",
            display_name="FreqCa Accelerate",
            category="sampling/acceleration",
            description=("Frequency-aware feature caching: between full steps the transformer blocks are "
                         "skipped; the low frequencies of the last full step are reused and the high "
                         "frequencies forecast. Other methods: reuse, taylor, frdiff, feb; full steps on a "
                         f"fixed or adaptive schedule. Supported models: {SUPPORTED}."),
            inputs=[
                io.Model.Input("model", tooltip=f"The diffusion model to accelerate. Supported: {SUPPORTED}."),
                io.Combo.Input("method", options=list(METHODS), default=DEFAULTS.method,
                               tooltip="freqca: reuse low band + Hermite forecast of high band (paper). "
                                       "reuse: reuse the whole cached feature (FORA-like). "
                                       "taylor: Taylor forecast of the whole feature (TaylorSeer-like). "
                                       "frdiff: reuse + FRDiff's score mixing with the last full output. "
                                       "feb: FEB-Cache; its cache table (feb_level) replaces the schedule."),
                io.Int.Input("interval", default=DEFAULTS.interval, min=1, max=100,
                             tooltip="Run the full model every N steps after warm-up; the steps between are "
                                     "cached. 1 = no caching. Higher is faster and less faithful. With the "
                                     "adaptive schedule: the most steps from one full step to the next."),
                io.Int.Input("warmup_steps", default=DEFAULTS.warmup, min=0, max=100,
                             tooltip="First steps always computed in full (the layout forms there)."),
                io.Int.Input("final_full_steps", default=DEFAULTS.final_full, min=0, max=100,
                             tooltip="Last steps always computed in full (fine detail forms there)."),
                io.Float.Input("cutoff", default=DEFAULTS.cutoff, min=0.0, max=1.0, step=0.01,
                               tooltip="Radius of the low band as a fraction of the highest frequency. "
                                       "The low band is reused, the rest forecast."),
                io.Float.Input("hermite_scale", default=DEFAULTS.hermite_scale, min=0.01, max=2.0, step=0.01,
                               tooltip="Scale of the Hermite forecast (paper: 0.71). Only for method freqca."),
                io.Float.Input("start_percent", default=DEFAULTS.start, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps before which nothing is cached."),
                io.Float.Input("end_percent", default=DEFAULTS.end, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps after which nothing is cached."),
                io.Boolean.Input("verbose", default=DEFAULTS.verbose,
                                 tooltip="Log the decision of every model call, not only the per-run summary."),
                io.Combo.Input("schedule", options=list(SCHEDULES), default=DEFAULTS.schedule,
                               optional=True,
                               tooltip="fixed: a full step every `interval` steps. adaptive: each run measures "
                                       "its forecast's error at its full steps and places the next full step "
                                       "where the expected error reaches `tolerance`, at most `interval` "
                                       "steps later (more full steps where features move fast)."),
                io.Float.Input("tolerance", default=DEFAULTS.tolerance, min=0.0, max=10.0, step=0.005,
                               optional=True,
                               tooltip="Adaptive schedule only: the expected relative feature error allowed "
                                       "at a cached step (noise-weighted). Lower is more faithful and slower."),
                io.Combo.Input("feb_level", options=list(FEB_LEVELS), default=DEFAULTS.feb_level,
                               optional=True,
                               tooltip="Method feb only: speed level of FEB-Cache's cache table (quality: "
                                       "attention reused every other step; balanced: F a b; fast: F a b b, "
                                       "after 10% full warm-up steps; the last step full)."),
                io.Float.Input("exposure_delta", default=DEFAULTS.exposure_delta, min=0.5, max=1.5, step=0.005,
                               optional=True,
                               tooltip="Method feb only: exposure-bias scale of cached steps. The predicted "
                                       "noise is divided by it (< 1 enlarges it; FEB-Cache: 0.965). 1 = off."),
                io.Boolean.Input("offload_cache", default=DEFAULTS.offload, optional=True,
                                 tooltip="Keep the cached features in CPU memory instead of on the GPU (less "
                                         "VRAM, a copy per cached step). Most useful for feb, which caches "
                                         "every attention layer."),
                io.Combo.Input("gates_file", options=gates_file_options(), default=NO_FILE, optional=True,
                               tooltip="Method frdiff only: per-step gates learned by Auto-FR (python -m "
                                       "freqca_lab.autofr), a JSON file in ComfyUI's models/freqca folder; they "
                                       "replace the schedule (resampled to the run's steps). none: the schedule."),
                io.Int.Input("taylor_order", default=DEFAULTS.taylor_order, min=0, max=3, optional=True,
                             tooltip="Method taylor only: order of the forecast (0 = reuse, 1 = linear, 2 = "
                                     "quadratic). Lower orders extrapolate more safely over long intervals."),
            ],
            outputs=[io.Model.Output(tooltip="The model with FreqCa attached (the input model is unchanged).")],
            hidden=[io.Hidden.unique_id],
            # V3 outputs are cached without the node id: two equal FreqCa nodes would share one output and
            # report their run statistics to the same node.
            not_idempotent=True,
        )

    @classmethod
    def validate_inputs(cls, method: str | None = None, start_percent: float | None = None,
                        end_percent: float | None = None, schedule: str | None = None,
                        feb_level: str | None = None, gates_file: str | None = None) -> bool | str:
        # Only the inputs named here: ComfyUI skips its own min/max checks for them, and for every input if
        # this took **kwargs (it would also repeat our message once per input). ComfyUI 0.3.64 does not check
        # V3 combo values at all, so ``method`` is checked here. A linked input is None here (its value is not
        # known yet); execute() checks it then.
        if method is not None and method not in METHODS:
            return f"method must be one of {', '.join(METHODS)}; got {method!r}"
        for name, value, allowed in (("schedule", schedule, SCHEDULES), ("feb_level", feb_level, FEB_LEVELS)):
            if value is not None and value not in allowed:
                return f"{name} must be one of {', '.join(allowed)}; got {value!r}"
        if gates_file is not None:  # whatever the method; in place of ComfyUI's list check (accepts the old "")
            try:
                load_gates(gates_file)
            except ValueError as exc:
                return str(exc)
        if start_percent is None or end_percent is None:
            return True
        for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
            try:
                check_float(name, value, 0.0, 1.0)
            except ValueError as exc:
                return str(exc)
        if end_percent < start_percent:
            return f"end_percent ({end_percent}) must be >= start_percent ({start_percent})"
        return True

    @classmethod
    def execute(cls, model, method: str, interval: int, warmup_steps: int, final_full_steps: int,
                cutoff: float, hermite_scale: float, start_percent: float, end_percent: float,
                verbose: bool, schedule: str = DEFAULTS.schedule, tolerance: float = DEFAULTS.tolerance,
                feb_level: str = DEFAULTS.feb_level, exposure_delta: float = DEFAULTS.exposure_delta,
                offload_cache: bool = DEFAULTS.offload, gates_file: str = DEFAULTS.gates_file,
                taylor_order: int = DEFAULTS.taylor_order) -> io.NodeOutput:
        settings = FreqCaSettings(method, interval, warmup_steps, final_full_steps, start_percent, end_percent,
                                  cutoff, hermite_scale, verbose, schedule=schedule, tolerance=tolerance,
                                  feb_level=feb_level, exposure_delta=exposure_delta, offload=offload_cache,
                                  gates_file=gates_file, taylor_order=taylor_order,
                                  node_id=cls.hidden.unique_id if cls.hidden else None)
        family = detect_family(model.get_model_object("diffusion_model"))
        return io.NodeOutput(apply_freqca(model, settings, family))


class FreqCaExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        create_model_folder()  # here, not in on_load: ComfyUI 0.3.64 calls no on_load
        return [FreqCaAccelerate]
