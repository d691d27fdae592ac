"""``marpipe bench gpu``: one rollout and one training step per variant of the config, timed phase by
phase (prompt encoding, the rollout's AR and head, MTE's extra trajectories, decode, reward, loss,
KL reference, backward, gradient sync, optimizer: each phase's exclusive wall time and peak memory),
at the paper's per-GPU batch (1 prompt x 4 images), beside the official sampler's time for the same
images; the models' protocol methods are wrapped with timers, the code they run is unchanged. Sizes:
``tiny`` (the tiny presets, random weights, CPU, seconds) and ``real`` (the official classes at their
real sizes with random weights, :mod:`marpipe.models.real_size`; one GPU; a family whose official
code does not import here runs in its side venv). How to run it: docs/cluster.md, docs/development.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

PHASES = ("prompt_encoding", "rollout_ar", "rollout_head", "mte_extras", "decode", "rollout_other",
          "reward", "loss_forward", "kl_reference", "backward", "gradient_sync", "optimizer")
ROLLOUT_PHASES = PHASES[:6]
VARIANTS = ("grpo", "fix_decoder", "mte", "sim")
PROMPT = "a photo of a cat sitting on a sofa"
PAPER_GPUS = 3            # the reference trainers' torchrun over 3 GPUs, 1 prompt x 4 images per GPU
STEP = 1
SEED = 0
REWARD = "mean brightness of the images (cheap, deterministic: the bench measures the generator)"
REPO = Path(__file__).resolve().parents[2]


def _say(msg: str) -> None:
    print(f"[marpipe bench gpu] {msg}", file=sys.stderr, flush=True)


def brightness(images: torch.Tensor, prompts, metadata) -> torch.Tensor:
    """The bench's reward: each image's mean pixel value."""
    return images.float().mean(dim=(1, 2, 3))


# ============================================================ the clock
class PhaseClock:
    """Exclusive wall time and peak memory per named phase. Regions nest: an inner region pauses
    the outer one, so each second and each peak is charged to the innermost phase running."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)
        self.peak_mib: dict[str, float] = {}
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list] = []          # [name, resumed at]
        self._resettable = self.cuda or _can_reset_rss()

    @property
    def memory_kind(self) -> str:
        if self.cuda:
            return "torch.cuda.max_memory_allocated, reset per phase (MiB)"
        return ("peak RSS of the process (VmHWM, reset per phase; MiB; the optimizer's includes the bench's "
                "copy of the trained weights, kept to compare)" if self._resettable
                else "peak RSS of the process since it started (ru_maxrss, not resettable here; MiB)")

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _peak(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return _rss_peak_kib() / 1024

    def _reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self._resettable:
            _reset_rss_peak()

    def _charge(self, now: float) -> None:
        name, since = self._stack[-1]
        self.seconds[name] += now - since
        self.peak_mib[name] = max(self.peak_mib.get(name, 0.0), self._peak())

    @contextlib.contextmanager
    def region(self, name: str):
        self._sync()
        if self._stack:
            self._charge(time.perf_counter())
        self._reset()
        self._stack.append([name, time.perf_counter()])
        try:
            yield
        finally:
            self._sync()
            self._charge(time.perf_counter())
            self.calls[name] += 1
            self._stack.pop()
            self._reset()
            if self._stack:
                self._stack[-1][1] = time.perf_counter()

    def report(self) -> dict:
        return {p: {"seconds": round(self.seconds.get(p, 0.0), 6),
                    "peak_memory_mib": round(self.peak_mib[p], 1) if p in self.peak_mib else None,
                    "calls": self.calls.get(p, 0)} for p in PHASES}


def _can_reset_rss() -> bool:
    try:
        _reset_rss_peak()
        return _rss_peak_kib() > 0
    except OSError:
        return False


def _reset_rss_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                          # Linux: VmHWM := VmRSS


def _rss_peak_kib() -> float:
    try:
        with open("/proc/self/status") as f:
            return float(next(line.split()[1] for line in f if line.startswith("VmHWM:")))
    except OSError:
        import resource
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# ============================================================ instrumenting a trainer
ROLLOUT_METHODS = {"encode_prompts": "prompt_encoding", "encode_negative": "prompt_encoding",
                   "ar_forward": "rollout_ar", "head": "rollout_head", "decode": "decode"}


@contextlib.contextmanager
def instrumented(trainer, clock: PhaseClock):
    """Time ``trainer``'s model calls by phase while the block runs; yields a dict whose ``stage``
    the caller sets to ``rollout`` or ``loss`` (in the loss the policy's calls are ``loss_forward``)."""
    from marpipe import rollout as R
    state = {"stage": "rollout", "mte": False}
    patched = []

    def wrap(obj, method, phase_of):
        original = getattr(obj, method)

        def timed(*args, **kwargs):
            phase = phase_of()
            if phase is None:
                return original(*args, **kwargs)
            with clock.region(phase):
                return original(*args, **kwargs)
        patched.append((obj.__dict__, method, obj.__dict__.get(method)))
        obj.__dict__[method] = timed

    def policy_phase(method):
        def phase():
            if state["stage"] != "rollout":
                return None                   # charged to the enclosing loss_forward
            return "mte_extras" if state["mte"] else ROLLOUT_METHODS[method]
        return phase

    for method in ROLLOUT_METHODS:
        wrap(trainer.model, method, policy_phase(method))
        if trainer.ref_model is not None:
            wrap(trainer.ref_model, method, lambda: "kl_reference")
    wrap(trainer, "reward", lambda: "reward")

    def mte(fn):
        def run(*args, **kwargs):
            state["mte"] = True
            try:
                with clock.region("mte_extras"):
                    return fn(*args, **kwargs)
            finally:
                state["mte"] = False
        return run
    for name in ("_extra_trajectories", "_step_trajectories"):
        patched.append((R.__dict__, name, getattr(R, name)))
        setattr(R, name, mte(getattr(R, name)))
    try:
        yield state
    finally:
        for where, name, original in reversed(patched):
            if original is None:
                where.pop(name, None)
            else:
                where[name] = original


# ============================================================ one step
def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().to("cpu", copy=True) for p in params]


@torch.no_grad()
def weights_changed(params, before: list[torch.Tensor]) -> dict:
    """Of the trained (float32 master) weights with a non-zero gradient, how many the step changed."""
    nonzero = changed = total = 0
    for p, old in zip(params, before):
        total += p.numel()
        if p.grad is None:
            continue
        g = p.grad != 0
        nonzero += int(g.sum())
        changed += int((g & (p.detach() != old.to(p.device))).sum())
    return {"trained": total, "nonzero_grad": nonzero, "changed": changed,
            "weights_changed_fraction": changed / nonzero if nonzero else None}


def gradient_sync(trainer) -> None:
    """Nothing to sync in one process. Over several ranks the trainer's DDP averages the gradients in
    buckets inside the backward (charged there); this then times one all-reduce of the same gradients
    on a copy, what that averaging costs when it does not overlap."""
    import torch.distributed as dist
    if trainer.world == 1:
        return
    grads = [p.grad.reshape(-1) for p in trainer.params if p.grad is not None]
    if grads:
        dist.all_reduce(torch.cat(grads))


def measure_step(trainer, clock: PhaseClock) -> dict:
    """One rollout and one training step of ``trainer``, stage by stage as ``Trainer.train_step``."""
    from marpipe.trainer import seed_global_rngs
    seed_global_rngs(trainer.cfg.seed, STEP - 1)
    with instrumented(trainer, clock) as state:
        with clock.region("rollout_other"):
            ro, rewards, adv, _ = trainer.generate_and_score(STEP)
        state["stage"] = "loss"
        trainer.optimizer.zero_grad(set_to_none=True)
        with clock.region("loss_forward"):
            out = trainer.compute_loss(ro, adv)
        with clock.region("backward"):
            out.loss.backward()
        with clock.region("gradient_sync"):
            gradient_sync(trainer)
    before = _snapshot(trainer.params)
    with clock.region("optimizer"):
        for p in trainer.params:          # as Trainer.train_step: parameters off the graph get zeros
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainer.params, trainer.cfg.max_grad_norm))
        finite = math.isfinite(out.stats["loss"]) and math.isfinite(grad_norm)
        if finite:
            trainer.optimizer.step()
    return {"images": int(ro.images.shape[0]), "reward_mean": float(rewards.mean()), "loss": out.stats["loss"],
            "grad_norm": grad_norm, "finite": finite, **weights_changed(trainer.params, before)}


def timed_sampler(subject, device: torch.device, dtype: torch.dtype, images: int) -> dict:
    """The (official) sampler for the bench's images: one short warm-up run, then one timed run."""
    clock = PhaseClock(device)
    with _autocast(subject, device, dtype):
        subject.official(PROMPT, images, SEED, ar_steps=2)
        with clock.region("sampler"):
            out = subject.official(PROMPT, images, SEED)
    seconds = clock.seconds["sampler"]
    return {"sampler": subject.sampler_name, "images": int(out.shape[0]), "seconds": round(seconds, 6),
            "images_per_s": round(out.shape[0] / seconds, 4), "peak_memory_mib": round(clock.peak_mib["sampler"], 1)}


def _autocast(subject, device, dtype):
    """The tiny stand-in sampler runs under the trainer's autocast; the official samplers as shipped."""
    if getattr(subject, "sampler_autocast", False) and dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


# ============================================================ subjects
class TinySubject:
    """A tiny preset (``tiny-nova`` / ``tiny-harmon``) with a random (not zero-initialised) head."""
    sampler_autocast = True           # the stand-in sampler runs as the trainer runs the model
    sampler_name = "marpipe.rollout.sample_images (tiny: no official sampler; marpipe's plain sampler)"

    def __init__(self, name: str, device, dtype):
        from marpipe.models.registry import model_family
        self.name, self.device, self.dtype = name, device, dtype
        self.pristine = self.fresh()
        self.family = model_family(self.pristine)
        self.notes = ["tiny preset, random weights with a random head (zero_init=False), its own sampling"]

    def fresh(self):
        from marpipe.models.registry import load_model
        torch.manual_seed(SEED)
        return load_model(self.name, device=self.device, dtype=self.dtype, zero_init=False)

    def official(self, prompt, n, seed, ar_steps=None):
        from marpipe.rollout import sample_images
        model, spec = self.pristine, self.pristine.sampling
        model.sampling = dataclasses.replace(spec, ar_steps=ar_steps or spec.ar_steps)
        try:
            return sample_images(model, [prompt], seed, images_per_prompt=n, device=self.device)
        finally:
            model.sampling = spec


def real_subject(family: str, device, dtype, config: str | Path, official: str | None = None):
    """The official model of ``family`` at its real size, sampling and gradient checkpointing as ``config``'s."""
    from marpipe.models import real_size
    exp, model = _experiment(family, config)
    entry = exp.cfg["models"][model]
    build = {"nova": real_size.nova_subject, "harmon": real_size.harmon_subject}[family]
    return build(device, dtype, root=real_size.official_root(official), seed=SEED, sampling=entry.get("sampling"),
                 gradient_checkpointing=bool(entry.get("gradient_checkpointing", False)))


# ============================================================ configs
def _experiment(family: str, config: str | Path):
    """The experiment config and its (first) model of ``family``."""
    from marpipe.experiment import load
    exp = load(config)
    model = next((m for m in exp.models if exp.model_family(m) == family), None)
    if model is None:
        raise ValueError(f"{config}: no model of family {family!r} (models: {', '.join(exp.models)})")
    return exp, model


def variant_configs(family: str, variants, config: str | Path, world: int = 1) -> dict:
    """Each variant's training config for ``family`` from the experiment config, at the per-GPU batch."""
    exp, model = _experiment(family, config)
    out = {}
    for v in variants:
        cfg = exp.train_config(model, exp.trained_rewards[0], v)
        per_gpu = max(1, cfg.prompts_per_step // PAPER_GPUS)
        out[v] = dataclasses.replace(cfg, prompts_per_step=per_gpu * world, steps=10**6, save_every=10**6)
    return out


# ============================================================ the bench
def bench_model(subject, cfgs: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Every variant's step on fresh copies of ``subject``'s model, and its sampler, in this process."""
    with warnings.catch_warnings():
        # the official MAR calls torch.utils.checkpoint without use_reentrant, also under no_grad
        warnings.filterwarnings("ignore", "torch.utils.checkpoint: the use_reentrant parameter")
        warnings.filterwarnings("ignore", "None of the inputs have requires_grad=True")
        return _bench_model(subject, cfgs, device, dtype)


def _bench_model(subject, cfgs: dict, device: torch.device, dtype: torch.dtype) -> dict:
    from marpipe.trainer import PromptItem, Trainer
    first = next(iter(cfgs.values()))
    report = {"family": subject.family, "notes": subject.notes,
              "sampling": dataclasses.asdict(subject.pristine.sampling),
              "batch": {"prompts": first.prompts_per_step, "group_size": first.group_size,
                        "images": first.prompts_per_step * first.group_size},
              "official_sampler": timed_sampler(subject, device, dtype, first.group_size), "variants": {}}
    official_s = report["official_sampler"]["seconds"]
    _say(f"{subject.name}: sampler {official_s:.2f} s for {report['batch']['images']} images")
    for variant, cfg in cfgs.items():
        clock = PhaseClock(device)
        row: dict = {}
        try:
            with tempfile.TemporaryDirectory() as d:
                trainer = Trainer(subject.fresh(), cfg, [PromptItem(PROMPT, {})], brightness, d, device=device,
                                  progress=False)
                row = measure_step(trainer, clock)
                del trainer
        except torch.cuda.OutOfMemoryError as e:
            row = {"error": f"CUDA out of memory: {str(e).splitlines()[0]}"}
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        phases = clock.report()
        rollout_s = sum(phases[p]["seconds"] for p in ROLLOUT_PHASES)
        step_s = sum(v["seconds"] for v in phases.values())
        images = row.get("images", report["batch"]["images"])
        report["variants"][variant] = {
            "settings": {k: getattr(cfg, k) for k in ("fix_decoder", "mte", "sim", "S", "top_k", "tau", "lr", "beta",
                                                     "preset", "trained_parts")},
            "phases": phases, "rollout_seconds": round(rollout_s, 6), "step_seconds": round(step_s, 6),
            "images_per_s": round(images / step_s, 4) if step_s else None,
            "rollout_images_per_s": round(images / rollout_s, 4) if rollout_s else None,
            "rollout_over_official_sampler": round(rollout_s / official_s, 3) if official_s else None,
            "peak_memory_mib": max((v["peak_memory_mib"] or 0.0) for v in phases.values()),
            **row}
        _say(f"{subject.name} {variant}: rollout {rollout_s:.2f} s, step {step_s:.2f} s"
             + (f" ({row['error']})" if "error" in row else ""))
    return report


def _runs_here(family: str, official: str | None) -> str | None:
    """None if this interpreter can build ``family``'s official classes, else why not."""
    from marpipe.models import real_size
    try:
        if family == "nova":
            real_size.import_diffnext()
        else:
            import einops  # noqa: F401
            real_size.import_harmon_code(real_size.official_root(official))
    except Exception as e:  # noqa: BLE001 - the reason is reported (or the side venv tried)
        return f"{type(e).__name__}: {e}"
    return None


def _side_python(family: str) -> Path | None:
    """The side venv's interpreter: ``$MARPIPE_<FAMILY>_PYTHON`` or ``.venv-<family>`` in the repository."""
    given = os.environ.get(f"MARPIPE_{family.upper()}_PYTHON")
    cand = Path(given) if given else REPO / f".venv-{family}" / "bin" / "python"
    return cand if cand.is_file() else None


def _is_this_interpreter(python: Path) -> bool:
    """Venv interpreters are links to one base interpreter: compare the venvs, not the binaries."""
    return Path(sys.prefix).resolve() == python.absolute().parent.parent.resolve()


def _in_side_venv(family: str, python: Path, args: dict) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "report.json"
        cmd = [str(python), "-m", "marpipe", "bench", "gpu", "--size", "real", "--models", family,
               "--device", args["device"], "--dtype", args["dtype"], "--config", str(Path(args["config"]).resolve()),
               "--json-out", str(out), "--variants", *args["variants"]] + (["--official", args["official"]] if args["official"] else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        subprocess.run(cmd, check=True, env=env, cwd=REPO)
        return json.loads(out.read_text())["models"][family]


@contextlib.contextmanager
def _threads_for(size: str, dev: torch.device):
    """Tiny models on a CPU run on one thread unless the user chose (``OMP_NUM_THREADS``,
    ``MARPIPE_TORCH_THREADS``): they gain nothing from more, and on a shared machine the threads'
    spin-waiting makes the timings swing tenfold."""
    chosen = any(os.environ.get(k) for k in ("OMP_NUM_THREADS", "MARPIPE_TORCH_THREADS"))
    before = torch.get_num_threads()
    if size == "tiny" and dev.type == "cpu" and not chosen:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bench_gpu(size: str = "tiny", device: str | None = None, dtype: str | None = None, models=None,
              variants=None, config: str | Path = "config.yaml", as_json: bool = False,
              official: str | None = None, json_out: str | None = None) -> dict:
    """``marpipe bench gpu``: the report (printed as a table, or as JSON with ``as_json``)."""
    from marpipe.models.registry import default_dtype
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dt = getattr(torch, dtype) if dtype else default_dtype(dev)
    variants = list(variants or VARIANTS)
    models = list(models or (("tiny-nova", "tiny-harmon") if size == "tiny" else ("nova", "harmon")))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    with _threads_for(size, dev):
        report = {"size": size, "device": str(dev), "dtype": str(dt).removeprefix("torch."),
                  "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
                  "threads": torch.get_num_threads(), "world_size": world, "reward": REWARD,
                  "memory": PhaseClock(dev).memory_kind, "phases": list(PHASES), "models": {}}
        for name in models:
            family = name.removeprefix("tiny-")
            cfgs = variant_configs(family, variants, config, world)
            why = _runs_here(family, official) if size == "real" else None
            python = _side_python(family) if why else None
            if why and python and not _is_this_interpreter(python):
                _say(f"{name}: running in {python}")
                args = {"device": str(dev), "dtype": report["dtype"], "config": config, "variants": variants,
                        "official": official}
                report["models"][name] = _in_side_venv(family, python, args)
                continue
            if why:
                raise RuntimeError(f"{name} at real size cannot be built here ({why}) and no side venv was found "
                                   f"(.venv-{family}, or set MARPIPE_{family.upper()}_PYTHON)")
            _say(f"{name}: building ({size} size, {dev}, {report['dtype']})")
            subject = TinySubject(name, dev, dt) if size == "tiny" else real_subject(family, dev, dt, config, official)
            report["models"][name] = bench_model(subject, cfgs, dev, dt)
            del subject
            gc.collect()
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1))
    if as_json:
        print(json.dumps(report, indent=1))
    elif not json_out:
        print_table(report)
    return report


def print_table(report: dict) -> None:
    gpu = f" ({report['gpu']})" if report["gpu"] else ""
    print(f"marpipe bench gpu: size {report['size']}, {report['device']}{gpu}, {report['dtype']}, "
          f"{report['threads']} threads, world size {report['world_size']}")
    print(f"reward: {report['reward']}\nmemory: {report['memory']}")
    for name, m in report["models"].items():
        vs = list(m["variants"])
        b, s = m["batch"], m["sampling"]
        print(f"\n{name}: {b['prompts']} prompt x {b['group_size']} images, {s['ar_steps']} AR steps x "
              f"{s['diffusion_steps']} head steps, CFG {s['cfg_scale']}; " + "; ".join(m["notes"]))
        print(f"  {'phase (s / peak MiB)':<22}" + "".join(f"{v:>22}" for v in vs))
        for p in PHASES:
            cells = []
            for v in vs:
                ph = m["variants"][v]["phases"][p]
                mem = "-" if ph["peak_memory_mib"] is None else f"{ph['peak_memory_mib']:.0f}"
                cells.append(f"{ph['seconds']:>12.4f} / {mem:>7}")
            print(f"  {p:<22}" + "".join(f"{c:>22}" for c in cells))

        def line(label, key, fmt):
            vals = [m["variants"][v].get(key) for v in vs]  # noqa: B023 (called within the loop)
            print(f"  {label:<22}" + "".join(f"{('-' if x is None else format(x, fmt)):>22}" for x in vals))
        line("rollout (s)", "rollout_seconds", ".4f")
        line("step (s)", "step_seconds", ".4f")
        line("images/s (step)", "images_per_s", ".3f")
        line("rollout / sampler", "rollout_over_official_sampler", ".3f")
        line("weights changed", "weights_changed_fraction", ".4f")
        for v in vs:
            if "error" in m["variants"][v]:
                print(f"  {v}: {m['variants'][v]['error']}")
        o = m["official_sampler"]
        print(f"  sampler: {o['sampler']}: {o['seconds']:.4f} s for {o['images']} images "
              f"({o['images_per_s']:.3f} images/s), peak {o['peak_memory_mib']:.0f} MiB")
