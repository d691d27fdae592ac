"""Checkpoint selection, as the paper reports it (Table 2).

Baselines (``selection.best_of``: GRPO, +Fix Decoder) are unstable, so they are reported at their
best checkpoint by training reward (marked ``*``): the saved step whose mean training reward over
the preceding ``window`` steps is highest. The other variants use the step fixed in advance
(``selection.fixed_step``). Both outputs are byte-stable (:func:`select_checkpoint`)."""
from __future__ import annotations

from pathlib import Path

from marpipe.experiment import Experiment, split_variant
from marpipe.io.checkpoint import checkpoint_path, is_valid, list_checkpoints, load_model_weights, write_safetensors
from marpipe.io.files import sha256_file, write_json
from marpipe.io.tracking import read_jsonl


def windowed_reward(rows: list[dict], step: int, window: int) -> float:
    vals = [r["reward_mean"] for r in rows if step - window < r["step"] <= step]
    return sum(vals) / len(vals) if vals else float("-inf")


def pick_step(sel: dict, reward: str, variant: str, saved: list[int], rows: list[dict]) -> tuple[int, str, dict]:
    """The step the config's ``selection`` rule picks among the ``saved`` steps (``rows``: the run's
    metrics): the best windowed training reward (ties: the earlier step) or the fixed step."""
    if split_variant(variant)[0] in sel["best_of"]:      # an ablation point is selected as its variant
        scores = {s: windowed_reward(rows, s, sel["window"]) for s in saved}
        best = max(saved, key=lambda s: (scores[s], -s))
        return best, "best", {str(s): v for s, v in scores.items()}
    return sel["fixed_step"][reward], "fixed", {}


def choose_step(exp: Experiment, reward: str, variant: str, run_dir: Path) -> tuple[int, str, dict]:
    saved = [s for s, p in list_checkpoints(run_dir / "checkpoints") if is_valid(p)]
    if not saved:
        raise FileNotFoundError(f"{run_dir}/checkpoints: no valid checkpoint (rerun the train rule)")
    step, rule, scores = pick_step(exp.cfg["selection"], reward, variant, saved, read_jsonl(run_dir / "metrics.jsonl"))
    if step not in saved:
        raise FileNotFoundError(f"{run_dir}: no checkpoint at the fixed step {step} "
                                f"(saved: {saved}); check selection.fixed_step and train.save_every")
    return step, rule, scores


def keep_for_selection(exp: Experiment, reward: str, variant: str, run_dir: Path):
    """The trainer's pruning rule: after each save, the checkpoints the selection may still pick (the
    best so far, whose windowed reward no later step changes; the fixed step). The newest is kept too,
    for the resume. ``selection.keep_all_checkpoints`` keeps everything."""
    sel = exp.cfg["selection"]
    if sel.get("keep_all_checkpoints"):
        return None

    def keep(saved: list[int]) -> set[int]:
        return {pick_step(sel, reward, variant, saved, read_jsonl(run_dir / "metrics.jsonl"))[0]}
    return keep


def select_checkpoint(exp: Experiment, reward: str, variant: str, run_dir: str | Path,
                      out_weights: str | Path, out_json: str | Path) -> dict:
    """Write the selected checkpoint's model tensors (:func:`marpipe.io.checkpoint.write_safetensors`)
    and a JSON naming the checkpoint relative to the run folder, with its sha256 and the weights'
    sha256, never an absolute path."""
    run_dir = Path(run_dir)
    step, rule, scores = choose_step(exp, reward, variant, run_dir)
    src = checkpoint_path(run_dir / "checkpoints", step)
    write_safetensors(out_weights, load_model_weights(src))
    info = {"step": step, "rule": rule, "checkpoint": src.relative_to(run_dir).as_posix(),
            "checkpoint_sha256": sha256_file(src), "weights_sha256": sha256_file(out_weights),
            "windowed_reward": scores}
    write_json(out_json, info)
    return info
