"""Broken configs, one class each: every one fails at load with one ConfigError naming the key
path (or file:line:column) and the fix, before anything is submitted."""
import copy

import pytest
import yaml

from marpipe import experiment as E
from marpipe.cli import main
from marpipe.config import ConfigError
from tests.pipeline_config import ROOT

SMALL = yaml.safe_load((ROOT / "config" / "small.yaml").read_text())
PAPER = yaml.safe_load((ROOT / "config.yaml").read_text())


def fails(cfg: dict, mutate) -> str:
    cfg = copy.deepcopy(cfg)
    mutate(cfg)
    with pytest.raises(ConfigError) as e:
        E.load(cfg)
    return str(e.value)


@pytest.mark.parametrize("mutate,message", [
    # per-model and per-variant overrides: the schema of `train`
    (lambda c: c["models"]["tiny-nova"].setdefault("train", {}).update(S=2.5),
     "config.models.tiny-nova.train.S = 2.5: 2.5 is not of type 'integer'"),
    (lambda c: c["models"]["tiny-nova"].setdefault("variants", {}).update(mte={"lr": "1e-4"}),
     "config.models.tiny-nova.variants.mte.lr = '1e-4': '1e-4' is not of type 'number'"),
    (lambda c: c["variants"]["sim"].update(tau="high"), "config.variants.sim.tau = 'high'"),
    (lambda c: c["variants"]["mte"].update(topk=0.3), "config.variants.mte.topk: unknown key"),
    # names: variants, scorers in evaluation columns
    (lambda c: c["models"]["tiny-nova"].setdefault("variants", {}).update(mtee={"lr": 1e-4}),
     "config.models.tiny-nova.variants.mtee: not a variant in config.variants"),
    (lambda c: c["evaluation"]["preference"]["metrics"]["HPS"].update(scorer="hpsv3"),
     "config.evaluation.preference.metrics.HPS.scorer = 'hpsv3': not a registered scorer"),
    (lambda c: c["selection"].update(best_of=["grpo", "fixdecoder"]),
     "config.selection.best_of: 'fixdecoder' is not in config.variants"),
    # cross-field rules
    (lambda c: c["selection"]["fixed_step"].update(hps=40),
     "config.selection.fixed_step.hps = 40: must be <= train.steps (16)"),
    (lambda c: c["selection"]["fixed_step"].update(hps=6),
     "config.selection.fixed_step.hps = 6: must be <= train.steps (16) and a multiple of train.save_every (4)"),
    (lambda c: c.update(device="cuad"), "config.device = 'cuad': expected cpu, cuda, cuda:N or mps"),
])
def test_small_config_breakage_names_the_key(mutate, message):
    assert message in fails(SMALL, mutate)


@pytest.mark.parametrize("revision", ["main", "2cd254a", "v1.0"])
def test_a_revision_that_is_not_a_full_commit_is_refused_at_parse_time(revision):
    msg = fails(PAPER, lambda c: c["models"]["nova"]["source"].update(revision=revision))
    assert f"config.models.nova.source.revision = {revision!r}: expected 40-hex commit hash" in msg


def test_duplicate_keys_and_syntax_errors_name_file_line_and_column(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("seed: 0\ntrain:\n  lr: 1.0e-4\nvariants: {}\ntrain:\n  steps: 4\n")
    with pytest.raises(ConfigError, match=rf"{dup}:5:1: duplicate key 'train' \(first at line 2"):
        E.read_config(dup)
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 0\ntrain: {lr: 1.0e-4\nsteps: 4\n")
    with pytest.raises(ConfigError, match=rf"{bad}:3:\d+: YAML syntax error"):
        E.read_config(bad)


def test_the_cli_reports_a_config_error_in_one_line_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config" / "small.yaml").read_text() + "\nseed: 1\n")
    assert main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "duplicate key 'seed'" in err[0] and "bad.yaml:" in err[0]
    assert main(["check-config", "--config", str(ROOT / "config" / "small.yaml")]) == 0
    assert "small.yaml: valid (2 models, 4 variants, 2 rewards: 12 training runs)" in capsys.readouterr().out



def test_check_config_names_the_downloads_a_run_would_refuse(capsys):
    """config.yaml is valid, but without its lock a real run refuses to start: check-config says so."""
    assert main(["check-config", "--config", str(ROOT / "config.yaml")]) == 1
    err = capsys.readouterr().err
    assert "models.nova.source.revision is not pinned" in err and "marpipe lock --config" in err


def test_both_shipped_configs_pass():
    E.load(ROOT / "config.yaml")
    E.load(ROOT / "config" / "small.yaml")
