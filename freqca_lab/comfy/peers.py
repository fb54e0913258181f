"""FreqCa Accelerate against the real peer caching packs, all inside ComfyUI (run by hand, not by pytest).

    python3 -m freqca_lab.comfy.peers --peers-dir /tmp/peers [--steps 50] [--images 3] [--json out.json]

The shipped trained testbed is loaded into ComfyUI's own Flux class and sampled through KSampler's code
path (``harness.sample``: euler, simple, CFG 3) on seeds and prompts used by neither the benchmark's report
nor its calibration. Each peer pack is imported from ``--peers-dir`` (or ``$FREQCA_PEERS_DIR``) the way
ComfyUI imports a custom-node folder, its node is applied to the same ModelPatcher through its own node
class (its defaults, its thresholds swept within the node's own ranges), and its commit is recorded. Peer
code is never copied or changed: a pack that does not load or run is reported with the error.

For every setting: PSNR (``freqca_lab.metrics``, images in [0, 1]) against the uncached image of the same
seed and prompt, averaged over the images; and the budget, the transformer blocks *computed* divided by the
uncached run's. A block counts as computed when its attention input projection runs (double blocks:
``img_attn.qkv``, single blocks: ``linear1``): TaylorSeer patches the blocks' ``forward`` and still calls
every block at its forecast steps, so a count of block calls would overstate its cost.

The node's side is read from the node's schema at run time: every option of its ``method`` input (or
``--methods``), at each ``--intervals`` value with ``final_full_steps`` 0 and 1, Taylor orders 1 and 2,
and every FEB level, the other inputs at the node's defaults. Rerun after the node changes. Method ``auto``
first runs once on a calibration image (another seed and prompt; that run computes every step and stores the
profile, in a temporary user directory) and is then measured with the profile, as a user's later runs are.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path
from typing import Iterable, Iterator

import torch

from freqca_lab.bench import N_PROMPTS
from freqca_lab.comfy.env import find_comfyui, load_pack
from freqca_lab.comfy.harness import apply_node, count_block_calls, import_comfyui, sample
from freqca_lab.comfy.testbed_in_comfy import build_testbed_flux, pixel_latent, prompt_conditioning
from freqca_lab.metrics import psnr, to_unit

SEED_BASE = 3000  # neither the report (REPORT_SEED_BASE...) nor the calibration (CALIB_SEED_BASE...) seeds
CFG = 3.0
CAPS = (0.36, 0.28, 0.20, 0.16)
DEFAULT_INTERVALS = (2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20, 25)
PACK = "FreqCa Accelerate"
CORE = "ComfyUI core"


def image_set(k: int) -> list[tuple[int, int]]:
    """``k`` (seed, prompt) pairs; the prompts walk the table from another start than the benchmark's."""
    return [(SEED_BASE + i, (16 + 13 * i) % N_PROMPTS) for i in range(k)]


CALIBRATION_IMAGE = (SEED_BASE + 500, 7)  # auto's first run: in no image set above


# ------------------------------------------------------------------------------------------------ peers


@dataclasses.dataclass(frozen=True)
class PeerSpec:
    """One peer node: where it lives, the inputs fixed for this model and the thresholds swept.

    ``folder``: the pack's folder under the peers dir (None: ComfyUI core, ``module`` under ComfyUI);
    ``node``: its NODE_CLASS_MAPPINGS key or V3 ``node_id``; ``module``: the file defining the node, imported
    alone when the package itself does not import; ``sweep``: input -> values (all combinations).
    """

    pack: str
    repo: str
    folder: str | None
    node: str
    module: str
    fixed: dict
    sweep: dict


_TAYLORSEER_SWEEP = {"fresh_threshold": [3, 4, 5, 6, 7], "max_order": [1, 2]}
PEERS = (
    PeerSpec("ComfyUI-TaylorSeer", "philipy1219/ComfyUI-TaylorSeer", "ComfyUI-TaylorSeer", "TaylorSeer", "nodes",
             {"model_type": "flux"}, _TAYLORSEER_SWEEP),
    PeerSpec("ComfyUI-TaylorSeer", "philipy1219/ComfyUI-TaylorSeer", "ComfyUI-TaylorSeer", "TaylorSeerLite", "nodes",
             {"model_type": "flux"}, _TAYLORSEER_SWEEP),
    PeerSpec("ComfyUI-TeaCache", "welltop-cn/ComfyUI-TeaCache", "ComfyUI-TeaCache", "TeaCache", "nodes",
             {"model_type": "flux", "cache_device": "cpu"},
             {"rel_l1_thresh": [0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.5, 2.5, 4.0]}),
    PeerSpec("ComfyUI-MagCache", "Zehong-Ma/ComfyUI-MagCache", "ComfyUI-MagCache", "MagCache", "nodes",
             {"model_type": "flux"},
             {"magcache_thresh": [0.02, 0.04, 0.06, 0.1, 0.15, 0.2, 0.3], "magcache_K": [2, 4, 6]}),
    PeerSpec("Comfy-WaveSpeed", "chengzeyi/Comfy-WaveSpeed", "Comfy-WaveSpeed", "ApplyFBCacheOnModel",
             "fbcache_nodes", {}, {"residual_diff_threshold": [0.02, 0.05, 0.08, 0.12, 0.2, 0.3, 0.5, 0.8, 1.0]}),
    PeerSpec(CORE, "comfyanonymous/ComfyUI", None, "EasyCache", "comfy_extras.nodes_easycache", {},
             {"reuse_threshold": [0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0, 3.0]}),
    PeerSpec(CORE, "comfyanonymous/ComfyUI", None, "LazyCache", "comfy_extras.nodes_easycache", {},
             {"reuse_threshold": [0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0, 3.0]}),
)


def git_commit(path: Path) -> str:
    """The checked-out commit of ``path`` (a git checkout), else ``unknown``."""
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _error(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _import_file(name: str, path: Path, package_dir: Path | None = None) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(package_dir)] if package_dir else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_peer_node(spec: PeerSpec, peers_dir: Path | None) -> tuple[type | None, dict]:
    """The peer's node class and a record (commit, how it loaded, or why not)."""
    import comfyui_version

    if spec.folder is None:
        record = {"commit": f"v{comfyui_version.__version__}", "load": "core node (comfy_extras)"}
        return _core_node(spec.module, spec.node), record
    folder = (peers_dir / spec.folder) if peers_dir else None
    if folder is None or not (folder / "__init__.py").is_file():
        return None, {"commit": "-", "load": f"not found: no {spec.folder} in the peers dir ({peers_dir})"}
    record = {"commit": git_commit(folder)}
    # as ComfyUI's nodes.load_custom_node imports a custom-node folder
    name = str(folder.resolve()).replace(".", "_x_")
    try:
        package = sys.modules.get(name) or _import_file(name, folder / "__init__.py", folder)
        record["load"] = "package imported as ComfyUI does"
        return package.NODE_CLASS_MAPPINGS[spec.node], record
    except Exception as exc:  # the pack itself fails to import: say why, then try its node's file alone
        record["load"] = f"package import failed: {_error(exc)}"
    try:
        stub = types.ModuleType(name + "_nodes_only")
        stub.__path__ = [str(folder)]
        sys.modules[stub.__name__] = stub
        module = _import_file(f"{stub.__name__}.{spec.module}", folder / f"{spec.module}.py")
        record["load"] += f"; node loaded from {spec.module}.py alone"
        return module.NODE_CLASS_MAPPINGS[spec.node], record
    except Exception as exc:
        record["load"] += f"; {spec.module}.py alone: {_error(exc)}"
        return None, record


def _core_node(module_name: str, node_id: str) -> type:
    from comfy_api.latest import io

    module = importlib.import_module(module_name)
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, io.ComfyNode) and value is not io.ComfyNode:
            if value.define_schema().node_id == node_id:
                return value
    raise LookupError(f"no node {node_id} in {module_name}")


# ------------------------------------------------------------------------------------------------ nodes


def _is_v3(cls: type) -> bool:
    from comfy_api.latest import io

    return issubclass(cls, io.ComfyNode)


def node_inputs(cls: type) -> dict[str, dict]:
    """Input name -> {"default": ..., "options": [...] or None} for a V1 or V3 node class."""
    inputs = {}
    if _is_v3(cls):
        for inp in cls.define_schema().inputs:
            options = getattr(inp, "options", None)
            default = getattr(inp, "default", None)
            if default is None and options:
                default = options[0]
            inputs[inp.id] = {"default": default, "options": list(options) if options else None}
        return inputs
    for section in ("required", "optional"):
        for name, spec in cls.INPUT_TYPES().get(section, {}).items():
            extra = spec[1] if len(spec) > 1 else {}
            options = spec[0] if isinstance(spec[0], (list, tuple)) else None
            default = extra.get("default", options[0] if options else None)
            inputs[name] = {"default": default, "options": list(options) if options else None}
    return inputs


def run_peer_node(cls: type, model, settings: dict):
    """Run a peer's node on ``model`` as ComfyUI would (its defaults, then ``settings``); return the MODEL output."""
    kwargs = {name: spec["default"] for name, spec in node_inputs(cls).items()
              if name != "model" and spec["default"] is not None}
    kwargs.update(settings)
    if _is_v3(cls):
        return cls.execute(model, **kwargs).result[0]
    return getattr(cls(), cls.FUNCTION)(model=model, **kwargs)[0]


def pack_settings(methods: Iterable[str] | None, intervals: Iterable[int], finals: Iterable[int] = (0, 1),
                  warmups: Iterable[int | None] = (None,)) -> list[dict]:
    """The pack's sweep, from its nodes' schemas (FreqCa Accelerate and FreqCa Options) and its method registry:
    every method x interval x ``finals`` (final_full_steps) x ``warmups`` (None: the node's default), Taylor
    orders 1 and 2 for the methods that read ``taylor_order``, every FEB level (FEB's table replaces the interval
    schedule)."""
    from comfyui_freqca.freqca_core.methods import REGISTRY
    from comfyui_freqca.nodes.freqca_node import FreqCaAccelerate, FreqCaOptions

    inputs = {**node_inputs(FreqCaAccelerate), **node_inputs(FreqCaOptions)}
    methods = list(methods or inputs["method"]["options"])
    orders = [{"taylor_order": o} for o in (1, 2)] if "taylor_order" in inputs else [{}]
    out = []
    for method in methods:
        if method == "feb" and "feb_level" in inputs:
            out += [{"method": "feb", "feb_level": level} for level in inputs["feb_level"]["options"]]
            continue
        variants = orders if "taylor_order" in REGISTRY[method].options else [{}]
        for variant, interval, final, warmup in itertools.product(variants, intervals, finals, warmups):
            warm = {} if warmup is None else {"warmup_steps": warmup}
            out.append({"method": method, **variant, "interval": interval, **warm, "final_full_steps": final})
    return out


# -------------------------------------------------------------------------------------------- measuring


@dataclasses.dataclass
class Work:
    computed: int = 0  # blocks whose attention input projection ran
    called: int = 0    # block module calls (harness.count_block_calls)


@contextlib.contextmanager
def count_block_work(model) -> Iterator[Work]:
    """Count blocks computed (their attention input projection ran) and block calls of a Flux ModelPatcher."""
    diffusion_model = model.get_model_object("diffusion_model")
    work = Work()

    def hook(*_) -> None:
        work.computed += 1

    projections = [block.img_attn.qkv for block in diffusion_model.double_blocks]
    projections += [block.linear1 for block in diffusion_model.single_blocks]
    handles = [module.register_forward_hook(hook) for module in projections]
    try:
        with count_block_calls(model) as calls:
            yield work
        work.called = calls.total
    finally:
        for handle in handles:
            handle.remove()


@dataclasses.dataclass
class Row:
    """One setting of one node, measured over the image set (``error``: why it did not run)."""

    source: str    # "pack" (this node) or "peer"
    pack: str
    node: str
    settings: dict
    default: bool = False
    budget: float | None = None           # blocks computed / uncached, over all images
    psnr: float | None = None             # mean over images, dB
    psnr_per_image: list[float] = dataclasses.field(default_factory=list)
    blocks_computed: int = 0
    blocks_called: int = 0
    error: str | None = None

    @property
    def group(self) -> str:
        """What a row is compared within: a peer node, or one of this node's methods (with its Taylor order)."""
        if self.source == "peer":
            return self.node
        method = self.settings.get("method", "?")
        if "taylor_order" in self.settings:
            method += f"-{self.settings['taylor_order']}"
        return f"{PACK} {method}"

    @property
    def label(self) -> str:
        """The settings, less what :attr:`group` already says."""
        shown = {k: v for k, v in self.settings.items() if self.source == "peer" or k not in ("method", "taylor_order")}
        text = ", ".join(f"{k} {v}" for k, v in shown.items())
        return text + (" (default)" if self.default else "")


class Testbed:
    """Uncached references and per-setting measurement on the testbed in ComfyUI's Flux."""

    def __init__(self, steps: int, images: list[tuple[int, int]]):
        self.steps, self.images = steps, images
        self.references: list[torch.Tensor] = []
        self.uncached_computed = 0
        for seed, prompt in images:
            out, work = self._run(lambda model: model, seed, prompt)
            self.references.append(out)
            self.uncached_computed += work.computed

    def _run(self, patch, seed: int, prompt: int) -> tuple[torch.Tensor, Work]:
        model = build_testbed_flux()  # fresh per run: no state left on the module by another pack
        patched = patch(model)
        with count_block_work(model) as work:
            out = sample(patched, *prompt_conditioning(prompt), steps=self.steps, cfg=CFG, latent=pixel_latent(),
                         seed=seed)
        return to_unit(model.model.process_latent_in(out)), work  # the testbed's pixels, in [0, 1]

    def measure(self, row: Row, patch, calibrate: bool = False) -> Row:
        """Run ``patch``'s model on every image (after one run on ``CALIBRATION_IMAGE`` if ``calibrate``)."""
        try:
            if calibrate:
                self._run(patch, *CALIBRATION_IMAGE)
            for (seed, prompt), reference in zip(self.images, self.references):
                out, work = self._run(patch, seed, prompt)
                row.psnr_per_image.append(float(psnr(out, reference)))
                row.blocks_computed += work.computed
                row.blocks_called += work.called
        except Exception as exc:
            row.error = _error(exc)
            return row
        row.budget = row.blocks_computed / self.uncached_computed
        row.psnr = sum(row.psnr_per_image) / len(row.psnr_per_image)
        return row


# ---------------------------------------------------------------------------------------------- summary


def best_within(rows: Iterable[Row], cap: float) -> Row | None:
    """The highest-PSNR row that ran with a budget at most ``cap`` (ties: the cheaper)."""
    eligible = [r for r in rows if r.error is None and r.budget is not None and r.budget <= cap + 1e-9]
    return max(eligible, key=lambda r: (r.psnr, -r.budget), default=None)


def summary(rows: list[Row], caps: Iterable[float] = CAPS) -> list[dict]:
    """Per budget cap: this node's best row, the best peer row and the margin in dB (None where missing)."""
    out = []
    for cap in caps:
        pack = best_within([r for r in rows if r.source == "pack"], cap)
        peer = best_within([r for r in rows if r.source == "peer"], cap)
        margin = pack.psnr - peer.psnr if pack and peer else None
        out.append({"cap": cap, "pack": pack, "peer": peer, "margin_db": margin})
    return out


def _short(commit: str) -> str:
    return commit[:12] if len(commit) == 40 else commit


def _cell(row: Row | None) -> str:
    return "—" if row is None else f"{row.psnr:.2f} ({row.budget:.3f})"


def _peer_table(rows: list[Row], peers: list[dict]) -> list[str]:
    lines = ["| pack | node | commit | loaded | settings swept (fixed) | ran |", "|---|---|---|---|---|---|"]
    for peer in peers:
        node_rows = [r for r in rows if r.source == "peer" and r.node == peer["node"]]
        errors = sorted({r.error for r in node_rows if r.error})
        status = f"{sum(r.error is None for r in node_rows)}/{len(node_rows)}" if node_rows else "not run"
        status += f"; error: {errors[0]}" if errors else ""
        sweep = "; ".join(f"{k} {v}" for k, v in peer["sweep"].items())
        fixed = ", ".join(f"{k} {v}" for k, v in peer["fixed"].items())
        lines.append(f"| {peer['pack']} | {peer['node']} | `{_short(peer['commit'])}` | {peer['load']} | {sweep}"
                     f"{f' ({fixed})' if fixed else ''} | {status} |")
    return lines


def _summary_table(rows: list[Row], caps: list[float]) -> list[str]:
    lines = [f"| budget ≤ | best {PACK} setting | budget | PSNR | best peer setting | budget | PSNR | margin |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    for entry in summary(rows, caps):
        pack, peer = entry["pack"], entry["peer"]
        left = f"{pack.group}: {pack.label} | {pack.budget:.3f} | {pack.psnr:.2f}" if pack else "— | | "
        right = f"{peer.node}: {peer.label} | {peer.budget:.3f} | {peer.psnr:.2f}" if peer else "— | | "
        margin = f"{entry['margin_db']:+.2f} dB" if entry["margin_db"] is not None else "—"
        lines.append(f"| {entry['cap']:.2f} | {left} | {right} | {margin} |")
    return lines


def _group_table(rows: list[Row], caps: list[float]) -> list[str]:
    lines = ["| method or peer | " + " | ".join(f"≤ {cap:.2f}" for cap in caps) + " |", "|---|" + "---:|" * len(caps)]
    for group in dict.fromkeys(r.group for r in rows):
        members = [r for r in rows if r.group == group]
        lines.append(f"| {group} | " + " | ".join(_cell(best_within(members, cap)) for cap in caps) + " |")
    return lines


def markdown(rows: list[Row], peers: list[dict], header: dict, caps: Iterable[float] = CAPS,
             every_row: bool = False) -> str:
    """The report: the peers (commit, how they loaded), the best of each side per budget cap, the best of each
    peer and method per cap, and with ``every_row`` every setting."""
    caps = list(caps)
    lines = [f"**Peers inside ComfyUI v{header['comfyui']}**: trained testbed in ComfyUI's Flux class, "
             f"{header['steps']} euler steps (simple), CFG {CFG}, {len(header['images'])} images (seed, prompt) "
             f"{header['images']}; PSNR (dB, images in [0, 1]) vs the uncached image of the same seed and "
             "prompt, mean over images; budget = transformer blocks computed / uncached.", ""]
    lines += _peer_table(rows, peers) + [""] + _summary_table(rows, caps)
    lines += ["", "Best PSNR dB (budget) of each within each budget:", ""] + _group_table(rows, caps)
    if every_row:
        lines += ["", "| node | setting | budget | PSNR |", "|---|---|---:|---:|"]
        for r in rows:
            value = f"{r.budget:.3f} | {r.psnr:.2f}" if r.error is None else f"— | {r.error}"
            lines.append(f"| {r.group} | {r.label} | {value} |")
    return "\n".join(lines)


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def row_json(row: Row) -> dict:
    """The row as JSON; an infinite PSNR (identical to uncached) is written as null."""
    return dict(dataclasses.asdict(row), group=row.group, psnr=_finite(row.psnr),
                psnr_per_image=[_finite(v) for v in row.psnr_per_image])


def row_from_json(data: dict) -> Row:
    """``row_json``'s inverse (null PSNRs back to infinity)."""
    fields = {f.name for f in dataclasses.fields(Row)}
    row = Row(**{k: v for k, v in data.items() if k in fields})
    row.psnr = math.inf if row.psnr is None and row.error is None else row.psnr
    row.psnr_per_image = [math.inf if v is None else v for v in row.psnr_per_image]
    return row


def merged(path: Path, rows: list[Row], peers: list[dict], header: dict) -> tuple[list[Row], list[dict]]:
    """An earlier run's rows and peers (``--json`` of the same steps and images) with this run's: a setting
    measured now replaces its earlier row; the earlier header, after the runs it had merged itself, is kept in
    ``header["merged"]``."""
    earlier = json.loads(path.read_text())
    if (earlier["header"]["steps"], earlier["header"]["images"]) != (header["steps"], [list(i) for i in header["images"]]):
        raise SystemExit(f"--merge {path}: another step count or image set than this run's")
    key = lambda r: (r.source, r.node, json.dumps(r.settings, sort_keys=True))  # noqa: E731
    now = {key(r) for r in rows}
    kept = [r for r in map(row_from_json, earlier["rows"]) if key(r) not in now]
    nodes = {p["node"] for p in peers}
    header.setdefault("merged", []).extend([*earlier["header"].get("merged", []), {
        "file": str(path), **{k: v for k, v in earlier["header"].items() if k != "merged"}}])
    return kept + rows, [p for p in earlier["peers"] if p["node"] not in nodes] + peers


# ------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers-dir", type=Path, default=os.environ.get("FREQCA_PEERS_DIR"),
                        help="folder holding the peer packs' checkouts (default $FREQCA_PEERS_DIR)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--images", type=int, default=3, help="(seed, prompt) pairs")
    parser.add_argument("--methods", nargs="+", help="this node's methods (default: every option of its input)")
    parser.add_argument("--intervals", type=int, nargs="+", default=list(DEFAULT_INTERVALS))
    parser.add_argument("--finals", type=int, nargs="+", default=[0, 1], help="final_full_steps values swept")
    parser.add_argument("--warmups", type=int, nargs="+", help="warmup_steps values swept (default: the node's)")
    parser.add_argument("--only", nargs="+", help="run only these peer nodes (e.g. TeaCache EasyCache); "
                                                  "'pack' for this node")
    parser.add_argument("--all", action="store_true", help="also print every setting's row")
    parser.add_argument("--json", type=Path, help="write rows, summary, peers and commits here")
    parser.add_argument("--merge", type=Path, nargs="+", default=[],
                        help="earlier --json files of the same steps and images, oldest first: their rows join "
                             "this run's (a setting measured now, or in a newer file, replaces its earlier row; "
                             "--only none merges without measuring)")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.images < 1:
        parser.error("--steps must be >= 2 and --images >= 1")
    comfyui = find_comfyui()
    if comfyui is None:
        sys.exit("ComfyUI not found: set COMFYUI_PATH")
    torch.set_num_threads(1)
    import_comfyui(comfyui)
    import folder_paths
    folder_paths.set_user_directory(tempfile.mkdtemp(prefix="freqca-peers-"))  # auto's profiles: this run's only
    load_pack()
    import comfyui_version
    from comfyui_freqca.nodes.freqca_node import FreqCaAccelerate

    images = image_set(args.images)
    started = time.time()
    bench = Testbed(args.steps, images)
    print(f"uncached references: {len(images)} images, {time.time() - started:.1f} s", file=sys.stderr)
    wanted = set(args.only or [])
    rows: list[Row] = []
    peers = []
    for spec in PEERS:
        if wanted and spec.node not in wanted:
            continue
        cls, record = load_peer_node(spec, args.peers_dir)
        peers.append({"pack": spec.pack, "repo": spec.repo, "node": spec.node, "fixed": spec.fixed,
                      "sweep": spec.sweep, **record})
        if cls is None:
            continue
        defaults = {k: v["default"] for k, v in node_inputs(cls).items()}
        for values in itertools.product(*spec.sweep.values()):
            swept = dict(zip(spec.sweep, values))
            row = Row("peer", spec.pack, spec.node, swept,
                      default=all(defaults.get(k) == v for k, v in swept.items()))
            rows.append(bench.measure(row, lambda m, s={**spec.fixed, **swept}: run_peer_node(cls, m, s)))
            print(f"{spec.node} {row.label}: "
                  + (row.error or f"budget {row.budget:.3f}, PSNR {row.psnr:.2f}"), file=sys.stderr)
    if not wanted or "pack" in wanted:
        for settings in pack_settings(args.methods, args.intervals, args.finals, args.warmups or [None]):
            row = Row("pack", PACK, "FreqCaAccelerate", settings)
            rows.append(bench.measure(row, lambda m, s=settings: apply_node(m, **s),
                                      calibrate=settings["method"] == "auto"))
            print(f"{row.group} {row.label}: " + (row.error or f"budget {row.budget:.3f}, PSNR {row.psnr:.2f}"),
                  file=sys.stderr)
    header = {"comfyui": comfyui_version.__version__, "steps": args.steps, "cfg": CFG, "sampler": "euler",
              "scheduler": "simple", "images": images, "pack_commit": git_commit(Path(__file__).resolve().parent),
              "node_methods": node_inputs(FreqCaAccelerate)["method"]["options"],
              "torch_threads": torch.get_num_threads(), "seconds": round(time.time() - started, 1)}
    for path in reversed(args.merge):  # the newest file first: each older one fills in what is not measured yet
        rows, peers = merged(path, rows, peers, header)
    print(markdown(rows, peers, header, every_row=args.all))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        table = [{"cap": e["cap"], "margin_db": e["margin_db"],
                  "pack": row_json(e["pack"]) if e["pack"] else None,
                  "peer": row_json(e["peer"]) if e["peer"] else None} for e in summary(rows)]
        args.json.write_text(json.dumps({"header": header, "peers": peers, "summary": table,
                                         "rows": [row_json(r) for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
