"""Every command of the README, docs/ and config/README.md runs verbatim in the tests: here when it takes
seconds (a make target as `make -n`), else where a declared test, .ci/run stage or rule runs it; one that
cannot run on a 2-core CPU machine in seconds (a GPU, the real models, minutes) is parsed here by marpipe's
own parser and names the test that runs its code path at a small size. The docs are read when the tests are
collected, so a command added to a fenced shell block, or a code span that starts like a command, fails
until it is covered (docs/development.md, "Tests")."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline.test_audit import README_COMMANDS, readme_audit_blocks, readme_command

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
THIS = Path(__file__).relative_to(ROOT).as_posix()
SHELL_FENCES = ("bash", "sh", "console", "shell")
COMMAND_SPANS = ("make ", "marpipe ", "snakemake ", ".venv/bin/", "python -m ", "dvc ", ".ci/")

#: what a placeholder of the docs stands for; substituting them is the only change made to a command
PLACEHOLDERS = {
    "FILE": "config/small.yaml",
    "DIR": "resources/models/tiny-nova",
    "<command>": "check-config",
    "<url>": "../dvc-remote",             # tests/infra/test_pipeline_slurm.py: its DVC remote
    "<repo>": ".",                        # ... and its repository
}

#: run here, verbatim, in a copy of the checkout (`make ...` commands run as `make -n ...`, each of them)
HERE = (
    "marpipe --help",
    "marpipe <command> --help",
    "marpipe bench --help",
    "marpipe bench warmup --help",
    "marpipe check-config --config FILE",
    "marpipe check-model tiny-harmon",
    "marpipe bench memory",
    "marpipe verdicts study study-2threads study-seeds",   # on three runs' verdicts files (checkout)
    "snakemake -n",
    "snakemake --rulegraph",
    "snakemake all -n --configfile config.yaml",
    "snakemake all -n --profile local --configfile config/small.yaml",
    "snakemake all -n --configfile config/small.yaml config/study.yaml",
    "source .venv/bin/activate",
    "python -m testbed.metrics --json",
)

#: run verbatim elsewhere: a file whose text holds the command (the test or .ci/run stage that runs it,
#: or a rule of the DAG those run); `make <target>`: that target's dry run and the module it runs with
#: `python -m`; "here": a command of HERE that it begins. A file that reads the docs' own lines with a
#: function of READERS holds those lines.
AUDIT = "tests/infra/test_pipeline_slurm.py"
ELSEWHERE = {
    ".venv/bin/marpipe lock --config config.yaml": "make rehearse",
    ".venv/bin/marpipe preflight --profile slurm --configfile config.yaml": "make rehearse",
    ".venv/bin/snakemake --profile slurm all --configfile config.yaml": "make rehearse",
    ".venv/bin/snakemake --report report.html --configfile config.yaml": "make rehearse",
    "marpipe lock": "make rehearse",
    "marpipe preflight": "make rehearse",
    "marpipe demo": "make demo",
    "marpipe demo --cores 2 --config config/small.yaml config/study.yaml": "make study",
    ".ci/cluster.sh up": ".ci/run",
    ".ci/run": ".ci/run",
    "dvc remote add -f -d marpipe <url>": AUDIT,
    "git add .dvc/config resources.dvc results/*.dvc": AUDIT,
    'git commit -m "results: <what ran>"': AUDIT,
    "git clone <repo> marpipe-audit": AUDIT,
    "cd marpipe-audit": AUDIT,
    "dvc pull": AUDIT,
    "marpipe tables --config config/small.yaml --scores results/scores --out-dir tables-check": AUDIT,
    "diff -r results/tables tables-check": AUDIT,
    "snakemake all --touch --no-hooks --configfile config/small.yaml": AUDIT,
    "snakemake all -n --configfile config/small.yaml": AUDIT,
    "snakemake --report report.html --configfile config/small.yaml": AUDIT,
    "marpipe tables --config config/small.yaml --from-mlflow --out-dir tables-from-mlflow": AUDIT,
    "dvc pull results/scores.dvc results/tables.dvc": AUDIT,
    "marpipe tables": "workflow/rules/report.smk",
    "marpipe ablations": "workflow/rules/report.smk",
    "marpipe mlflow-sync": "workflow/rules/report.smk",
    "marpipe check-scorer": "workflow/rules/scorers.smk",
    "marpipe bench grad-noise": "workflow/rules/report.smk",
    "marpipe check-model": "here",
    "marpipe verdicts": "here",
    "python -m testbed.hub build .marpipe/hub": "tests/testbed/test_local_hub.py",
    "python -m testbed.hub serve .marpipe/hub": "tests/testbed/test_local_hub.py",
    "python -m testbed.hub pins .marpipe/hub --check config/rehearsal.yaml": "tests/testbed/test_local_hub.py",
}
READERS = {"readme_audit_blocks": lambda: "\n".join(sum(readme_audit_blocks(), [])),
           "readme_command": lambda: "\n".join(map(readme_command, README_COMMANDS))}
#: the rehearsal's CLUSTER_COMMANDS name the config `{config}`; the README's is config.yaml
TEMPLATES = {"{config}": "config.yaml"}

#: too slow for here (a GPU, the real or the demo's models, or minutes on 2 CPU cores): marpipe's parser takes the exact
#: argv (placeholders substituted; parsing runs nothing), so a renamed or removed option, kind or choice
#: fails, and so does a model that is no spec form `load_model` reads; the test named (file::function)
#: runs the same code path at a small size
BENCH = "tests/bench/test_bench.py::test_"
TRAIN_STEP = BENCH + "train_step_bench_takes_a_model_spec"
WARMUP = BENCH + "warmup_bench_measures_each_model_before_and_after_a_head_only_warmup"
REWARD_RISE = "tests/core/test_presets.py::test_reward_rise_bench_takes_the_preset_and_reports_kl_and_gradient_curves"
ROLLOUT = "tests/bench/test_bench.py::test_rollout_bench_counts_the_head_work_the_cost_model_predicts"
PARSED = {
    "marpipe bench train-step": TRAIN_STEP,
    "marpipe bench train-step --json --models tiny-nova": TRAIN_STEP,
    "marpipe bench train-step --models nova:DIR harmon:DIR": TRAIN_STEP,
    "marpipe bench train-step --preset paper": TRAIN_STEP,
    "marpipe bench reward-rise": BENCH + "reward_rise_reports_every_variant_and_seed",
    "marpipe bench reward-rise --json": REWARD_RISE,
    "marpipe bench reward-rise --preset paper": REWARD_RISE,
    "marpipe bench warmup": WARMUP,
    "marpipe bench warmup --steps 40 --lr 3e-4": WARMUP,
    "marpipe bench rollout --json": ROLLOUT,
    "marpipe bench gpu --size real": "tests/bench/test_bench_gpu.py::test_real_nova_path_at_small_size",
    "marpipe bench metrics --size real --device cuda --json":
        "tests/bench/test_bench_metrics.py::test_real_size_path_runs_on_cpu_for_the_smallest_model",
}
#: the option of a bench kind that takes a model spec (marpipe.bench.commands.SPEC)
SPEC_OPTIONS = {"train-step": "models", "rollout": "models", "reward-rise": "model", "grad-noise": "model"}

#: not run verbatim by any test yet: each an expected failure, naming what has to change and where
PENDING: dict[str, str] = {}


# --- the docs' commands -------------------------------------------------------------------------------
def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "config" / "README.md"]


FENCE = re.compile(r"^[ \t]*```[ \t]*(\w*)[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)


def doc_commands(path: Path) -> list[tuple[int, str]]:
    """(line, command) of every command in a Markdown file: each line of its fenced shell blocks (a
    `# comment` and a `$ ` prompt stripped, `\\` continuations joined; of a console block, the lines
    after a prompt) and each code span of its prose that starts like a command; `a && b` are two."""
    text = path.read_text()
    lineno = lambda pos: text.count("\n", 0, pos) + 1
    found = []
    for block in FENCE.finditer(text):
        if block.group(1) not in SHELL_FENCES:
            continue
        first, pending = lineno(block.start(2)), None
        for i, raw in enumerate(block.group(2).splitlines()):
            if block.group(1) == "console" and not pending and not raw.startswith("$ "):
                continue                                   # a console block's output
            line = re.sub(r"(^|\s)#.*$", "", raw).strip().removeprefix("$ ")
            if pending:
                line = f"{pending[1]} {line}"
            start = pending[0] if pending else first + i
            pending = (start, line.removesuffix("\\").strip()) if line.endswith("\\") else None
            if line and not pending:
                found += [(start, c) for c in split_and(line)]
    prose = FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    for span in re.finditer(r"`([^`\n]+(?:\n[^`\n]+)?)`", prose):
        command = " ".join(span.group(1).split())
        if command.startswith(COMMAND_SPANS):
            found += [(lineno(span.start()), c) for c in split_and(command)]
    return sorted(found)


def split_and(line: str) -> list[str]:
    return [c.strip() for c in line.split(" && ") if c.strip()]


def substitute(text: str) -> str:
    for name, value in PLACEHOLDERS.items():
        text = re.sub(rf"(?<![\w/.-]){re.escape(name)}(?![\w/.-])" if name.isalnum() else re.escape(name),
                      value, text)
    return text


def normalized(text: str) -> str:
    """Shell text with `\\` continuations joined and runs of white space made one blank."""
    return " ".join(text.replace("\\\n", " ").split())


def all_doc_commands() -> list[tuple[str, int, str]]:
    return [(p.relative_to(ROOT).as_posix(), line, cmd) for p in doc_files() for line, cmd in doc_commands(p)]


# --- running them ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the working tree (tracked and unignored files, the project venv linked in) and three runs'
    verdicts files (study/, study-2threads/, study-seeds/): the commands run there, so nothing in the
    checkout changes."""
    copy = tmp_path_factory.mktemp("docs") / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        if (ROOT / f).is_file():
            (copy / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, copy / f)
    (copy / ".venv").symlink_to(BIN.parent, target_is_directory=True)
    verdicts = ("table,base,claim,a,b,column,paper_diff,ours_diff,lo,hi,verdict,n_prompts,note\n"
                "table1,NOVA,Ours > +GRPO,Ours,+GRPO,HPS,1.78,2.0,-0.5,3.5,inconclusive,48,\n")
    for run in ("study", "study-2threads", "study-seeds"):
        (copy / run / "results" / "tables").mkdir(parents=True)
        (copy / run / "results" / "tables" / "verdicts_vs_paper.csv").write_text(verdicts)
    return copy


def sh(command: str | list[str], cwd: Path) -> subprocess.CompletedProcess:
    # one torch thread: more threads than the 2 cores other tests share made check-model 7x slower
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    args = ["bash", "-c", command] if isinstance(command, str) else command
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def make_dry_run(command: str, cwd: Path) -> str:
    """`make -n` with the command's targets and variables; each variable must be one the Makefile uses,
    and its value must reach the commands make prints."""
    args = shlex.split(command)[1:]
    r = sh(["make", "-n", *args], cwd)
    assert r.returncode == 0, f"`make -n {' '.join(args)}` failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    makefile, printed = (cwd / "Makefile").read_text(), normalized(r.stdout)
    for name, value in (a.split("=", 1) for a in args if "=" in a):
        assert f"$({name})" in makefile, f"the Makefile uses no variable {name}"
        assert value in printed, f"{name}={value} reaches no command of `make -n {' '.join(args)}`"
    return r.stdout


def haystack(where: str, cwd: Path) -> str:
    """The text a command of ELSEWHERE must occur in."""
    if where.startswith("make "):
        printed = make_dry_run(where, cwd)
        modules = re.findall(r"-m ([\w.]+)", printed)
        sources = [(ROOT / Path(*m.split("."))).with_suffix(".py") for m in modules]
        text = printed + "\n".join(p.read_text() for p in sources if p.is_file())
    else:
        assert (ROOT / where).is_file(), f"ELSEWHERE names {where}, which does not exist"
        text = (ROOT / where).read_text()
        text += "\n".join(read() for name, read in READERS.items() if name in text)
    for name, value in TEMPLATES.items():
        text = text.replace(name, value)
    return substitute(normalized(text))


def check(doc: str, line: int, command: str, cwd: Path) -> None:
    """The command runs here, or ELSEWHERE's place holds it verbatim; else fail naming doc:line."""
    at = f"{doc}:{line}: `{command}`"
    if command.startswith("make "):
        make_dry_run(command, cwd)
    elif command in HERE:
        r = sh(substitute(command), cwd)
        assert r.returncode == 0, f"{at} failed here ({r.returncode}):\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    elif ELSEWHERE.get(command) == "here":
        assert any(c.startswith(command + " ") for c in HERE), f"{at}: no command of HERE begins with it"
    elif command in ELSEWHERE:
        assert substitute(command) in haystack(ELSEWHERE[command], cwd), (
            f"{at} does not occur verbatim in {ELSEWHERE[command]}, which ELSEWHERE says runs it")
    elif command in PARSED:
        parse(at, command)
    else:
        pytest.fail(f"{at} is run by no test: run it in {THIS} (HERE), or name the test or .ci/run stage that "
                    f"runs it as written (ELSEWHERE)")


def parse(at: str, command: str) -> None:
    """PARSED: marpipe's parser takes the argv, its model specs have a form `load_model` reads, and the test
    named exists."""
    from marpipe.cli import build_parser
    from marpipe.models.registry import FAMILIES, TINY
    argv = shlex.split(substitute(command))
    assert argv[0] == "marpipe", f"{at}: PARSED holds marpipe commands only"
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{at}: marpipe's parser refuses it (its error above)")
    specs = getattr(args, SPEC_OPTIONS.get(getattr(args, "kind", None), ""), None) or []
    for spec in [specs] if isinstance(specs, str) else specs:
        assert spec in TINY or spec.endswith(".safetensors") or spec.partition(":")[0] in FAMILIES, (
            f"{at}: {spec!r} is no model spec form")
    path, _, function = PARSED[command].partition("::")
    assert (ROOT / path).is_file() and re.search(rf"^def {function}\(", (ROOT / path).read_text(), re.M), (
        f"{at}: PARSED names {PARSED[command]}, which does not exist")


def cases() -> list:
    return [pytest.param(doc, line, command, id=f"{doc}:{line}",
                         marks=[pytest.mark.xfail(strict=True, reason=PENDING[command])] if command in PENDING else [])
            for doc, line, command in all_doc_commands()]


@pytest.mark.parametrize("doc,line,command", cases())
def test_every_doc_command_runs_verbatim(doc, line, command, checkout):
    check(doc, line, command, checkout)


def test_the_tables_name_only_commands_the_docs_hold():
    commands = {c for _, _, c in all_doc_commands()}
    stale = [c for c in (*HERE, *ELSEWHERE, *PARSED, *PENDING) if c not in commands]
    assert not stale, f"no doc holds these commands any more; remove them from {THIS}: {stale}"


def test_the_dry_runs_schedule_the_jobs_docs_pipeline_md_states(checkout):
    """docs/pipeline.md's "Dry runs": each count, the target rule `all` not counted, is snakemake's."""
    text = " ".join((ROOT / "docs" / "pipeline.md").read_text().split())
    stated = re.findall(r"(\d+)(?: jobs)? \(`(snakemake all -n [^`]+)`", text)
    assert len(stated) == 3, f"docs/pipeline.md: expected the paper's, the demo's and the study's, found {stated}"
    for count, command in stated:
        r = sh(command, checkout)
        totals = re.findall(r"^total\s+(\d+)$", r.stdout, re.M)
        assert r.returncode == 0 and totals, f"`{command}` failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
        assert int(totals[-1]) - 1 == int(count), f"`{command}` schedules {int(totals[-1]) - 1} jobs, the doc {count}"


def test_commands_are_read_from_blocks_spans_and_continuations(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("Run `make demo`, then `marpipe frobnicate\n--now`, not `results/`:\n\n```bash\n"
                   "snakemake all \\\n  -n   # a dry run\n$ .ci/cluster.sh up && make rehearse\n```\n\n"
                   "```python\nmarpipe ignored\n```\n\n```console\n$ marpipe --help\nusage: marpipe\n```\n")
    assert doc_commands(doc) == [(1, "make demo"), (1, "marpipe frobnicate --now"), (5, "snakemake all -n"),
                                 (7, ".ci/cluster.sh up"), (7, "make rehearse"), (15, "marpipe --help")]
    with pytest.raises(pytest.fail.Exception, match=r"doc\.md:1: `marpipe frobnicate --now` is run by no test"):
        check("doc.md", 1, "marpipe frobnicate --now", tmp_path)


@pytest.mark.parametrize("command,test,error", [
    ("marpipe bench train-step --no-such-option", TRAIN_STEP, "marpipe's parser refuses it"),
    ("marpipe bench train-step --models nova=DIR", TRAIN_STEP, "'nova=resources/models/tiny-nova' is no model spec"),
    ("marpipe bench train-step", TRAIN_STEP + "_renamed", "which does not exist"),
])
def test_a_parsed_command_fails_on_an_unknown_option_a_spec_form_or_a_missing_test(command, test, error, monkeypatch):
    monkeypatch.setitem(PARSED, command, test)
    with pytest.raises((pytest.fail.Exception, AssertionError), match=error):
        check("doc.md", 1, command, ROOT)
