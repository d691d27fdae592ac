"""A shrunk small-world config for end-to-end tests: the same keys as config/small.yaml,
with step counts and prompt counts cut so the whole DAG runs in a few minutes."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def shrunk_config() -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "small.yaml").read_text())
    for m in cfg["models"].values():
        m["source"].update(steps=30, batch_size=16)
        m["sampling"] = {"ar_steps": 4, "diffusion_steps": 5}
    cfg["weights"]["world_scorers"].update(steps=20, quality_steps=20)
    for name, p in cfg["prompts"].items():
        p["n"] = 40 if name == "train" else 4
    cfg["warmup"]["steps"] = 2
    cfg["train"].update(steps=4, save_every=2, prompts_per_step=2, group_size=2)
    cfg["selection"].update(fixed_step={"hps": 4, "mixed": 4}, window=2)
    cfg["evaluation"]["preference"]["images_per_prompt"] = 1
    cfg["evaluation"]["compbench"]["images_per_prompt"] = 1
    for check in cfg["scorer_check"]["checks"].values():     # a 20-step world CLIP: the check runs, any value
        check["ranges"] = {k: [0.0, 1.0] for k in check["ranges"]}
    cfg["experiment"] = "marpipe-test"
    return cfg


def write_shrunk_config(path: Path) -> Path:
    path.write_text(yaml.safe_dump(shrunk_config(), sort_keys=False))
    return path
