"""`make mutation`'s summary: the mutation score per file from mutmut 3's metadata (mutants/*.meta).

    python tests/mutation_report.py [MODULE ...] [--elapsed SECONDS]

score = detected / (mutants - equivalent), detected = killed + timeout + segfault (a mutant that
hangs or crashes the tests is caught by them). The equivalent mutants below change no observable
behaviour; they are listed with their reason and left out of the score. A mutant that survives,
or that no test reaches ("no tests"), counts against the score and is printed with its diff line.
Exit status 1 when a file is below its target. Run from the repository root, after `mutmut run`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

TARGETS = {"grpo": 90.0, "diffusion": 90.0, "loss": 80.0, "rollout": 80.0}

# mutant name -> why it is equivalent (mutmut numbers the mutants of a function from its source,
# so the names hold while the function is unchanged; a changed function is re-examined)
EQUIVALENT = {
    # marpipe/diffusion.py
    "marpipe.diffusion.xǁScheduleǁfrom_abar__mutmut_12":
        "`numel() >= 1`: one timestep leaves ts[1:] empty, .all() of nothing is True, no raise either way",
    "marpipe.diffusion.xǁScheduleǁfrom_abar__mutmut_28":
        "torch.ones(1) in float32: torch.cat promotes it to abar's float64, 1.0 is exact",
    "marpipe.diffusion.xǁScheduleǁfrom_abar__mutmut_30":
        "torch.ones(1) in float32: torch.cat promotes it to abar's float64, 1.0 is exact",
    "marpipe.diffusion.xǁScheduleǁrespaced__mutmut_18":
        "arange of Python ints is int64 without a dtype",
    "marpipe.diffusion.xǁScheduleǁrespaced__mutmut_22":
        "arange of Python ints is int64 without a dtype",
    # marpipe/grpo.py
    "marpipe.grpo.x_group_advantages__mutmut_20": "torch.std's correction defaults to 1 (correction=None)",
    "marpipe.grpo.x_group_advantages__mutmut_23": "torch.std's correction defaults to 1 (argument dropped)",
    "marpipe.grpo.x_mask_units__mutmut_2": "repeat_interleave(1) is the identity (units = 1 now repeats)",
    "marpipe.grpo.x_mask_units__mutmut_9": "repeat_interleave(1) is the identity (units >= 1)",
    "marpipe.grpo.x_masked_mean__mutmut_2":
        "a bool mask multiplies and counts as the same mask cast to float32/float64 (exact counts)",
    "marpipe.grpo.x_top_k_mask__mutmut_12": "float('-INF') is float('-inf')",
    "marpipe.grpo.x_top_k_mask__mutmut_36": "argsort's dim defaults to -1",
    "marpipe.grpo.x_top_k_mask__mutmut_77":
        "non-candidates filled with -2.0 instead of -1.0: both below every torch.rand draw in [0, 1)",
    "marpipe.grpo.x_top_k_mask__mutmut_82": "topk's dim defaults to -1",
    "marpipe.grpo.x_cosine_mask_counts__mutmut_32":
        "lower bound steps-k-2: the bound steps-k-1 never binds (K <= N: round(N sin(pi r / 2K)) >= r "
        "for r steps left, as sin(pi x / 2) >= x), so lowering it changes nothing",
    "marpipe.grpo.x_cosine_mask_counts__mutmut_36": "`and` -> `or` in an assert whose two conditions always hold",
    "marpipe.grpo.x_nova_mask_counts__mutmut_5":
        "astype(None): float64 of the same integers; int(c) and c > 0 give the same counts",
    # marpipe/loss.py
    "marpipe.loss.x__reduce_tokens__mutmut_10": "masked_mean's dim defaults to -1",
    "marpipe.loss.x_mar_grpo_loss__mutmut_40": "`need` as float 0/1 instead of bool: only its nonzero() is used",
    "marpipe.loss.x_mar_grpo_loss__mutmut_47": "`need` as float 0/1 instead of bool: only its nonzero() is used",
    "marpipe.loss.x_mar_grpo_loss__mutmut_52": "`S >= 1`: with S = 1, need[:, 1:] is empty and the assignment does nothing",
    "marpipe.loss.x_mar_grpo_loss__mutmut_85":
        "z_u computed also without guided_logp: _posterior_means ignores it then (an unused forward)",
    "marpipe.loss.x_mar_grpo_loss__mutmut_117": "`S >= 1`: with S = 1 no row has s > 0, the where is the identity",
    "marpipe.loss.x_mar_grpo_loss__mutmut_127": "`s >= 0`: the own rows (s = 0) take trajectory 0's log_var, their own",
    "marpipe.loss.x_mar_grpo_loss__mutmut_209":
        "on_policy clipped at None: the on-policy ratio's value is 1, inside any clip range; same value and gradient",
    "marpipe.loss.x_mar_grpo_loss__mutmut_226":
        "stats only: the mean over all channels equals the mean over pixels of the per-pixel means",
    "marpipe.loss.x_mar_grpo_loss__mutmut_277": "`beta >= 0`: with beta = 0 the KL is computed and multiplied by 0",
    "marpipe.loss.x_mar_grpo_loss__mutmut_294":
        "reference z with grad enabled: the graph is dropped, mean_ref is taken under no_grad (memory only)",
    "marpipe.loss.x_mar_grpo_loss__mutmut_297":
        "z_ref_u computed also without guided_logp: _posterior_means ignores it then (an unused forward)",
    "marpipe.loss.x_mar_grpo_loss__mutmut_309":
        "reference z_u with grad enabled: the graph is dropped, mean_ref is taken under no_grad (memory only)",
    # marpipe/rollout.py
    "marpipe.rollout.x__extra_trajectories__mutmut_35":
        "guided_logp of the image-scope extras: their record() never uses logp_mean",
    "marpipe.rollout.x__extra_trajectories__mutmut_46":
        "guided_logp of the image-scope extras: their record() never uses logp_mean",
    "marpipe.rollout.x__head_step__mutmut_1": "default cfg_scale: the only caller (_sample_chain) always passes it",
    "marpipe.rollout.x__head_step__mutmut_2": "default guided_logp: the only caller (_sample_chain) always passes it",
    "marpipe.rollout.x__head_step__mutmut_25": "torch.full with an int fill value is int64 without a dtype",
    "marpipe.rollout.x__head_step__mutmut_29": "torch.full with an int fill value is int64 without a dtype",
    "marpipe.rollout.x_derive_seed__mutmut_5":
        "SeedSequence.generate_state(2)[0] is generate_state(1)[0]: the same first word",
}

DETECTED = {"killed", "timeout", "segfault", "caught by type check"}
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
          -11: "segfault", -9: "segfault", 37: "caught by type check", None: "not checked"}


def diff_line(name: str) -> str:
    """The mutated line(s) of `name`, from `mutmut show`'s diff (empty if mutmut is unavailable)."""
    try:
        from mutmut.__main__ import find_mutant, get_diff_for_mutant
        d = get_diff_for_mutant(name, path=find_mutant(name).path)
    except Exception:                                           # noqa: BLE001 - a summary, not a check
        return ""
    return " | ".join(line[1:].strip() for line in d.splitlines()
                      if line[:1] == "+" and not line.startswith("+++"))


def main(argv: list[str]) -> int:
    elapsed = None
    if "--elapsed" in argv:
        i = argv.index("--elapsed")
        elapsed = float(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    modules = argv or list(TARGETS)
    rows, below = [], []
    for mod in modules:
        meta = Path("mutants") / "marpipe" / f"{mod}.py.meta"
        if not meta.exists():
            print(f"{mod}: no {meta} (run mutmut first)")
            below.append(mod)
            continue
        data = json.loads(meta.read_text())
        codes = data["exit_code_by_key"]
        status = {k: STATUS.get(v, "suspicious") for k, v in codes.items()}
        if any(s == "not checked" for s in status.values()):
            print(f"{mod}: {sum(s == 'not checked' for s in status.values())} mutants not checked (run incomplete)")
        equivalent = [k for k in status if k in EQUIVALENT]
        counted = {k: s for k, s in status.items() if k not in EQUIVALENT and s != "not checked"}
        detected = sum(s in DETECTED for s in counted.values())
        score = 100.0 * detected / max(len(counted), 1)
        test_s = sum(data.get("durations_by_key", {}).values())
        rows.append((mod, len(status), len(equivalent), detected, len(counted), score, test_s))
        if score < TARGETS.get(mod, 0.0):
            below.append(mod)
        left = sorted((k for k, s in counted.items() if s not in DETECTED), key=_natural)
        if left:
            print(f"\n{mod}: {len(left)} not detected")
            for k in left:
                print(f"  {counted[k]:9} {k}: {diff_line(k)}")
        if equivalent:
            print(f"\n{mod}: {len(equivalent)} equivalent (not counted)")
            for k in sorted(equivalent, key=_natural):
                print(f"  {status[k]:9} {k}: {EQUIVALENT[k]}")
    print("\nfile           mutants  equivalent  detected/counted   score  target  tests run (s)")
    for mod, n, eq, det, cnt, score, test_s in rows:
        ok = "ok" if score >= TARGETS.get(mod, 0.0) else "BELOW"
        print(f"{mod + '.py':14} {n:7}  {eq:10}  {det:8}/{cnt:<7}  {score:5.1f}%  {TARGETS.get(mod, 0):4.0f}%  "
              f"{test_s:10.0f}  {ok}")
    if elapsed is not None:
        print(f"wall time of the mutmut run: {elapsed:.0f} s")
    return 1 if below else 0


def _natural(name: str):
    head, _, num = name.rpartition("__mutmut_")
    return (head, int(num) if num.isdigit() else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
