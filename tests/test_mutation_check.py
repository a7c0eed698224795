"""tests/mutation_check.py cannot rot unseen: every target is still in the code, a missing one fails the check
(naming it), and a mutation only ever touches a temporary copy, whose `neon` is what its tests import."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests import mutation_check as mc


def digests(root: Path) -> dict[str, str]:
    """Every file under `root` with the hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def fake_checkout(root: Path) -> Path:
    """A source tree shaped like ours: a `neon` package of one module and one test of it."""
    (root / "neon").mkdir(parents=True)
    (root / "neon" / "__init__.py").write_text("")
    (root / "neon" / "thing.py").write_text("def value():\n    return 1 + 1\n")
    (root / "tests").mkdir()
    (root / "tests" / "__init__.py").write_text("")
    (root / "tests" / "test_thing.py").write_text("from neon.thing import value\n\n\n"
                                                  "def test_value():\n    assert value() == 2\n")
    (root / "setup.cfg").write_text("[tool:pytest]\n")
    return root


def test_every_target_is_in_the_checkout_once():
    assert mc.missing_targets(mc.ROOT, mc.MUTATIONS) == []
    assert len(mc.MUTATIONS) >= 12 and len({m.name for m in mc.MUTATIONS}) == len(mc.MUTATIONS)
    for m in mc.MUTATIONS:
        assert m.broken != m.code and m.tests, m.name
        assert all((mc.ROOT / t.split("::")[0]).is_file() for t in m.tests), m.name


def test_a_missing_target_fails_the_check_and_is_named(tmp_path: Path, capsys):
    root = fake_checkout(tmp_path / "checkout")
    gone = mc.Mutation("gone", "neon/thing.py", "return 1 - 1", "return 1", ["tests/test_thing.py"])
    twice = mc.Mutation("twice", "neon/thing.py", "1", "2", ["tests/test_thing.py"])
    no_file = mc.Mutation("no file", "neon/other.py", "x", "y", ["tests/test_thing.py"])
    assert mc.main([], mutations=[gone, twice, no_file], root=root) != 0
    out = capsys.readouterr().out
    assert "neon/thing.py: TARGET NOT FOUND ONCE (found 0 times) [gone]: 'return 1 - 1'" in out
    assert "(found 2 times) [twice]" in out and "neon/other.py: TARGET NOT FOUND ONCE (the file is gone)" in out
    assert "FAILS" not in out  # nothing ran: a missing target is a failure of the check, never a pass
    with pytest.raises(mc.TargetMissing, match="found 0 times"):
        mc.apply(mc.copy_tree(root, tmp_path / "copy"), gone, root)


def test_a_mutation_is_applied_to_a_copy_never_to_the_checkout(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # the fake tree needs no plugin: 2 s less a run
    root = fake_checkout(tmp_path / "checkout")
    before = digests(root)
    caught = mc.Mutation("caught", "neon/thing.py", "return 1 + 1", "return 1 + 2", ["tests/test_thing.py"])
    missed = mc.Mutation("missed", "neon/thing.py", "def value():", "def value(unused=None):",
                         ["tests/test_thing.py"])
    # the copy's neon is the one its tests import: the editable install's neon has no `thing`
    assert mc.main([], mutations=[caught], root=root) == 0
    assert mc.main([], mutations=[caught, missed], root=root) == 1
    out = capsys.readouterr().out
    assert "neon/thing.py: FAILS [caught]" in out and "neon/thing.py: SURVIVES [missed]" in out
    assert digests(root) == before
    assert mc.check(caught, root, tmp_path / "work")[0] == "FAILS" and not (tmp_path / "work").exists()
    with pytest.raises(RuntimeError, match="not a separate copy"):
        mc.apply(root, caught, root)
    assert digests(root) == before


def test_tests_that_import_another_neon_are_an_error(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    # a copy without its own neon/ would import the installed one: the check says so instead of a verdict
    root = tmp_path / "checkout"
    (root / "tests").mkdir(parents=True)
    (root / "tests" / "test_it.py").write_text("def test_it():\n    assert True\n")
    verdict, detail = mc.check(mc.Mutation("m", "tests/test_it.py", "True", "1", ["tests/test_it.py"]), root,
                               tmp_path / "work")
    assert verdict == "ERROR" and "pytest exit 4" in detail


def test_a_real_mutation_changes_the_copy_only(tmp_path: Path):
    m = mc.MUTATIONS[0]
    checkout_file = (mc.ROOT / m.file).read_bytes()
    copy = mc.copy_tree(mc.ROOT, tmp_path / "copy")
    mc.apply(copy, m)
    assert m.broken in (copy / m.file).read_text() and (mc.ROOT / m.file).read_bytes() == checkout_file
    assert (copy / "conf" / "experiment").is_symlink() and (copy / "conf" / "experiment" / "toy2d.yaml").is_file()
