"""Mistakes at the command line: one line, early, before any work (issue 23). The table runs the checks the
`neon` command makes before it starts a task, in-process; one end-to-end test runs a few lines through the
real command (exit code, stderr, no traceback, nothing written), one interrupts a run. Every command line the
README, docs/ and the notebooks show is parsed as typed."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neon.core.errors import NeonError
from neon.launch import cli
from neon.launch.preflight import preflight
from neon.stages.run import Run, current_stage

ROOT = Path(__file__).resolve().parent.parent
BAD_LINES = {
    "regex key quoted as the old README had it": (["experiment=toy2d", r"neon.w={'^model\.blocks': 1.9, default: 1.5}"],
                                                  "write a mapping with unquoted keys"),
    "unclosed list": (["neon.w=[0,1"], "close every bracket"),
    "no rounds": (["experiment=toy2d", "neon.rounds=0"], "neon.rounds must be a positive integer, got 0"),
    "negative seed": (["experiment=toy2d", "seed=-1"], "seed=-1 is not a seed"),
    "fractional seed": (["seed=1.5"], "seed=1.5 is not a seed"),
    "negative seed offset": (["metrics.seed_offset=-4"], "metrics.seed_offset=-4 is not a seed"),
    "backwards seed range": (["experiment=toy2d", "task=sample", "model.checkpoint=x.pt", "sample.seeds=5-2"],
                             "runs backwards"),
    "seed listed twice": (["experiment=toy2d", "task=sample", "model.checkpoint=x.pt", "sample.seeds='1,2,1'"],
                          "names seed 1 twice"),
    "unwritable run folder": (["hydra.run.dir=/proc/neon-run"], "hydra.run.dir='/proc/neon-run' cannot be written"),
    "unwritable cache": (["paths.cache_dir=/proc/neon-cache"], "paths.cache_dir='/proc/neon-cache' cannot be written"),
    "run folder under a file": (["hydra.run.dir=README.md/run"], "is a file, not a folder"),
    "unknown model": (["model=nope"], "unknown model 'nope'"),
    "unknown key": (["neon.synthetic.blok=3"], "no config key 'neon.synthetic.blok'"),
    "zero batch": (["neon.batch_size=0"], "neon.batch_size"),
    "zero synthetic set": (["neon.n_synthetic=0"], "neon.n_synthetic"),
    "FID from one sample": (["metrics.num_samples=1"], "below the 64 feature dimensions"),
    "mapping without default": (["experiment=toy2d", r"neon.w={model\.blocks: 1.9}"], "default"),
    "another family's sampler": (["model=var_tiny", "sampler=heun"], "sampler=heun is not a sampler of model var_tiny"),
}


def command_stops(args: list[str], monkeypatch, capsys) -> str:
    """stderr of `neon ARGS` run in-process through the command's own main(), which must exit 2 before any
    run starts (neither the composed run nor Hydra's entry is reached)."""
    started = []
    monkeypatch.setattr(cli, "run_composed", lambda cfg, app: started.append("run"))
    monkeypatch.setattr(cli, "_run", lambda: started.append("hydra"))
    monkeypatch.setattr(sys, "argv", ["neon", *args])
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as stop:
            cli.main()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stop.value.code == 2 and started == []
    return capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_command_line_is_one_line_before_any_work(case: str, tmp_path: Path, monkeypatch, capsys):
    args, expected = BAD_LINES[case]
    monkeypatch.chdir(ROOT)  # relative run folders resolve as they would for a user in the checkout
    monkeypatch.setenv("NEON_CACHE_DIR", str(tmp_path / "cache"))
    err = command_stops(args, monkeypatch, capsys)
    assert err.startswith("neon: error: ") and err.count("\n") == 1 and expected in err, err


def test_a_good_command_line_passes_the_preflight_composed_once(monkeypatch):
    """The command's run gets the config the pre-flight composed (no second composition for a single run);
    a sweep is left to Hydra, which composes each job."""
    from hydra._internal.hydra import Hydra

    composed = []
    compose = Hydra.compose_config
    monkeypatch.setattr(Hydra, "compose_config", lambda self, *a, **k: composed.append(a) or compose(self, *a, **k))
    checked = preflight(["experiment=toy2d", "neon.w=[0,1]", "seed=3"])
    assert len(composed) == 1 and checked.cfg is not None and checked.cfg.seed == 3
    assert checked.cfg.hydra.job.name == "cli"  # the run's log is cli.log, as under @hydra.main
    assert preflight(["-m", "experiment=toy2d", "seed=3,4"]).cfg is None


def test_a_sweep_is_checked_as_its_first_job():
    with pytest.raises(NeonError, match="seed=-1 is not a seed"):
        preflight(["-m", "experiment=toy2d", "seed=-1,2"])
    with pytest.raises(NeonError, match="sampler=heun is not a sampler of model var_tiny"):
        preflight(["-m", "model=var_tiny,edm_digits", "sampler=heun"])
    preflight(["-m", "experiment=toy2d", "neon.w=interval(0,2)"])  # the sweeper's values: checked per job


def test_a_mapping_replaces_a_list_default():
    args = ["experiment=toy2d", r"neon.w={model\.blocks: 1.9, default: 1.5}"]
    assert preflight(args).args == ["experiment=toy2d", "neon.w=null", *args[1:]]  # accepted as typed
    # a key whose default is a mapping is merged as Hydra does, not replaced
    merged = preflight(["task=diagnose", "+task.real_data={seed: 1}"])
    assert merged.args == ["task=diagnose", "+task.real_data={seed: 1}"] and merged.cfg.task.real_data.seed == 1


def test_current_stage_names_the_innermost_stage(tmp_path: Path, monkeypatch):
    import neon.stages.run

    # this process's stage bookkeeping, fresh: an earlier test's error may have left a stage behind
    monkeypatch.setattr(neon.stages.run, "_ACTIVE_STAGES", [])
    monkeypatch.setattr(neon.stages.run, "_LEFT_BY_EXCEPTION", [])
    run = Run.__new__(Run)  # only the stage bookkeeping is used
    run.seconds = {}
    assert current_stage() == "start-up"
    with run.stage("finetune"):
        assert current_stage() == "finetune"
        with run.stage("evaluate"):
            assert current_stage() == "evaluate"
        assert current_stage() == "finetune"
    with pytest.raises(KeyboardInterrupt), run.stage("synthesize"), run.stage("pretrain"):
        raise KeyboardInterrupt
    assert current_stage() == "pretrain"  # what an interrupt unwinding out of the stages reports


NEON = r"(?:\.venv/bin/)?neon"  # the command as the docs type it


def commands_in_markdown(text: str) -> set[str]:
    """`neon ...` in inline code, and the `neon` lines of bash blocks."""
    found = {m.group(1) for m in re.finditer(rf"`({NEON} (?:[^`])+)`", text)}
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        found |= {line.strip() for line in block.replace("\\\n", " ").splitlines()
                  if re.match(rf"{NEON} ", line.strip())}
    return found


def commands_in_code(source: str) -> set[str]:
    """`neon ...` in a notebook's code cell: shell lines (`!neon ...`), string literals, and calls of
    neon.launch.notebook.neon whose arguments are all literals (calls built from variables run in test_notebooks)."""
    found = {line.strip()[1:] for line in source.splitlines() if re.match(rf"!{NEON} ", line.strip())}
    tree = ast.parse("\n".join("" if line.lstrip().startswith(("!", "%")) else line for line in source.splitlines()))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.match(rf"{NEON} ", node.value):
            found.add(node.value)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "neon"
              and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args)):
            multirun = any(k.arg == "multirun" and getattr(k.value, "value", False) for k in node.keywords)
            found.add(shlex.join(["neon", *(["-m"] if multirun else []), *(a.value for a in node.args)]))
    return found


def documented_commands() -> dict[str, str]:
    """Every `neon ...` command that README.md, docs/ and the notebooks show (markdown: inline code and bash
    blocks; notebooks: markdown and code cells), each with the file that shows it."""
    found: dict[str, str] = {}
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        if "upstream" not in page.parts:
            found.update(dict.fromkeys(commands_in_markdown(page.read_text()) - found.keys(), page.name))
    for book in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(book.read_text())["cells"]:
            source = "".join(cell["source"])
            commands = commands_in_markdown(source) if cell["cell_type"] == "markdown" else commands_in_code(source)
            found.update(dict.fromkeys(commands - found.keys(), f"notebooks/{book.name}"))
    return dict(sorted(found.items()))


def as_typed(command: str) -> list[str]:
    """The arguments the shell passes; `[x]` marks an optional argument x."""
    args = shlex.split(command)[1:]
    return [a[1:-1] if a.startswith("[") and a.endswith("]") and "=" in a else a for a in args]


PLACEHOLDER = re.compile(r"=([A-Z][A-Z0-9_]*[A-Z0-9])(?=\s|$)")


def test_every_documented_command_parses_as_typed():
    commands = documented_commands()
    assert len(commands) > 20
    assert any(where.startswith("notebooks/") for where in commands.values())  # the notebooks are read too
    failures = []
    for command, where in commands.items():
        args = as_typed(command)
        try:
            preflight(args)
        except NeonError as exc:
            # a path the reader fills in is written in capitals (DIR, MY_CORPUS): refusing it as missing is right
            if not any(f"'{name}'" in str(exc) for name in PLACEHOLDER.findall(command)):
                failures.append(f"{where}: {command}: {exc}")
    assert not failures, "\n".join(failures)


def test_commands_in_notebook_code_cells():
    source = ('!neon experiment=toy2d seed=1\n'
              'subprocess.run(shlex.split("neon task=sample sample.seeds=0-9"))\n'
              'neon("experiment=toy2d", "neon.w=[0.0,1.0]", run_dir="r", multirun=True)\n'
              'neon(*SMALL, run_dir="r")  # built from variables: run by tests/test_notebooks.py\n')
    assert commands_in_code(source) == {"neon experiment=toy2d seed=1", "neon task=sample sample.seeds=0-9",
                                        "neon -m experiment=toy2d 'neon.w=[0.0,1.0]'"}


def _neon(args: list[str], tmp_path: Path, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, NEON_CACHE_DIR=str(tmp_path / "cache"), PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-m", "neon", *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.mark.slow
def test_bad_lines_through_the_command(tmp_path: Path):
    # the process boundary: exit code 2, one line on stderr, no traceback, nothing cached
    for args in (["neon.w=[0,1"], ["experiment=toy2d", "seed=-1"], ["hydra.run.dir=/proc/neon-run"],
                 ["experiment=toy2d", "task=sample", "model.checkpoint=x.pt", "sample.seeds=5-2"]):
        out, err = _neon([*args, f"hydra.run.dir={tmp_path / 'run'}"] if "hydra.run.dir" not in args[0] else args,
                         tmp_path).communicate(timeout=300)
        assert err.count("\n") == 1 and err.startswith("neon: error: "), (args, err)
        assert "Traceback" not in out + err
        assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_interrupt_is_one_line_and_the_rerun_resumes(tmp_path: Path):
    args = ["experiment=toy2d", "model.pretrain.steps=1500", "resume_every_steps=100", "neon.n_synthetic=200",
            "neon.budget_steps=5", "neon.w=[0.0,1.0]", "metrics.num_samples=2000", "metrics.block_size=2000",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = _neon(args, tmp_path, start_new_session=True)
    deadline = time.monotonic() + 240
    while not list((tmp_path / "cache").rglob("resume.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.5)  # interrupt once pretraining has saved a resumable checkpoint
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "neon: interrupted during pretrain; rerun the same command to resume"
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "summary.json").exists()
    proc = _neon([*args[:-1], f"hydra.run.dir={tmp_path / 'rerun'}"], tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert "θ_r: resuming the pretraining at step" in (tmp_path / "rerun" / "cli.log").read_text()


@pytest.mark.slow
def test_interrupt_at_each_stage_then_the_rerun_resumes(tmp_path: Path, monkeypatch, capsys):
    """Ctrl-C arriving in synthesize, fine-tune and evaluate in turn (raised as the stage starts, in-process
    through the command's own entry point): exit 130 with the stage named; each rerun reuses what finished."""
    from contextlib import contextmanager

    from neon.launch import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEON_CACHE_DIR", str(tmp_path / "cache"))
    base = ["experiment=toy2d", "model.pretrain.steps=300", "neon.n_synthetic=200", "neon.budget_steps=5",
            "neon.w=[0.0,1.0]", "metrics.num_samples=2000", "metrics.block_size=2000",
            "trainer.enable_progress_bar=false"]
    staged = Run.stage

    def command(run_dir: str, interrupt_at: str | None) -> tuple[int, str]:
        @contextmanager
        def interrupting(self, name):
            with staged(self, name):
                if name == interrupt_at:
                    raise KeyboardInterrupt
                yield

        monkeypatch.setattr(Run, "stage", interrupting)
        monkeypatch.setattr(sys, "argv", ["neon", *base, f"hydra.run.dir={tmp_path / run_dir}"])
        previous = signal.getsignal(signal.SIGINT)
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code
        finally:
            signal.signal(signal.SIGINT, previous)
        return code, capsys.readouterr().err

    for i, stage in enumerate(["synthesize", "finetune", "evaluate"]):
        code, err = command(f"run{i}", stage)
        assert code == 130 and err.strip().splitlines()[-1] == (
            f"neon: interrupted during {stage}; rerun the same command to resume")
    code, _ = command("done", None)
    assert code == 0
    log = (tmp_path / "done" / "cli.log").read_text()
    assert "θ_r: reusing" in log and "S: reusing" in log and "θ_s: reusing" in log  # nothing redone
    assert (tmp_path / "done" / "summary.json").is_file()


def test_hydra_info_flags_skip_the_job_checks():
    # `neon --help` and `--cfg job` print and run nothing: the job's checks would import the data module's class and
    # with it Lightning (seconds: neon.data.digits imports it). In a process where nothing has imported it before.
    code = ("import sys; from neon.launch.preflight import preflight; preflight(['--help']); "
            "preflight(['--cfg', 'job', 'neon.w=[0.5]']); print('lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
