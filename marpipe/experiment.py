"""The experiment configuration: validation and the questions every rule asks.

One config file (``config.yaml`` for the paper, ``config/small.yaml`` for the
small world) describes the whole experiment. It is validated against
``workflow/schemas/config.schema.yaml`` (defaults filled in) and checked for
cross-references; every error names the key and the fix. The Snakefile and the
CLI both go through :func:`load`, so a bad config fails before any job starts.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from marpipe.config import FAMILIES, ConfigError, GRPOConfig

SCHEMA_PATH = Path(__file__).parent / "data" / "config.schema.yaml"
BASE = "base"                       # the untrained row of each model
SUITES = ("preference", "compbench")
ABLATION_KNOBS = ("top_k", "tau", "S")   # Fig. 7's three panels
# The variants the paper's tables report (marpipe.tables labels them: TABLE1_ROWS, TABLE2_ROWS).
# Table 1 compares +GRPO with Ours on every model; Table 2, the ablation, has all four variants, on the
# first model only (NOVA in the paper). So the first model trains every variant of `variants`, the
# others only Table 1's (Experiment.model_variants).
TABLE1_VARIANTS = ("grpo", "sim")
TABLE2_VARIANTS = ("grpo", "fix_decoder", "mte", "sim")


def split_variant(variant: str) -> tuple[str, dict[str, Any]]:
    """``"sim/top_k~0.1/tau~0.0/S~3"`` (an ablation point: a variant, then Paramspace's
    ``knob~value`` folders) -> ``("sim", {"top_k": 0.1, "tau": 0.0, "S": 3})``; a plain variant
    -> ``(variant, {})``."""
    name, *knobs = variant.split("/")
    overrides = {}
    for part in knobs:
        key, sep, value = part.partition("~")
        if not sep or key not in ABLATION_KNOBS:
            raise ConfigError(f"variant {variant!r}: {part!r} is not a knob~value of {', '.join(ABLATION_KNOBS)}")
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def row_id(reward: str | None, variant: str, seed: int | None = None) -> str:
    """The folder of a row's images and scores: ``base``, or ``{reward}-{variant}/seed{seed}``."""
    return BASE if reward is None else f"{reward}-{variant}/seed{seed}"


def parse_row_id(row: str) -> tuple[str | None, str, int | None]:
    """Inverse of :func:`row_id`: ``(reward, variant, seed)``; ``(None, "base", None)`` for the base."""
    if row == BASE:
        return None, BASE, None
    head, sep, seed = row.rpartition("/seed")
    if not sep or not seed.isdigit() or "-" not in head:
        raise ValueError(f"row {row!r}: expected 'base' or '<reward>-<variant>/seed<N>'")
    reward, variant = head.split("-", 1)
    return reward, variant, int(seed)


def _validator():
    import jsonschema
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)

    def set_defaults(validator, properties, instance, schema):
        for key, sub in properties.items():
            if isinstance(instance, dict) and "default" in sub and key not in instance:
                instance[key] = copy.deepcopy(sub["default"])
        yield from cls.VALIDATORS["properties"](validator, properties, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": set_defaults})(schema)


def _branch_error(err):
    """For a ``oneOf`` of tagged objects (``kind: hub | pretrain | ...``): the best error of the
    branch whose ``kind`` matches, instead of "'hub' is not 'pretrain'"."""
    import jsonschema
    branches = {}
    for e in err.context:
        branches.setdefault(e.relative_schema_path[0], []).append(e)
    tagged = [es for es in branches.values() if not any(e.relative_path and e.relative_path[0] == "kind" for e in es)]
    return jsonschema.exceptions.best_match(tagged[0]) if len(tagged) == 1 else err


def _describe(err) -> str:
    """One line for a ``jsonschema.ValidationError``: the key's path and what is wrong."""
    path = "config" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        known = ", ".join(sorted(err.schema.get("properties", {})))
        return f"{path}.{extra[0]}: unknown key (known keys: {known})"
    if err.validator == "required":
        return f"{path}: {err.message}"
    if err.validator == "pattern" and err.schema.get("description"):
        return f"{path} = {err.instance!r}: expected {err.schema['description']}"
    return f"{path} = {err.instance!r}: {err.message}"


class _StrictLoader(yaml.SafeLoader):
    """YAML with duplicate keys refused (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                m = key_node.start_mark
                raise ConfigError(f"{m.name}:{m.line + 1}:{m.column + 1}: duplicate key {key!r} (first at line "
                                  f"{seen[key] + 1}; YAML keeps only the last one: merge the two)")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping)


def read_config(path: str | Path) -> dict:
    """A config file as a dict: YAML syntax errors and duplicate keys name the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (use config.yaml or config/small.yaml)")
    try:
        with path.open() as f:                     # a stream: marks carry the file's name
            raw = yaml.load(f, Loader=_StrictLoader) or {}
    except yaml.MarkedYAMLError as e:
        m = e.problem_mark or e.context_mark
        where = f"{path}:{m.line + 1}:{m.column + 1}" if m else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {e.problem or e.context} (check the indentation "
                          f"and quoting there)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(raw).__name__}")
    return raw


def validate(raw: dict) -> dict:
    """Schema-validate ``raw`` (a copy; defaults filled in) and check cross-references."""
    import jsonschema
    cfg = copy.deepcopy(raw)
    errors = sorted(_validator().iter_errors(cfg), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        best = jsonschema.exceptions.best_match(_branch_error(e) if e.validator == "oneOf" and e.context else e
                                                for e in errors)
        raise ConfigError(f"{_describe(best)} (keys, types, ranges: workflow/schemas/config.schema.yaml)")
    _check_references(cfg)
    return cfg


def _check_references(cfg: dict) -> None:
    def need(cond, msg):
        if not cond:
            raise ConfigError(msg)
    from marpipe.rewards import available_rewards
    registered = set(available_rewards())
    ev = cfg["evaluation"]
    known = ", ".join(sorted(registered))
    uses = {f"config.scorers.{s}": s for s in cfg.get("scorers", {})}
    uses |= {f"config.evaluation.preference.metrics.{col}.scorer": m["scorer"]
             for col, m in ev["preference"]["metrics"].items()}
    uses |= {f"config.evaluation.compbench.categories.{col}.scorer": c["scorer"]
             for col, c in ev["compbench"]["categories"].items()}
    for key, scorer in uses.items():
        need(scorer in registered, f"{key} = {scorer!r}: not a registered scorer; known: {known}")
    for name, kwargs in cfg.get("scorers", {}).items():
        w = kwargs.get("weights")
        for ref in ([] if w is None else [w] if isinstance(w, str) else list(w.values())):
            need(ref in cfg["weights"], f"config.scorers.{name}.weights: {ref!r} is not an entry of config.weights")
    for reward, parts in cfg["rewards"].items():
        for scorer in parts:
            need(scorer in cfg["scorers"], f"config.rewards.{reward}.{scorer}: not a scorer in config.scorers")
    need(cfg["warmup"]["reward"] in cfg["rewards"],
         f"config.warmup.reward = {cfg['warmup']['reward']!r}: not in config.rewards")
    for suite in SUITES:
        r = ev[suite]["reward"]
        need(r in cfg["rewards"], f"config.evaluation.{suite}.reward = {r!r}: not in config.rewards")
    need(ev["preference"]["prompts"] in cfg["prompts"],
         f"config.evaluation.preference.prompts = {ev['preference']['prompts']!r}: not in config.prompts")
    for col, spec in ev["compbench"]["categories"].items():
        need(spec["prompts"] in cfg["prompts"],
             f"config.evaluation.compbench.categories.{col}.prompts = {spec['prompts']!r}: not in config.prompts")
    for reward in {ev[s]["reward"] for s in SUITES}:
        need(reward in cfg["selection"]["fixed_step"],
             f"config.selection.fixed_step: no step for reward {reward!r}")
    for v in cfg["selection"]["best_of"]:
        need(v in cfg["variants"], f"config.selection.best_of: {v!r} is not in config.variants")
    for model, m in cfg["models"].items():
        need("image_size" not in m.get("sampling", {}) or m.get("adapter") == "harmon",
             f"config.models.{model}.sampling.image_size: only a Harmon model's generation size is a setting "
             f"(adapter {m.get('adapter', 'tiny')}: its model config fixes the size); remove the key")
        for v in m.get("variants", {}):
            need(v in cfg["variants"], f"config.models.{model}.variants.{v}: not a variant in config.variants "
                                       f"({', '.join(cfg['variants'])}); an override of an unknown row is never used")
    first = next(iter(cfg["models"]))
    need(cfg["models"][first].get("all_variants") is not False,
         f"config.models.{first}.all_variants = false: the first model fills Table 2 (the ablation) and trains "
         f"every variant; remove the key")
    exp = Experiment(cfg)
    for model in cfg["models"]:          # the fixed step is a checkpoint of every run that is selected from
        for reward in exp.trained_rewards:
            fixed = cfg["selection"]["fixed_step"][reward]
            for variant in [v for v in cfg["selection"]["best_of"] if v in exp.model_variants(model)]:
                t = exp.train_config(model, reward, variant)
                need(fixed <= t.steps and fixed % t.save_every == 0,
                     f"config.selection.fixed_step.{reward} = {fixed}: must be <= train.steps ({t.steps}) and a "
                     f"multiple of train.save_every ({t.save_every}) for models.{model} x variants.{variant}, so "
                     f"the fixed rows train no longer than the rows selected by training reward")
    for model in cfg["models"]:          # every run must resolve to a valid GRPOConfig
        for variant in exp.model_variants(model):
            for reward in exp.trained_rewards:
                exp.train_config(model, reward, variant)
        if exp.has_warmup(model):
            exp.warmup_config(model)
    for model, m in cfg["models"].items():
        trained = exp.model_variants(model)
        for v in m.get("variants", {}):
            need(v in trained, f"config.models.{model}.variants.{v}: {model} trains only {', '.join(trained)} "
                               f"(Table 1's variants; Table 2, the ablation, is on the first model, {first}), so "
                               f"this override is never used; remove it, or set config.models.{model}.all_variants: "
                               f"true")
    a = cfg.get("ablations") or {}
    for key, known in (("model", cfg["models"]), ("reward", exp.trained_rewards), ("variant", cfg["variants"])):
        need(a.get(key) is None or a[key] in known,
             f"config.ablations.{key} = {a.get(key)!r}: not one of {', '.join(known)}")
    for name in exp.ablation_variants():     # every point of the sweep must be a valid run
        try:
            exp.train_config(exp.ablation["model"], exp.ablation["reward"], name)
        except ConfigError as e:
            raise ConfigError(f"config.ablations.grid: the point {name!r} is not a valid run: {e}") from None


def load(path_or_dict: str | Path | dict, cache: str | Path | None = None) -> Experiment:
    """Validate a config (file or dict). With ``cache`` (a folder), a config already validated
    against the same schema and scorer registry is read back instead of validated again
    (the Snakefile parses the config on every invocation; validation is most of a dry run's
    own time)."""
    if isinstance(path_or_dict, dict):
        raw = path_or_dict
    else:
        path = Path(path_or_dict)
        raw = read_config(path)
    if cache is None:
        return Experiment(validate(raw))
    from marpipe.rewards import available_rewards
    key = hashlib.sha256("\n".join([json.dumps(raw, sort_keys=True, default=str), SCHEMA_PATH.read_text(),
                                     ",".join(sorted(available_rewards()))]).encode()).hexdigest()[:16]
    hit = Path(cache) / f"{key}.json"
    if hit.exists():
        return Experiment(json.loads(hit.read_text()))
    cfg = validate(raw)
    from marpipe.io.files import atomic_write_bytes
    atomic_write_bytes(hit, json.dumps(cfg).encode())   # key order kept (models, variants)
    return Experiment(cfg)


@dataclass(frozen=True)
class Row:
    """One row of the results: a model, a reward it was trained with (None for the base), a variant
    and the training seed (None for the base). A table row aggregates a row's seeds."""
    model: str
    reward: str | None
    variant: str
    seed: int | None = None

    @property
    def name(self) -> str:
        """The table row: ``base`` or ``{reward}-{variant}`` (all seeds)."""
        return BASE if self.reward is None else f"{self.reward}-{self.variant}"

    @property
    def id(self) -> str:
        """One run's images and scores: ``base`` or ``{reward}-{variant}/seed{seed}``."""
        return row_id(self.reward, self.variant, self.seed)


class Experiment:
    def __init__(self, cfg: dict):
        self.cfg = cfg

    # --- identity -----------------------------------------------------------------
    @cached_property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.cfg, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def models(self) -> list[str]:
        return list(self.cfg["models"])

    @property
    def variants(self) -> list[str]:
        return list(self.cfg["variants"])

    @property
    def seeds(self) -> list[int]:
        """Training seeds (``seeds:``; default ``[seed]``): each (model, reward, variant, seed) is a run."""
        return list(self.cfg.get("seeds") or [self.cfg["seed"]])

    @property
    def trained_rewards(self) -> list[str]:
        """Rewards used for training: those of the two evaluation suites."""
        ev = self.cfg["evaluation"]
        return list(dict.fromkeys(ev[s]["reward"] for s in SUITES))

    def has_warmup(self, model: str) -> bool:
        return bool(self.cfg["models"][model].get("warmup"))

    def adapter(self, model: str) -> str:
        """How the model is loaded: ``nova`` or ``harmon`` (the official code, in its own environment),
        or ``tiny`` (the package's own models; the default)."""
        return self.cfg["models"][model].get("adapter", "tiny")

    def model_family(self, model: str) -> str | None:
        """``nova`` | ``harmon``: the model's adapter, or a tiny model's preset (``tiny-nova``); it
        picks the reference trainer that ``train.preset: reference`` follows."""
        m = self.cfg["models"][model]
        if m.get("adapter") in FAMILIES:
            return m["adapter"]
        preset = m["source"].get("preset", "")
        return preset.removeprefix("tiny-") if preset.removeprefix("tiny-") in FAMILIES else None

    # --- training -------------------------------------------------------------------
    def _merged_train(self, model: str, variant: str | None) -> dict:
        m = self.cfg["models"][model]
        d = {**self.cfg["train"], **m.get("train", {})}
        if variant is not None:
            variant, knobs = split_variant(variant)
            d.update(self.cfg["variants"][variant])
            d.update(m.get("variants", {}).get(variant, {}))
            d.update(knobs)
        return d

    def train_config(self, model: str, reward: str, variant: str, seed: int | None = None) -> GRPOConfig:
        """The resolved training config of one run; ``variant`` may be an ablation point
        (:func:`split_variant`); ``seed``: the run's training seed (default: ``train.seed``, else ``seed``)."""
        d = self._merged_train(model, variant)
        d["reward"] = reward
        if seed is not None:
            d["seed"] = seed
        d.setdefault("seed", self.cfg["seed"])
        d["model_family"] = self.model_family(model)
        if split_variant(variant)[0] not in self.cfg["selection"]["best_of"]:
            d["steps"] = self.cfg["selection"]["fixed_step"][reward]   # fixed in advance: train to it
        try:
            return GRPOConfig.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"models.{model} x variants.{variant}: {e}") from None

    def warmup_config(self, model: str) -> GRPOConfig:
        w = self.cfg["warmup"]
        d = self._merged_train(model, None)
        d.update(trainable="head", fix_decoder=False, mte=False, sim=False, lr=w["lr"], steps=w["steps"],
                 reward=w["reward"], save_every=min(d.get("save_every", 50), w["steps"]))
        d.setdefault("seed", self.cfg["seed"])
        d["model_family"] = self.model_family(model)
        try:
            return GRPOConfig.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"models.{model} warm-up: {e}") from None

    # --- rows, suites and files ---------------------------------------------------------
    def model_variants(self, model: str) -> list[str]:
        """The variants ``model`` trains, in config order: every one of ``variants`` for the first
        model (Table 2, the ablation, is on it: NOVA in the paper) and for a model with
        ``all_variants: true``; Table 1's (:data:`TABLE1_VARIANTS`: grpo, sim) for the others. A config
        whose ``variants`` lack one of Table 1's is not laid out as the tables are: every model then
        trains every variant (the figures show them; the tables' missing rows stay empty)."""
        if (model == self.models[0] or self.cfg["models"][model].get("all_variants")
                or not set(TABLE1_VARIANTS) <= set(self.variants)):
            return self.variants
        return [v for v in self.variants if v in TABLE1_VARIANTS]

    def rows(self, model: str) -> list[Row]:
        """The base row and one row per (reward, variant the model trains, seed)."""
        return [Row(model, None, BASE)] + [Row(model, r, v, s) for r in self.trained_rewards
                                           for v in self.model_variants(model) for s in self.seeds]

    def runs(self) -> list[Row]:
        """Every training run of Tables 1-2, (model, reward, variant, seed): the rows but the base ones."""
        return [row for m in self.models for row in self.rows(m) if row.reward is not None]

    # --- Fig. 7: the ablation sweeps ---------------------------------------------------------
    @property
    def ablation(self) -> dict | None:
        """``ablations:`` resolved: model (default the first), reward (default the preference
        suite's), variant (default the last, the full method) and grid; None without a grid."""
        a = self.cfg.get("ablations") or {}
        if not a.get("grid"):
            return None
        return {"model": a.get("model") or self.models[0],
                "reward": a.get("reward") or self.cfg["evaluation"]["preference"]["reward"],
                "variant": a.get("variant") or self.variants[-1], "grid": a["grid"]}

    def ablation_centre(self) -> dict[str, Any]:
        """The ablated variant's own knob values (the centre of the sweep: its Table 2 run)."""
        a = self.ablation
        own = self.train_config(a["model"], a["reward"], a["variant"]).to_dict()
        return {k: own[k] for k in ABLATION_KNOBS}

    def ablation_frame(self):
        """The sweep as a table (pandas), one knob at a time, the others at the variant's own value
        (as Fig. 7's panels): a column per knob of :data:`ABLATION_KNOBS`, a row per run. The centre
        itself is not a row: it is the variant's own run of Tables 1-2. For Snakemake's ``Paramspace``."""
        import pandas as pd
        a = self.ablation
        if a is None:
            return pd.DataFrame(columns=list(ABLATION_KNOBS))
        centre = self.ablation_centre()
        rows = [{**centre, knob: v} for knob in ABLATION_KNOBS for v in a["grid"].get(knob, []) if v != centre[knob]]
        frame = pd.DataFrame(rows, columns=list(ABLATION_KNOBS)).drop_duplicates(ignore_index=True)
        return frame.astype({"top_k": float, "tau": float, "S": int})

    def ablation_variants(self) -> list[str]:
        """The sweep's runs as variant names, ``{variant}/top_k~0.1/tau~0.0/S~3`` (the folders
        Snakemake's ``Paramspace`` makes of :meth:`ablation_frame`)."""
        if self.ablation is None:
            return []
        return [self.ablation["variant"] + "/" + "/".join(f"{k}~{v}" for k, v in point._asdict().items())
                for point in self.ablation_frame().itertuples(index=False)]

    def suite_rows(self, suite: str) -> list[Row]:
        reward = self.cfg["evaluation"][suite]["reward"]
        return [row for m in self.models for row in self.rows(m) if row.reward in (None, reward)]

    def suite_prompt_sets(self, suite: str) -> dict[str, str]:
        """column -> prompt set (preference: one set for all columns)."""
        ev = self.cfg["evaluation"][suite]
        if suite == "preference":
            return {col: ev["prompts"] for col in ev["metrics"]}
        return {col: spec["prompts"] for col, spec in ev["categories"].items()}

    def columns(self, suite: str) -> list[str]:
        ev = self.cfg["evaluation"][suite]
        return list(ev["metrics"] if suite == "preference" else ev["categories"])

    def trained_columns(self, suite: str) -> list[str]:
        """The suite's columns that score what its rows were trained for: the preference metrics
        scored by a scorer of the suite's reward (HPS), every CompBench category (the mixed reward
        trains compositional alignment, which CompBench scores)."""
        if suite != "preference":
            return self.columns(suite)
        ev = self.cfg["evaluation"][suite]
        parts = set(self.reward_scorers(ev["reward"]))
        return [c for c, spec in ev["metrics"].items() if spec["scorer"] in parts]

    def _weights_kwargs(self, scorer: str) -> dict[str, str]:
        """``weights: NAME`` -> ``{weights_dir: NAME}``; ``weights: {kwarg: NAME}`` as given."""
        w = self.cfg["scorers"].get(scorer, {}).get("weights")
        return {} if w is None else ({"weights_dir": w} if isinstance(w, str) else dict(w))

    def scorer_kwargs(self, scorer: str, resources: str | Path = "resources") -> dict:
        kwargs = {k: v for k, v in self.cfg["scorers"].get(scorer, {}).items() if k != "weights"}
        for kwarg, name in self._weights_kwargs(scorer).items():
            kwargs[kwarg] = str(Path(resources) / "metrics" / name)
        return kwargs

    def weights_for(self, scorers) -> list[str]:
        return sorted({n for s in scorers for n in self._weights_kwargs(s).values()})

    def reward_scorers(self, reward: str) -> list[str]:
        return list(self.cfg["rewards"][reward])

    def suite_scorers(self, suite: str) -> list[str]:
        ev = self.cfg["evaluation"][suite]
        specs = ev["metrics"].values() if suite == "preference" else ev["categories"].values()
        return sorted({s["scorer"] for s in specs})

    def build_reward(self, reward: str, resources: str | Path = "resources", device=None):
        from marpipe.rewards import build_reward, combine
        parts = self.cfg["rewards"][reward]
        fns = {s: build_reward(s, device=device, **self.scorer_kwargs(s, resources)) for s in parts}
        return combine(fns, parts)

    def label(self, model: str) -> str:
        return self.cfg["models"][model]["label"]

    def to_json(self) -> dict[str, Any]:
        return copy.deepcopy(self.cfg)
