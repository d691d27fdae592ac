"""Prompt-set pins: every downloaded set is fixed to a commit and to the sha256 of its bytes,
and a changed file is refused with one error naming the set, both hashes and the key to fix."""
from __future__ import annotations

import copy
import hashlib
import io
import json
import re
from pathlib import Path

import pytest
import yaml

from marpipe import experiment
from marpipe import lock as L
from marpipe.io.files import read_prompt_set
from marpipe.stages import resources
from marpipe.stages.resources import HPS_STYLES, fetch_prompts

ROOT = Path(__file__).resolve().parents[2]
#: config.yaml with its lock applied (config.lock.yaml, once `marpipe lock` has written it)
RAW = L.apply(yaml.safe_load((ROOT / "config.yaml").read_text()), L.read(L.lock_path(ROOT / "config.yaml")))

#: a file at a 40-hex commit: raw GitHub, or a HF hub ``resolve/<commit>``
PINNED_URL = re.compile(r"^https://(raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/(?P<c1>[0-9a-f]{40})/"
                        r"|huggingface\.co/(datasets/)?[\w.-]+/[\w.-]+/resolve/(?P<c2>[0-9a-f]{40})/)\S+$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")

#: sets that cannot be pinned from here, with why (strict xfail while neither pinned nor locked)
UNPINNED = {"preference": "HPS v2 benchmark prompts exist only in the HF hub dataset zhwang/HPDv2 "
                          "(benchmark/<style>.json; no tgxs002/HPSv2 commit has them), which no machine "
                          "of this project could reach: `marpipe lock` on a machine with hub access pins them"}


def _url_files():
    """(set, config key of the pin, url, sha256) of every ``kind: url`` file in config.yaml."""
    out = []
    for name, spec in RAW["prompts"].items():
        if spec["kind"] != "url":
            continue
        if spec.get("format") == "hps_benchmark":
            out += [(name, f"prompts.{name}.styles.{s}", f["url"], f["sha256"]) for s, f in spec["styles"].items()]
        else:
            out.append((name, f"prompts.{name}", spec["url"], spec["sha256"]))
        out += [(name, f"prompts.{name}.complex_kinds.{k}", f["url"], f["sha256"])
                for k, f in (spec.get("complex_kinds") or {}).items()]
    return out


def _params():
    return [pytest.param(*f, id=f[1], marks=[pytest.mark.xfail(strict=True, reason=UNPINNED[f[0]])]
                         if f[0] in UNPINNED and not HEX64.match(str(f[3])) else []) for f in _url_files()]


@pytest.mark.parametrize("name,key,url,sha256", _params())
def test_every_url_prompt_file_is_pinned(name, key, url, sha256):
    m = PINNED_URL.match(url)
    assert m, f"{key}.url {url!r} is not pinned to a 40-hex commit"
    assert not re.search(r"/(main|master|refs/heads/[^/]+)/", url), f"{key}.url names a branch"
    assert isinstance(sha256, str) and HEX64.match(sha256), f"{key}.sha256 = {sha256!r} is not a 64-hex pin"


def test_the_sets_the_paper_needs_are_all_url_sets():
    files = _url_files()
    assert {f[0] for f in files} == {"train", "preference", "compbench_color", "compbench_shape", "compbench_texture",
                                     "compbench_2d_spatial", "compbench_3d_spatial", "compbench_numeracy",
                                     "compbench_complex"}
    assert [f[1] for f in files if f[0] == "preference"] == [f"prompts.preference.styles.{s}" for s in HPS_STYLES]
    commits = {PINNED_URL.match(f[2])["c1"] for f in files if f[0].startswith("compbench_")}
    assert len(commits) == 1                                # all T2I-CompBench files at one commit
    assert [f[1] for f in files if f[0] == "compbench_complex"][1:] == [
        "prompts.compbench_complex.complex_kinds.spatial", "prompts.compbench_complex.complex_kinds.action"]
    experiment.load(copy.deepcopy(RAW))                     # and the config still validates


def _exp(prompts: dict):
    raw = copy.deepcopy(RAW)
    raw["prompts"].update(prompts)
    return experiment.load(raw)


def test_txt_set_downloads_and_a_changed_file_is_refused(tmp_path):
    src = tmp_path / "color_val.txt"
    src.write_bytes(b"a red car\r\na blue bench\r\n\r\na green apple")        # CRLF, as the real files
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    spec = {"kind": "url", "format": "txt", "url": src.as_uri(), "sha256": good}
    out = tmp_path / "out" / "compbench_color.jsonl"
    fetch_prompts(_exp({"compbench_color": spec}), "compbench_color", out)
    assert [r["prompt"] for r in read_prompt_set(out)] == ["a red car", "a blue bench", "a green apple"]
    assert (tmp_path / "out" / "compbench_color.sha256").read_text() == good + "\n"

    src.write_bytes(b"a red car\r\na blue bench\r\n")                      # upstream changed
    got = hashlib.sha256(src.read_bytes()).hexdigest()
    out2 = tmp_path / "out2" / "compbench_color.jsonl"
    with pytest.raises(RuntimeError) as e:
        fetch_prompts(_exp({"compbench_color": spec}), "compbench_color", out2)
    msg = str(e.value)
    assert "'compbench_color'" in msg and got in msg and good in msg
    assert "prompts.compbench_color.sha256" in msg and "config.yaml" in msg
    assert msg.count(got) == 1 and msg.count(good) == 1
    assert not out2.exists() and not out2.with_suffix(".sha256").exists()


def test_an_unpinned_set_is_refused_naming_the_key_and_marpipe_lock(tmp_path):
    """No trust on first use: a set with neither a sha256 nor a lock entry is not downloaded."""
    src = tmp_path / "p.txt"
    src.write_text("a cat\n")
    out = tmp_path / "compbench_shape.jsonl"
    with pytest.raises(RuntimeError, match=r"prompt set 'compbench_shape': .* is not pinned: run `marpipe lock`.*"
                                           r"prompts\.compbench_shape\.sha256"):
        fetch_prompts(_exp({"compbench_shape": {"kind": "url", "format": "txt", "url": src.as_uri(), "sha256": None}}),
                      "compbench_shape", out)
    assert not out.exists()


def test_a_pinned_set_records_its_verified_hash(tmp_path):
    src = tmp_path / "p.txt"
    src.write_text("a cat\n")
    out = tmp_path / "compbench_shape.jsonl"
    sha = hashlib.sha256(b"a cat\n").hexdigest()
    fetch_prompts(_exp({"compbench_shape": {"kind": "url", "format": "txt", "url": src.as_uri(), "sha256": sha}}),
                  "compbench_shape", out)
    assert out.with_suffix(".sha256").read_text().strip() == sha


def test_hps_benchmark_one_pinned_file_per_style(tmp_path, monkeypatch):
    files = {s: json.dumps([f"{s} prompt {i}" for i in range(3)]).encode() for s in HPS_STYLES}
    base = "https://huggingface.co/datasets/zhwang/HPDv2/resolve/" + "0" * 40 + "/benchmark/"
    served = []

    def urlopen(url, timeout=None):
        served.append(url)
        return io.BytesIO(files[url[len(base):-len(".json")]])
    monkeypatch.setattr(resources.urllib.request, "urlopen", urlopen)
    styles = {s: {"url": f"{base}{s}.json", "sha256": hashlib.sha256(b).hexdigest()} for s, b in files.items()}
    out = tmp_path / "preference.jsonl"
    fetch_prompts(_exp({"preference": {"kind": "url", "format": "hps_benchmark", "styles": styles}}), "preference", out)
    rows = read_prompt_set(out)
    assert [r["metadata"]["style"] for r in rows] == [s for s in HPS_STYLES for _ in range(3)]
    assert rows[3]["prompt"] == "concept-art prompt 0" and served == [f"{base}{s}.json" for s in HPS_STYLES]
    for s in HPS_STYLES:
        assert (tmp_path / f"preference.{s}.sha256").read_text().strip() == styles[s]["sha256"]

    bad = copy.deepcopy(styles)
    bad["paintings"]["sha256"] = "f" * 64
    with pytest.raises(RuntimeError, match=r"prompt set 'preference': .*paintings\.json has sha256 "
                                           rf"{styles['paintings']['sha256']} but the pinned sha256 is f{{64}}.*"
                                           r"prompts\.preference\.styles\.paintings\.sha256"):
        fetch_prompts(_exp({"preference": {"kind": "url", "format": "hps_benchmark", "styles": bad}}), "preference",
                      tmp_path / "again.jsonl")
    files["photo"] = b'{"not": "a list"}'
    styles["photo"]["sha256"] = hashlib.sha256(files["photo"]).hexdigest()
    with pytest.raises(ValueError, match="photo file is not a JSON list"):
        fetch_prompts(_exp({"preference": {"kind": "url", "format": "hps_benchmark", "styles": styles}}), "preference",
                      tmp_path / "third.jsonl")


def test_download_failure_names_the_set_and_key(tmp_path):
    spec = {"kind": "url", "format": "txt", "url": (tmp_path / "absent.txt").as_uri(), "sha256": "0" * 64}
    with pytest.raises(RuntimeError, match=r"prompt set 'compbench_numeracy': cannot download .*absent\.txt.*"
                                           r"prompts\.compbench_numeracy\.url"):
        fetch_prompts(_exp({"compbench_numeracy": spec}), "compbench_numeracy", tmp_path / "n.jsonl")


def test_complex_prompts_get_their_3_in_1_kind(tmp_path):
    """``3_in_1.py``: a prompt (text before its first '.', lower-cased) listed in
    complex_val_spatial.txt -> "spatial", in complex_val_action.txt -> "action", else "both"."""
    files = {"complex_val.txt": b"The red hat was on top of the brown coat.\r\nA girl rides a bike. Fast\r\n"
                                b"a cat chased a dog on the left of a tree.",
             "spatial.txt": b"the red hat was on top of the brown coat.\r\n",
             "action.txt": b"A GIRL RIDES A BIKE.\r\n"}
    uri = {}
    for n, b in files.items():
        (tmp_path / n).write_bytes(b)
        uri[n] = {"url": (tmp_path / n).as_uri(), "sha256": hashlib.sha256(b).hexdigest()}
    spec = {"kind": "url", "format": "txt", **uri["complex_val.txt"],
            "complex_kinds": {"spatial": uri["spatial.txt"], "action": uri["action.txt"]}}
    out = tmp_path / "compbench_complex.jsonl"
    fetch_prompts(_exp({"compbench_complex": spec}), "compbench_complex", out)
    assert [r["metadata"]["complex_kind"] for r in read_prompt_set(out)] == ["spatial", "action", "both"]
    assert out.with_suffix(".action.sha256").read_text().strip() == uri["action.txt"]["sha256"]
    spec["complex_kinds"]["action"]["sha256"] = "0" * 64
    with pytest.raises(RuntimeError, match=r"'compbench_complex'.*prompts\.compbench_complex\.complex_kinds\.action\.sha256"):
        fetch_prompts(_exp({"compbench_complex": spec}), "compbench_complex", tmp_path / "again.jsonl")
