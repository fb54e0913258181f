"""How FreqCa attaches to a ComfyUI model: wrappers and block patches on a ``ModelPatcher`` clone.

- ``OUTER_SAMPLE`` wrapper: gives each sampling run a fresh ``RunState`` (its own controller and CRF cache)
  in ``transformer_options[RUN_KEY]`` and drops it when the run ends, however it ends.
- ``DIFFUSION_MODEL`` wrapper (``APPLY_MODEL`` for families whose model calls none): notes the token layout
  of the image of the call in flight.
- ``patches_replace["dit"]`` block patches (or the same patches behind gated block lists, for families
  without ``patches_replace``: see ``families.GatedBlocks``): the first block plans the call (full or cached); at cached
  calls every block returns its inputs unchanged and the last one writes the forecast CRF into the image
  rows, so only the embeddings and the final layer run, with the current timestep. At full calls the
  blocks run (through any patch that was there before ours) and the last one records the CRF.
- After the call the wrapper hands the output to the controller (FRDiff's score mixing, FEB-Cache's
  exposure scaling of a flow model's velocity).
- FEB-Cache only: ``transformer_options["optimized_attention_override"]`` (chaining an override that was
  there before) stores every attention kernel's output at full calls and serves it at attention-reuse calls.
Nothing is stored on the model or in module globals; the loaded model is never modified.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension

from ..freqca_core import CacheConfig, CacheController, CallPlan, FixedSchedule, TokenLayout
from ..freqca_core.methods import REGISTRY
from .families import BlockKey, DitFamily, call_arguments
from .other_caches import OtherCache, describe, other_caches
from .profiles import RunProfile, profile_key

log = logging.getLogger("freqca")

SETTINGS_KEY = "freqca_settings"
RUN_KEY = "freqca_run"
ATTENTION_KEY = "optimized_attention_override"
WRAPPER_KEY = "freqca"


@dataclass(frozen=True)
class FreqCaSettings:
    """What the user chose on the nodes: the cache (validated by ``CacheConfig``) and how it attaches.
    ``start_sigma`` / ``end_sigma``: caching only at steps whose sigma lies between them (ComfyUI's
    ``percent_to_sigma`` of the node's start/end percent). ``recalibrate``: method auto ignores stored profiles."""

    cache: CacheConfig = field(default_factory=CacheConfig)
    start_sigma: float = float("inf")
    end_sigma: float = 0.0
    verbose: bool = False
    recalibrate: bool = False
    flow: bool = False  # a flow model (x_t = (1 - s) x0 + s noise, velocity output): FEB's exposure scaling
    node_id: str | None = None
    family: DitFamily | None = field(default=None, compare=False)
    prior_patches: dict = field(default_factory=dict, compare=False)  # block patches that were there before ours

    def new_controller(self, sample_sigmas: list[float] | None = None) -> CacheController:
        """A controller for one sampling run over ``sample_sigmas`` (None: unknown), with the sigma window
        and the family's band split."""
        n_steps = len(sample_sigmas) - 1 if sample_sigmas is not None and len(sample_sigmas) > 1 else None
        cache = self.cache.with_sigma_window(self.start_sigma, self.end_sigma, sample_sigmas)
        return cache.new_controller(n_steps, self.family.transform if self.family is not None else "dct")


_eager = torch.compiler.disable(reason="FreqCa's controller: Python bookkeeping, kept out of compiled graphs")
"""RunState's entry points run eagerly under torch.compile (``TorchCompileModel``): dynamo would otherwise trace
the controller and specialise the graph on its state (sigmas, history lengths, stream keys), recompiling at
almost every step. The wrapper and block patch skip only their own frame (``recursive=False``), so the model
and its blocks, which they call, stay compiled."""


class RunState:
    """State of one sampling run: the controller, and the call in flight (its grid and plan)."""

    def __init__(self, settings: FreqCaSettings, sample_sigmas: torch.Tensor | None) -> None:
        self.settings = settings
        sigmas = sample_sigmas.detach().float().cpu().tolist() if sample_sigmas is not None else None
        self.controller = settings.new_controller(sigmas)
        self.controller.start_run(sigmas)
        self.notes: list[str] = [short_run_note(self.controller.schedule, self.controller.locator.n_steps)]  # summary
        self.variants: set[tuple[BlockKey, ...]] = set()  # block sets replaced in some calls (pass_variant)
        self.base_variant: tuple[BlockKey, ...] = ()  # pass_variant of the model's own options (every call)
        self.variant: tuple[BlockKey, ...] = ()  # pass_variant of the call in flight
        self.variant_uncached = 0  # guidance passes that replaced our first or last block: computed in full
        self.control: tuple = ()  # control_signature of the call in flight
        self.controls: set[tuple] = set()  # those seen in this run
        self.others: list[OtherCache] = []  # other caches applied to the model (note_other_caches)
        self.skipped = 0  # calls another cache skipped or ran itself
        self.layout: TokenLayout | None = None  # image tokens known from the latent of the call in flight
        self.plan: CallPlan | None = None
        self.embedding: torch.Tensor | None = None  # the call's image rows entering the first block
        self.attention_call = None  # the call's attention-kernel override (FEB-Cache), if any
        self.n_img = 0
        self.started = time.perf_counter()
        self.recorded = False  # the call in flight reached our last block's record
        self.missed = 0  # calls our first block did not plan or our last block did not record

    @_eager
    def begin_call(self, executor, args: tuple, kwargs: dict) -> None:
        """In the diffusion-model wrapper, before the call: the token layout of its image (None if unreadable:
        the call runs uncached) and its ControlNet signature."""
        family = self.settings.family
        try:
            model = executor.class_obj.diffusion_model if family.wrapper == "apply_model" else executor.class_obj
            call = call_arguments(executor.original, args, kwargs)
            self.layout = family.layout(call, model)
            self.note_control(control_signature(call.get("control")))
            self.variant = pass_variant(call.get("transformer_options") or {})
        except Exception as exc:  # an unexpected input shape: run this call uncached
            log.warning("FreqCa: cannot read the token layout (%r); running uncached", exc)
            self.layout = None

    @_eager
    def open_call(self, args: dict) -> None:
        """At the first block: plan the call from its sigma, streams, batch and image token count."""
        options = args["transformer_options"]
        img = args["img"]
        known = self.layout
        self.n_img = known.length if self.settings.family.n_img == "layout" else img.shape[1]
        extra = self.n_img - known.length
        layout = TokenLayout(known.segments + TokenLayout.of(extra).segments) if extra > 0 else (
            known if extra == 0 else TokenLayout.grid(self.n_img))
        streams = options.get("uuids") or options.get("cond_or_uncond") or [0]
        if self.variant != self.base_variant:  # e.g. Skip Layer Guidance's pass: its own CRF history per stream
            streams = [(stream, self.variant) for stream in streams]
            self.note_variant(self.variant)
        if self.control:  # a ControlNet's active set: a new one starts a new history (its first call runs full)
            streams = [(stream, self.control) for stream in streams]
        sigma = float(options["sigmas"].flatten()[0])
        self.embedding = self.image_rows(img)
        self.plan = self.controller.plan(sigma, streams, img.shape[0], layout, embedding=self.embedding)
        self.attention_call = self.controller.attention_override(self.plan) if self.plan.full else None
        if not self.plan.full:
            try:
                self.prepare_cached(img)
            except Exception as exc:  # still at the first block: this call can run full instead
                self.controller.demote(self.plan, f"cannot use the forecast ({exc!r})")
        if self.settings.verbose:
            mode = "full" if self.plan.full else "cached"
            log.info("FreqCa: sigma %.4f step %s %s %s", sigma, self.plan.step, mode, self.plan.reason)

    def note_other_caches(self, caches: list[OtherCache]) -> None:
        """At the run's start: other caches applied to the model, named in the log and the run summary."""
        self.others = caches
        note = describe(caches)
        if note:
            self.notes.append(note)
            (log.warning if any(c.replaces for c in caches) else log.info)("FreqCa: %s", note)

    def note_control(self, control: tuple) -> None:
        """Take the control signature of the call in flight; say in the summary when it changed in the run."""
        self.control = control
        if control not in self.controls:
            self.controls.add(control)
            if len(self.controls) == 2:
                self.notes.append("the ControlNet's active set changed during the run: full steps there, "
                                  "forecasts from features of the same set only")

    def note_variant(self, variant: tuple[BlockKey, ...]) -> None:
        """Say once per run in the summary that passes with other blocks replaced were cached apart."""
        if variant not in self.variants:
            self.variants.add(variant)
            blocks = ", ".join(f"{kind} {index}" for kind, index in variant)
            self.notes.append(f"a pass with {blocks} replaced (e.g. Skip Layer Guidance) cached on its own "
                              f"(computed in full when FreqCa's first or last block is among them)")

    def prepare_cached(self, img: torch.Tensor) -> None:
        """At the first block of a cached call: the forecast on the call's device and dtype, shape checked."""
        crf = self.plan.crf.to(device=img.device, dtype=img.dtype)
        if crf.shape != (img.shape[0], self.n_img, img.shape[-1]):
            raise ValueError(f"forecast of shape {tuple(crf.shape)} for {img.shape[0]} x {self.n_img} image rows "
                             f"of width {img.shape[-1]}")
        self.plan.crf = crf

    @_eager
    def end_call(self, active: bool) -> None:
        """After a model call FreqCa was to handle: count (and warn once) if our first block did not plan it
        or our last block did not record it, i.e. another node replaced those patches after ours; with another
        cache on the model (``others``), count it as that cache's (it skipped the call or ran the blocks)."""
        if active and (self.plan is None or (self.plan.full and self.plan.step is not None and not self.recorded)):
            if self.variant != self.base_variant:  # a guidance pass that replaced our first or last block
                self.variant_uncached += 1
                self.note_variant(self.variant)
            elif self.others:  # another cache skipped the call or ran the blocks itself (named in the summary)
                self.skipped += 1
            else:
                self.missed += 1
                if self.missed == 1:
                    log.warning("FreqCa: a model call did not reach FreqCa's first or last block patch (replaced by "
                                "another node applied after FreqCa Accelerate?); such calls run uncached")
        self.recorded = False
        self.embedding = self.attention_call = None

    @_eager
    def finish_call(self, out: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """The model output of the call after the method's output handling (FRDiff's mixing, FEB-Cache's
        exposure scaling of a flow model's velocity given its input ``x``); unchanged on failure."""
        if self.plan is None:
            return out
        try:
            return self.controller.finish_call(self.plan, out, x)
        except Exception as exc:  # the computed output stands
            log.warning("FreqCa: output mixing failed (%r); using the computed output", exc)
            return out

    @_eager
    def cached_output(self, args: dict) -> dict:
        """The last block's output at a cached call: its input with the image rows set to the forecast."""
        img = args["img"]
        crf = self.plan.crf.to(device=img.device, dtype=img.dtype)
        out = {"txt": args["txt"]} if "txt" in args else {}
        if self.settings.family.image_rows == "first":
            out["img"] = torch.cat([crf, img[:, self.n_img:]], dim=1)
        else:
            out["img"] = torch.cat([img[:, : img.shape[1] - self.n_img], crf], dim=1)
        return out

    def image_rows(self, img: torch.Tensor) -> torch.Tensor:
        """The ``n_img`` image rows of a block's ``img`` stream ``[B, rows, D]``."""
        return img[:, : self.n_img] if self.settings.family.image_rows == "first" else img[:, img.shape[1] - self.n_img:]

    @_eager
    def record(self, out: dict) -> None:
        self.controller.record(self.plan, self.image_rows(out["img"]), embedding=self.embedding)

    def report(self) -> dict:
        """The run's numbers for the front-end (``freqca.stats``): ``method``, ``schedule`` (fixed,
        adaptive, table or gates), ``interval``, ``steps``, ``full``, ``attention`` (steps that reused attention),
        ``cached``, ``cache_mb``, ``seconds``, ``timeline`` (``F`` full, ``a`` attention reused, ``c``
        cached, ``.`` not called), ``fallbacks``, ``missed``, ``speedup`` (steps / steps whose blocks ran:
        full and attention-reusing) and ``notes`` (what the run summary adds: a short run's fitted schedule,
        other caches or guidance passes met)."""
        stats, cache = self.controller.stats, self.settings.cache
        steps = stats.n_steps if stats.n_steps is not None else len(stats.steps)
        blocks_run = stats.full_steps + stats.attention_steps
        return {"method": cache.method, "interval": cache.interval,
                "schedule": self.controller.schedule.kind,
                "steps": steps, "full": stats.full_steps, "attention": stats.attention_steps,
                "cached": stats.cached_steps, "cache_mb": round(stats.peak_cache_bytes / 2 ** 20, 2),
                "seconds": round(time.perf_counter() - self.started, 1), "timeline": stats.timeline(),
                "fallbacks": stats.fallbacks, "missed": self.missed,
                "speedup": round(steps / blocks_run, 2) if blocks_run else None,
                "notes": [note for note in self.notes if note]}

    def summary(self) -> str:
        r = self.report()
        text = (f"FreqCa Accelerate ({r['method']}, {self.controller.schedule.label}): "
                f"{r['full']}/{r['steps']} steps full, {r['cached']} cached, "
                f"CRF cache {r['cache_mb']:.2f} MB, {r['seconds']:.1f} s [{r['timeline']}]")
        if r["attention"]:
            stats = self.controller.stats
            text += (f"; {r['attention']} steps reused attention ({stats.attention_served} kernel calls served, "
                     f"{stats.attention_computed} computed)")
        if r["fallbacks"]:
            text += f"; {r['fallbacks']} calls fell back to full compute"
        if self.missed:
            text += f"; {self.missed} calls ran uncached: a FreqCa block patch was replaced by another node"
        if self.variant_uncached:
            text += f"; {self.variant_uncached} guidance-pass calls computed in full"
        if self.skipped:
            names = " or ".join(c.name for c in self.others)
            text += f"; {self.skipped} calls skipped or run by {names}, not by FreqCa"
        return "; ".join([text] + r["notes"])


def pass_variant(options: dict) -> tuple[BlockKey, ...]:
    """The blocks of this call's ``patches_replace["dit"]`` whose patch is not FreqCa's, sorted; () when all are.

    A guidance pass that runs the model with some blocks replaced (ComfyUI's ``SkipLayerGuidanceDiT`` puts an
    identity patch on the skipped blocks of a copy of the model options, for its call only) reaches the same
    stream (cond uuid) at the same sigma as the plain pass, yet computes other features: when this tuple differs
    from the model's own, the pass gets its own CRF history, keyed by it, so it never replaces the stream's CRF
    and at cached steps is forecast from its own full steps (or computed, before it has any; always, when our
    first or last block is among the replaced ones: the call is then not ours to plan or record). A patch another
    node put over ours for every call is in the model's own options too (``RunState.base_variant``): such calls
    are no separate pass."""
    dit = options.get("patches_replace", {}).get("dit", {})
    return tuple(sorted(key for key, patch in dit.items() if not hasattr(patch, "freqca_prior")))


def control_signature(control) -> tuple:
    """Which ControlNet residuals a model call receives (its ``control`` argument): per key (``input``,
    ``middle``, ``output``), which entries are present; () without control.

    A ControlNet with a start or end percent (or a chain of them) gives the model a different set of
    residuals from that step on; the block features change at once, so a forecast across the switch is
    wrong. Keying the CRF histories by this signature makes the first call after a switch run full and later
    forecasts use only features computed under the same set. Chained ControlNets whose residuals are summed
    into the same entries are not told apart."""
    if not isinstance(control, dict):
        return ()
    return tuple((key, tuple(item is not None for item in value) if isinstance(value, (list, tuple))
                  else value is not None) for key, value in sorted(control.items()))


def short_run_note(schedule, n_steps: int | None) -> str:
    """What the fixed schedule changed for a run too short for its warm-up and interval
    (``FixedSchedule.for_run``); "" for other schedules and long runs."""
    return schedule.fit_text(n_steps) if isinstance(schedule, FixedSchedule) else ""


def _outer_sample_wrapper(executor, *args, **kwargs):
    """Give this sampling run its own ``RunState``; remove it afterwards, even on error or interrupt."""
    guider = executor.class_obj
    original_options = guider.model_options
    guider.model_options = comfy.model_patcher.create_model_options_clone(original_options)
    options = guider.model_options["transformer_options"]
    settings: FreqCaSettings = options[SETTINGS_KEY]
    sigmas = args[3] if len(args) > 3 else kwargs.get("sigmas")
    noise = args[0] if args else kwargs.get("noise")
    profile = None
    if "choice" in REGISTRY[settings.cache.method].options and sigmas is not None and noise is not None:
        try:  # a calibrated method (auto): this run's profile, or this run calibrates
            sigma_list = sigmas.detach().float().cpu().tolist()
            window = settings.cache.with_sigma_window(settings.start_sigma, settings.end_sigma, sigma_list)
            profile = RunProfile(profile_key(guider.model_patcher, sigma_list, noise.shape, window))
            settings = replace(settings, cache=profile.config(settings.cache, stored=not settings.recalibrate))
        except Exception as exc:  # never fail a run over a profile: calibrate without storing
            log.warning("FreqCa auto: no profile for this run (%r)", exc)
    state = RunState(settings, sigmas)
    state.note_other_caches(other_caches(guider.model_options))
    state.base_variant = pass_variant(options)
    options[RUN_KEY] = state
    try:
        return executor(*args, **kwargs)
    finally:
        state.controller.end_run()
        if profile is not None:
            state.notes.extend(profile.notes)
        text = state.summary()
        log.info(text)
        _show_on_node(settings.node_id, text, state.report())
        guider.model_options = original_options


@torch.compiler.disable(recursive=False, reason="FreqCa's per-call bookkeeping")
def _diffusion_model_wrapper(executor, *args, **kwargs):
    """Note the token layout of this call's image; the block patches act only while it is set."""
    options = args[-1] if isinstance(args[-1], dict) else kwargs.get("transformer_options", {})
    state: RunState | None = options.get(RUN_KEY)
    if state is None:
        return executor(*args, **kwargs)
    family = state.settings.family
    state.begin_call(executor, args, kwargs)
    try:
        out = executor(*args, **kwargs)
        flow_velocity = family.wrapper != "apply_model" and state.settings.flow  # apply_model returns x0
        return state.finish_call(out, args[0] if flow_velocity else None)
    finally:
        state.end_call(state.layout is not None)
        state.layout, state.plan = None, None


def _make_block_patch(key: BlockKey, first: bool, last: bool, prior: Callable | None) -> Callable:
    """The replacement of block ``key``; ``prior`` is a patch that was registered there before ours."""

    def run_block(args: dict, extra: dict) -> dict:
        return prior(args, extra) if prior is not None else extra["original_block"](args)

    @torch.compiler.disable(recursive=False, reason="FreqCa's full/cached decision")
    def freqca_block(args: dict, extra: dict) -> dict:
        state: RunState | None = args.get("transformer_options", {}).get(RUN_KEY)
        if state is None or state.layout is None:
            return run_block(args, extra)
        if first:
            try:
                state.open_call(args)
            except Exception as exc:  # never let the cache break the sampling run
                log.warning("FreqCa: planning failed (%r); running this call uncached", exc)
                state.plan = None
        plan = state.plan
        if plan is None or plan.full:
            out = run_block(args, extra)
            if last and plan is not None:
                state.recorded = True
                try:
                    state.record(out)
                except Exception as exc:  # the call is computed; only its features are not cached
                    log.warning("FreqCa: recording the features failed (%r); not cached", exc)
            return out
        if last:
            return state.cached_output(args)
        return {name: args[name] for name in ("img", "txt") if name in args}

    freqca_block.freqca_prior = prior
    return freqca_block


@_eager
def _through_cache(call, kernel: Callable, *args, **kwargs):
    """``call(kernel, *args, **kwargs)``: an attention kernel stored or served by the run's ``AttentionCall``
    (FEB-Cache), eagerly: under torch.compile its bookkeeping would otherwise be traced and specialised on."""
    return call(kernel, *args, **kwargs)


def _make_attention_override(prior: Callable | None) -> Callable:
    """``transformer_options["optimized_attention_override"]``: during a FEB-Cache call whose plan stores or
    serves attention, every attention kernel goes through the run's ``AttentionCall``; otherwise (and to
    compute) through ``prior`` (an override another node set before ours) or the kernel itself."""

    @torch.compiler.disable(recursive=False, reason="FreqCa's attention routing")
    def freqca_attention(func, *args, **kwargs):
        kernel = functools.partial(prior, func) if prior is not None else func
        options = kwargs.get("transformer_options") or {}
        state: RunState | None = options.get(RUN_KEY)
        call = state.attention_call if state is not None else None
        if call is None:
            return kernel(*args, **kwargs)
        return _through_cache(call, kernel, *args, **kwargs)

    freqca_attention.freqca_prior = prior
    return freqca_attention


def apply_freqca(model, settings: FreqCaSettings, family: DitFamily):
    """Return a clone of ``model`` (a ModelPatcher) with FreqCa attached; ``model`` is left as it was."""
    patched = model.clone()
    transformer_options = patched.model_options.get("transformer_options", {})
    if SETTINGS_KEY in transformer_options:  # composition rule: the node nearest the sampler wins
        text = ("FreqCa Accelerate: the model already went through another FreqCa Accelerate node; only this "
                "node's settings apply (use one FreqCa node per model chain)")
        log.warning(text)
        _tell_node(settings.node_id, text)
    dit_patches = transformer_options.get("patches_replace", {}).get("dit", {})
    keys = family.block_keys(patched.get_model_object("diffusion_model"))
    if not keys:
        raise ValueError(f"FreqCa Accelerate: the {family.name} model has no transformer blocks to cache")
    # Applied again: the newer settings replace ours; what our earlier patches ran underneath is kept, and so
    # is a patch another node put over them since. Ours are told by their marker (clones deep-copy patches).
    priors = {}
    for key in keys:
        patch = dit_patches.get(key)
        patch = patch.freqca_prior if hasattr(patch, "freqca_prior") else patch
        if patch is not None:
            priors[key] = patch
    flow = isinstance(patched.get_model_object("model_sampling"), comfy.model_sampling.CONST)
    settings = replace(settings, family=family, prior_patches=priors, flow=flow)
    patches = {key: _make_block_patch(key, i == 0, i == len(keys) - 1, priors.get(key)) for i, key in enumerate(keys)}
    if family.gates:  # no patches_replace in this model: gated block lists holding the same children
        family.install_gates(patched, patches)
    else:
        for key, patch in patches.items():
            patched.set_model_patch_replace(patch, "dit", key[0], key[1])
    # set_model_patch_replace replaces the transformer_options dict: write our settings into the new one
    options = patched.model_options.setdefault("transformer_options", {})
    options[SETTINGS_KEY] = settings
    prior_attention = options.get(ATTENTION_KEY)
    prior_attention = getattr(prior_attention, "freqca_prior", prior_attention)  # ours, applied again: unwrap
    if REGISTRY[settings.cache.method].attention:  # kernels stored / served through ComfyUI's override
        options[ATTENTION_KEY] = _make_attention_override(prior_attention)
    elif prior_attention is not None:
        options[ATTENTION_KEY] = prior_attention
    else:
        options.pop(ATTENTION_KEY, None)
    wrappers = comfy.patcher_extension.WrappersMP
    layout_wrapper = wrappers.APPLY_MODEL if family.wrapper == "apply_model" else wrappers.DIFFUSION_MODEL
    for wrapper_type in (wrappers.OUTER_SAMPLE, wrappers.DIFFUSION_MODEL, wrappers.APPLY_MODEL):
        patched.remove_wrappers_with_key(wrapper_type, WRAPPER_KEY)
    patched.add_wrapper_with_key(wrappers.OUTER_SAMPLE, WRAPPER_KEY, _outer_sample_wrapper)
    patched.add_wrapper_with_key(layout_wrapper, WRAPPER_KEY, _diffusion_model_wrapper)
    return patched


def _show_on_node(node_id: str | None, text: str, stats: dict) -> None:
    """Show ``text`` under the node in the ComfyUI front-end, when a server is running: as progress text
    (any front-end shows it) and as the ``freqca.stats`` event read by ``web/freqca.js``, ``stats``
    (``RunState.report``) plus ``{"node", "text"}``."""
    stats = {"node": str(node_id), "text": text, **stats}
    _tell_node(node_id, text,
               lambda server: server.send_sync("freqca.stats", stats, getattr(server, "client_id", None)))


def _tell_node(node_id: str | None, text: str, *more: Callable) -> None:
    """``text`` as progress text under the node (then each of ``more(server)``), when a server is running."""
    if node_id is None:
        return
    try:
        from server import PromptServer
        server = PromptServer.instance
    except Exception:  # no server (tests, scripts): the log line is enough
        return
    for send in (lambda server: server.send_progress_text(text, node_id), *more):
        try:
            send(server)
        except Exception:  # an older server or front-end: the log line is enough
            pass
