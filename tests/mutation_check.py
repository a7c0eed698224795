"""Checks that the tests can fail: breaks, one at a time, the code users' numbers depend on and runs the tests
that guard it. Every line should read FAILS (the guarding tests failed, as they must); SURVIVES means a guard is
missing. Exit 0 only if every mutation FAILS.

Never touches the checkout: each mutation is applied to a fresh temporary copy of the source tree (neon/, tests/,
conf/, experiments/, ...), and the guarding tests run there with PYTHONPATH and NEON_CONFIG_DIR pointing at the
copy; a pytest plugin stops the run (exit 4, reported as ERROR) unless the `neon` it imports is the copy's.

A mutation whose code is not found exactly once in its file fails the check (it is never skipped): the code was
rewritten, so update MUTATIONS. tests/test_mutation_check.py checks, in the normal suite, that every target is
still there. Run: `.venv/bin/python tests/mutation_check.py` (a few minutes on 2 cores); `-k TEXT` runs only the
mutations whose file or name holds TEXT; `--list` prints them."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What a copy holds: the package, the tests and everything they read (configs, docs, benches, the pytest config).
COPIED = ["neon", "tests", "conf", "experiments", "bench", "docs", "notebooks", "setup.cfg", "pyproject.toml",
          "README.md"]
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
PYTEST = ["-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]
TIMEOUT_S = 600  # a mutant that hangs its tests counts as caught, but the check goes on

# The plugin every guarding run loads: refuses to run unless `neon` is imported from the copy under test.
PLUGIN = '''
import os
from pathlib import Path

import pytest


def pytest_configure(config):
    import neon

    copy = Path(os.environ["NEON_MUTATION_COPY"]).resolve()
    where = Path(neon.__file__).resolve()
    if copy not in where.parents:
        raise pytest.UsageError(f"mutation check: neon was imported from {where}, not from the copy {copy}")
'''


@dataclass(frozen=True)
class Mutation:
    """Replace `code` (found exactly once in `file`) by `broken`; `tests` must then fail."""

    name: str
    file: str
    code: str
    broken: str
    tests: list[str] = field(default_factory=list)


MUTATIONS: list[Mutation] = [
    # --- the merge formula: θ_neon = (1 + w)·θ_r − w·θ_s as lerp(θ_r, θ_s, −w)
    Mutation("merge sign of w", "neon/merging/extrapolate.py",
             "return torch.lerp(base.to(dtype), aux.to(dtype), -w).to(base.dtype)",
             "return torch.lerp(base.to(dtype), aux.to(dtype), w).to(base.dtype)",
             ["tests/test_merge.py::test_formula_on_float_tensors"]),
    Mutation("NeonMerger merges θ_s with θ_r", "neon/merging/merger.py",
             "return extrapolate(self.base, theta_s, w)",
             "return extrapolate(theta_s, self.base, w)",
             ["tests/test_callbacks.py::test_budget_snapshots_hand_over_theta_s_and_write_theta_neon_at_each"]),
    # --- per-seed noise: a sample's noise depends on its own seed only
    Mutation("one generator per sample seed", "neon/core/seeding.py",
             "torch.Generator(self.device).manual_seed(int(s) % (1 << 32)) for s in seeds]",
             "torch.Generator(self.device).manual_seed(0) for s in seeds]",
             ["tests/test_synthetic.py::test_noise_of_a_seed_does_not_depend_on_its_batch"]),
    # --- cache checksums: a corrupt artifact is never reused
    Mutation("cache compares checksums", "neon/core/cache.py",
             "_sha256(folder / name) == digest for name, digest in sums.items()",
             "_sha256(folder / name) != '' for name, digest in sums.items()",
             ["tests/test_frechet_and_cache.py::test_corrupt_artifact_is_detected_and_rebuilt"]),
    Mutation("θ_s reuse is verified", "neon/stages/finetune.py",
             'if not run.cache.verified("finetune", keys[b])]',
             'if not run.cache.path("finetune", keys[b]).exists()]',
             ["tests/test_guards.py::test_a_corrupt_theta_s_is_fine_tuned_again_not_reused"]),
    # --- EDM: the ρ-spaced σ schedule
    Mutation("EDM σ schedule exponent", "neon/families/edm/sampler.py",
             "return (top + step * (bottom - top)) ** rho",
             "return (top + step * (bottom - top)) ** (rho - 1)",
             ["tests/test_edm_regression.py::test_module_generate_matches_record"]),
    # --- VAR: top-k / top-p filtering
    Mutation("VAR top-k keeps the k largest", "neon/families/var/sampler.py",
             "logits.masked_fill_(logits < kth, -torch.inf)",
             "logits.masked_fill_(logits <= kth, -torch.inf)",
             ["tests/test_var.py::test_top_k_one_is_greedy"]),
    Mutation("VAR top-p mass", "neon/families/var/sampler.py",
             "drop = ascending.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)",
             "drop = ascending.softmax(dim=-1).cumsum_(dim=-1) <= top_p",
             ["tests/test_var.py::test_top_p_keeps_the_smallest_set_holding_p"]),
    # --- xAR: one Euler–Maruyama step
    Mutation("xAR noise term", "neon/families/xar/sampler.py",
             "x + d * dt + torch.sqrt(2 * t) * (eps * torch.sqrt(dt.abs()))",
             "x + d * dt + torch.sqrt(t) * (eps * torch.sqrt(dt.abs()))",
             ["tests/test_guards.py::test_xar_sampler_step_is_euler_maruyama_on_the_flow_sde"]),
    Mutation("xAR drift of the flow SDE", "neon/families/xar/sampler.py",
             "drift = v - 0.5 * (2 * t) * score",
             "drift = v - 0.5 * t * score",
             ["tests/test_guards.py::test_xar_sampler_step_is_euler_maruyama_on_the_flow_sde"]),
    # --- IMM: one pushforward jump
    Mutation("IMM jump end time", "neon/families/imm/sampler.py",
             "for t, s in zip(times[:-1], times[1:], strict=True):",
             "for t, s in zip(times[:-1], times[:-1], strict=True):",
             ["tests/test_guards.py::test_imm_sampler_jumps_from_each_time_to_the_next"]),
    # --- the safe unpickler's allow-list
    Mutation("unpickler allows any global", "neon/weights/persistence.py",
             "if (module, name) in _ALLOWED:\n            return _ALLOWED[(module, name)]",
             "if (module, name) not in _ALLOWED:\n            return super(_SafeGlobals, self).find_class(module, name)\n"
             "        if (module, name) in _ALLOWED:\n            return _ALLOWED[(module, name)]",
             ["tests/test_guards.py::test_a_snapshot_naming_an_importable_global_is_refused_before_it_runs",
              "tests/test_persistence.py::test_a_global_outside_the_network_layers_is_refused"]),
    # --- readers: format detection from the first bytes
    Mutation("safetensors detected by its header", "neon/weights/readers.py",
             'if len(head) == 9 and head[8:9] == b"{"',
             'if len(head) == 9 and head[8:9] == b"}"',
             ["tests/test_readers.py::test_safetensors_are_read_as_safetensors_whatever_the_suffix"]),
    # --- the Fréchet distance
    Mutation("Fréchet distance cross term", "neon/metrics/frechet.py",
             "np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)",
             "np.trace(sigma1) + np.trace(sigma2) - tr_covmean)",
             ["tests/test_frechet_and_cache.py::test_frechet_distance_closed_forms"]),
    # --- CPU threads shared among processes
    Mutation("threads shared among processes", "neon/launch/threads.py",
             "return max(1, cores // processes), why",
             "return max(1, cores), why",
             ["tests/test_threads.py::test_ddp_ranks_spawned_here_share_the_cores"]),
    # --- DDP: strided shares gathered back in item order
    Mutation("DDP gather order", "neon/core/collectives.py",
             "arr[r::world] = share[key]",
             "arr[r * len(share[key]):(r + 1) * len(share[key])] = share[key]",
             ["tests/test_guards.py::test_strided_shares_interleave_back_into_item_order"]),
    # --- numbers that hold up: picks on the selection seeds, figures on disjoint held-out seeds
    Mutation("held-out seeds are refused where they overlap the selection's", "neon/analysis/heldout.py",
             "if a < end and first < b:", "if a < end and first < a:",
             ["tests/test_heldout.py::test_overlapping_heldout_seeds_are_one_line_before_any_work"]),
    Mutation("the picks are scored on the held-out seeds", "neon/tasks/pipeline.py",
             "Evaluator(run, module, seed_offset=m.heldout_seed_offset,",
             "Evaluator(run, module, seed_offset=m.seed_offset,",
             ["tests/test_heldout.py::test_neon_reports_its_picks_on_heldout_seeds"]),
    Mutation("the twin's pick is scored on the held-out seeds", "neon/tasks/pipeline.py",
             "heldout_evaluator(run, module) if heldout else None,", "evaluator if heldout else None,",
             ["tests/test_output_twin.py::test_neon_compare_output_scores_the_twin_beside_weight_space"]),
    # --- settings read once at the edge: a bad value is refused before any work
    Mutation("S's storage mode is checked", "neon/stages/settings.py",
             'if s["mode"] not in SYNTHETIC_MODES:', "if False:",
             ["tests/test_settings.py::test_a_bad_neon_key_is_refused_before_any_work"]),
    # --- text: the held-out NLL reported on the half the picks were not made on; the picks on the NLL
    Mutation("text figures from the report half", "neon/tasks/pipeline.py",
             'nll_part="report")', 'nll_part="selection")',
             ["tests/test_text_pipeline.py::test_text_run_reports_heldout_nll_from_the_report_half"]),
    Mutation("text picks minimise the selection metric", "neon/tasks/pipeline.py",
             "key=lambda bi: grid[bi[0]][bi[1]][select])", "key=lambda bi: grid[bi[0]][bi[1]][\"fid\"])",
             ["tests/test_text_pipeline.py::test_text_run_reports_heldout_nll_from_the_report_half"]),
    # --- the language-model sampler: a prompt is read, then continued
    Mutation("prompted sampling continues the prompt", "neon/families/lm.py",
             "tokens = torch.cat([tokens, out[:, :given]], dim=1)", "tokens = tokens",
             ["tests/test_prompts.py::test_a_prompted_sequence_continues_its_prompt_as_step_by_step_decoding_does"]),
]


class TargetMissing(Exception):
    """A mutation's code is not in its file exactly once."""


def occurrences(root: Path, m: Mutation) -> int:
    """How many times the mutation's code is in its file under `root` (0 if the file is gone)."""
    path = root / m.file
    return path.read_text().count(m.code) if path.is_file() else 0


def missing_targets(root: Path, mutations: list[Mutation]) -> list[str]:
    """One line per mutation whose code is not found exactly once under `root`."""
    out = []
    for m in mutations:
        n = occurrences(root, m)
        if n != 1:
            where = "the file is gone" if not (root / m.file).is_file() else f"found {n} times"
            out.append(f"{m.file}: TARGET NOT FOUND ONCE ({where}) [{m.name}]: {m.code!r}")
    return out


def copy_tree(root: Path, dest: Path) -> Path:
    """A copy of the source tree at `dest` (symlinks kept as links: conf/experiment -> ../experiments)."""
    dest.mkdir(parents=True)
    for name in COPIED:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True, ignore=IGNORED)
        elif src.is_file():
            shutil.copy2(src, dest / name)
    return dest


def apply(copy: Path, m: Mutation, checkout: Path = ROOT) -> None:
    """Break `m.file` in `copy` (never in the checkout); TargetMissing unless its code is there once."""
    copy, checkout = copy.resolve(), checkout.resolve()
    if copy == checkout or copy in checkout.parents or checkout in copy.parents:
        raise RuntimeError(f"refusing to mutate '{copy}': it is not a separate copy of '{checkout}'")
    path = copy / m.file
    n = occurrences(copy, m)
    if n != 1:
        raise TargetMissing(f"{m.file}: the code to break is found {n} times, not once: {m.code!r}")
    path.write_text(path.read_text().replace(m.code, m.broken))


def child_env(copy: Path, plugin_dir: Path) -> dict[str, str]:
    """The guarding tests' environment: the copy first on the path (the editable install's finder comes after
    sys.path), its configs, no bytecode written (a copy is run once)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST"))}
    env["PYTHONPATH"] = os.pathsep.join([str(copy), str(plugin_dir)]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(NEON_CONFIG_DIR=str(copy / "conf"), NEON_MUTATION_COPY=str(copy), PYTHONDONTWRITEBYTECODE="1")
    return env


def run_tests(copy: Path, tests: list[str], workdir: Path) -> tuple[int, str]:
    """Run `tests` in `copy` (pytest -x); (exit status, its output). Exit 124 if they ran past TIMEOUT_S."""
    plugin_dir = workdir / "plugin"
    plugin_dir.mkdir(exist_ok=True)
    (plugin_dir / "_neon_mutation_guard.py").write_text(PLUGIN)
    cmd = [sys.executable, "-m", "pytest", *PYTEST, "-p", "_neon_mutation_guard", *tests]
    try:
        proc = subprocess.run(cmd, cwd=copy, env=child_env(copy, plugin_dir), capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return 124, out
    return proc.returncode, proc.stdout + proc.stderr


def first_failure(output: str) -> str:
    """The first FAILED/ERROR line of pytest's short summary, or the last line of the output."""
    lines = output.strip().splitlines()
    hits = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return (hits or lines[-1:] or [""])[0][:200]


def check(m: Mutation, root: Path, workdir: Path) -> tuple[str, str]:
    """Apply `m` to a fresh copy of `root` under `workdir`, run its tests; (verdict, detail), the verdict one
    of FAILS (good), SURVIVES, ERROR (the tests could not run: collection or usage error, wrong copy)."""
    copy = copy_tree(root, workdir / "tree")
    try:
        apply(copy, m, root)
        rc, output = run_tests(copy, m.tests, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if rc == 1:
        return "FAILS", first_failure(output)
    if rc == 124:
        return "FAILS", f"the tests ran past {TIMEOUT_S} s"
    if rc == 0:
        return "SURVIVES", "every guarding test passed"
    return "ERROR", f"pytest exit {rc}: {first_failure(output)}"


def baseline(mutations: list[Mutation], root: Path, workdir: Path) -> tuple[int, str]:
    """Every guarding test, once, on an unbroken copy: they must pass for a FAILS to mean anything."""
    copy = copy_tree(root, workdir / "tree")
    tests = list(dict.fromkeys(t for m in mutations for t in m.tests))
    try:
        return run_tests(copy, tests, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None, mutations: list[Mutation] | None = None, root: Path = ROOT) -> int:
    """Run the check; 0 only if every mutation FAILS, 1 if one survives or errs, 2 if a target is missing."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="only the mutations whose file or name holds this text")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    args = parser.parse_args(argv)
    mutations = [m for m in (MUTATIONS if mutations is None else mutations)
                 if args.k in m.file or args.k in m.name]
    if args.list:
        for m in mutations:
            print(f"{m.file}: {m.name}: {m.code!r} -> {m.broken!r}  [{' '.join(m.tests)}]")
        return 0
    if not mutations:
        print("no mutation selected")
        return 1
    start = time.monotonic()
    missing = missing_targets(root, mutations)
    for line in missing:
        print(line, flush=True)
    runnable = [m for m in mutations if occurrences(root, m) == 1]
    bad = 0
    with tempfile.TemporaryDirectory(prefix="neon-mutation-") as tmp:
        if runnable:
            rc, output = baseline(runnable, root, Path(tmp) / "baseline")
            if rc != 0:
                print(f"baseline: the guarding tests do not pass on the unbroken copy (pytest exit {rc}): "
                      f"{first_failure(output)}")
                print(output[-3000:])
                return 1
            print(f"baseline: {len({t for m in runnable for t in m.tests})} guarding tests pass unbroken "
                  f"({time.monotonic() - start:.0f} s)", flush=True)
        for i, m in enumerate(runnable):
            t0 = time.monotonic()
            verdict, detail = check(m, root, Path(tmp) / f"m{i}")
            bad += verdict != "FAILS"
            print(f"{m.file}: {verdict} [{m.name}] ({time.monotonic() - t0:.0f} s) {detail}", flush=True)
    print(f"{len(runnable) - bad} of {len(mutations)} mutations FAIL their tests, {bad} do not, "
          f"{len(missing)} targets missing ({time.monotonic() - start:.0f} s)")
    if missing:
        return 2
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
