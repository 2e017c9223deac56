"""The README as a tested promise: its shell commands run as written, on a tiny search (issue 18, item 3).

Every command of README.md's fenced ``bash`` / ``sh`` / ``shell`` / ``console`` blocks (``$ `` lines of a
``console`` block; ``\\`` continuations joined, ``#`` comments dropped) is handled by one rule, chosen by the
program it calls; a command that no rule knows fails the test, so a new README command must get one. All commands
share one temporary folder as their working directory and run in README order, as a user would type them: the
demo's ``runs/random_search/best/`` feeds the README's export, whose ``runs/export/`` files feed ``hwnas predict``.
Apart from paths, nothing of a command is changed, except that the long runs get tiny settings appended:

* paths: ``.venv/bin/X`` is the ``X`` of the interpreter running the tests; ``~/...`` is a folder ``home/`` of the
  temporary folder (empty: no data set is there); ``runs/...`` stays relative, so it lands in the temporary folder.
* ``make demo``: the recipe ``make -n demo`` prints (the Makefile's own command line, which the README must also
  quote) runs with ``TINY_SEARCH`` appended (argparse: the last value of an option wins), so a renamed or removed
  option in the Makefile or the README still fails.
* ``make test``: the suite itself cannot run inside the suite; its recipe runs with ``--collect-only`` on this
  file, which checks the recipe and its pytest options.
* ``python -m experiments.random_search ...``: runs with ``TINY_SEARCH`` appended. A ``--data-root`` that does
  not exist here (the data are never downloaded) must stop the run with the data error naming it, before any
  pricing and without locking the results folder. A ``--budget-ms`` is also checked against the space the README
  asks for (not the tiny one): at least its fastest architecture must fit on the command's predictor.
* ``hwnas list-predictors``, ``hwnas predict``, ``hwnas export``: run verbatim. ``predict`` on the exported files
  must price them at the input shape the export recorded (the tiny search's 8 px, never a 224 px guess).
* too long to run here (each has its own tiny integration test: ``test_adapt.py``, ``test_build_tiny.py``,
  ``test_nni_experiment.py``, ``test_proxyless_train.py``, ``test_spos_search.py``): ``hwnas adapt``, ``hwnas
  build``, ``experiments.nni_search``, ``experiments.proxyless_train``, ``experiments.spos_search`` are parsed by
  their own parsers (every option name and value must be accepted; the NNI config with its overrides must load),
  and their ``--budget-ms`` must be feasible as above.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: appended to every random-search command: the tiny search of tests/integration/test_random_search_e2e.py
TINY_SEARCH = ["--width-mult", "0.25", "--image-size", "8", "--epochs", "1", "--max-steps", "3", "--batch-size",
               "32", "--trials", "2", "--no-progress"]
TINY_INPUT = [1, 3, 8, 8]
_FENCE = re.compile(r"^```(bash|sh|shell|console)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def shell_commands(text: str) -> list[tuple[int, list[str]]]:
    """(line number, argv) of every command in the fenced shell blocks of a Markdown text."""
    out = []
    for m in _FENCE.finditer(text):
        first = text.count("\n", 0, m.start()) + 2
        lines = m.group(2).split("\n")
        i = 0
        while i < len(lines):
            start, line = i, lines[i]
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1] + " " + lines[i]
            i += 1
            line = line.strip()
            if m.group(1) == "console":
                if not line.startswith("$ "):
                    continue   # output shown after the command
                line = line[2:]
            argv = shlex.split(line, comments=True)
            if argv:
                out.append((first + start, argv))
    return out


def test_shell_commands_are_found():
    text = ("x\n```bash\nmake demo    # a comment\n\na --b 1 \\\n    --c 'd e'\n```\n```python\nls\n```\n"
            "```console\n$ hwnas list-predictors\nname  backend\n```\n")
    assert shell_commands(text) == [(3, ["make", "demo"]), (5, ["a", "--b", "1", "--c", "d e"]),
                                    (12, ["hwnas", "list-predictors"])]


COMMANDS = shell_commands(README.read_text(encoding="utf-8"))


# -- running ---------------------------------------------------------------------------------------------------------
@dataclass
class Done:
    argv: list[str]
    rc: int
    out: str
    err: str

    def explain(self) -> str:
        return f"{shlex.join(self.argv)} -> exit {self.rc}\n--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-3000:]}"


@dataclass
class Workspace:
    path: Path
    done: dict[int, Done | str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    path = tmp_path_factory.mktemp("readme_commands")
    (path / "home").mkdir()
    return Workspace(path)


def _local(argv: list[str], ws: Workspace) -> list[str]:
    """The README's paths made local: ``.venv/bin/X`` -> this interpreter's ``X``; ``~/`` -> the workspace's home."""
    out = []
    for i, a in enumerate(argv):
        if i == 0 and a.startswith(".venv/bin/"):
            a = str(Path(sys.executable).parent / a[len(".venv/bin/"):])
        elif a.startswith("~/"):
            a = str(ws.path / "home" / a[2:])
        out.append(a)
    return out


def _run(argv: list[str], cwd: Path) -> Done:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    return Done(argv, p.returncode, p.stdout, p.stderr)


def _make_recipe(target: str) -> list[str]:
    """The command line ``make TARGET`` runs (its last; the ones before install the venv when it is missing)."""
    p = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(ROOT), target, f"PY={sys.executable}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"make -n {target} fails: {p.stderr}"
    return shlex.split(p.stdout.strip().splitlines()[-1])


def _option(argv: list[str], name: str) -> str | None:
    """The last value of ``--name VALUE`` / ``--name=VALUE`` in argv."""
    value = None
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


def _parse(parse, argv: list[str], what: str):
    """``parse(argv)`` of an entry point, a usage error turned into a test failure with argparse's message."""
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse(argv)
    except SystemExit as e:
        pytest.fail(f"README's {what}: its own parser refuses {shlex.join(argv)} (exit {e.code}):\n{err.getvalue()}")


@functools.lru_cache(maxsize=None)
def _fastest_ms(space: str, width_mult: float, image_size: int, predictor: str) -> tuple[float, float, str]:
    import hwnas
    import search_spaces as ss

    p = hwnas.load_latency_predictor(predictor)
    sp = ss.create_space(space, width_mult=width_mult, input_size=image_size, num_classes=10)
    table = hwnas.LatencyTable.build(sp, p, input_shape=(1, 3, image_size, image_size))
    return table.min_latency(), table.max_latency(), p.name


def _check_budget(what: str, budget_ms: float | None, space: str, width_mult: float, image_size: int,
                  predictor: str) -> None:
    if budget_ms is None:
        return
    lo, hi, name = _fastest_ms(space, float(width_mult), int(image_size), str(predictor))
    assert lo <= budget_ms, (f"README's {what}: --budget-ms {budget_ms} is below the fastest architecture of "
                             f"{space} (width {width_mult}, {image_size} px): {lo:.3f}..{hi:.3f} ms on {name}")


# -- the rules -------------------------------------------------------------------------------------------------------
def rule_make(argv, ws, what):
    assert len(argv) == 2 and argv[1] in ("demo", "test"), f"{what}: no rule for make target(s) {argv[1:]}"
    recipe = _make_recipe(argv[1])
    if argv[1] == "test":
        assert recipe[1:3] == ["-m", "pytest"], f"make test no longer runs pytest: {recipe}; update this test"
        done = _run([*recipe, "--collect-only", "-p", "no:cacheprovider", str(Path(__file__).relative_to(ROOT))],
                    ROOT)
        assert done.rc == 0, done.explain()
        return done
    assert recipe[1:3] == ["-m", "experiments.random_search"], (
        f"make demo no longer runs the random search: {recipe}; update this test")
    quoted = shlex.join(["python", *recipe[1:]])
    assert f"`make demo` runs `{quoted}`" in README.read_text(encoding="utf-8"), (
        f"README.md must say what make demo runs: `{quoted}` (the Makefile's recipe)")
    return rule_random_search(recipe, ws, what)


def rule_random_search(argv, ws, what):
    from experiments import random_search

    readme_args = _parse(random_search.parse_args, argv[3:], what)
    root = readme_args.data_root
    done = _run([*argv, *TINY_SEARCH], ws.path)
    if root is not None and not Path(root).exists():
        # the data are never downloaded: the run must stop at the data check, before pricing, locking nothing
        assert done.rc != 0 and root in done.err and "not found" in done.err, done.explain()
        assert "Search space" not in done.out and "predicted latency" not in done.out, done.explain()
        out_dir = ws.path / readme_args.out_dir
        assert not (out_dir / "config.json").exists(), f"the failed run locked {out_dir}"
        return done
    assert done.rc == 0, done.explain()
    out_dir = ws.path / readme_args.out_dir
    best = out_dir / "best"
    assert all((best / f).is_file() for f in ("arch.json", "state_dict.pt", "model.pt")), done.explain()
    assert len((out_dir / "trials.jsonl").read_text().splitlines()) == 2
    assert "; winner predicted " in done.out
    _check_budget(what, readme_args.budget_ms, readme_args.space, readme_args.width_mult, readme_args.image_size,
                  readme_args.predictor)
    return done


def rule_hwnas(argv, ws, what):
    from hwnas.cli import _build_parser

    sub = argv[1] if len(argv) > 1 else None
    if sub in ("adapt", "build"):   # minutes to an hour: parsed only (tests/integration/test_adapt.py, ...)
        return _parse(_build_parser()[0].parse_args, argv[1:], what)
    assert sub in ("list-predictors", "predict", "export"), f"{what}: no rule for hwnas {sub}"
    done = _run(argv, ws.path)
    assert done.rc == 0, done.explain()
    assert "Traceback" not in done.err, done.explain()
    if sub == "export":
        for opt in ("--out", "--onnx", "--triton-repo"):
            if _option(argv, opt):
                assert (ws.path / _option(argv, opt)).exists(), f"{what}: {opt} {_option(argv, opt)} not written"
        arch = _option(argv, "--arch")
        if arch and _option(argv, "--out"):   # the file records the shape of arch.json, no flag repeating it
            from hwnas.export import read_metadata

            recorded = json.loads((ws.path / arch).read_text())["input_shape"]
            assert list(read_metadata(str(ws.path / _option(argv, "--out")))["input_shape"]) == recorded
    if sub == "predict":
        shape = None
        if _option(argv, "--torchvision") and not _option(argv, "--input-shape"):
            shape = [1, 3, 224, 224]
        elif (_option(argv, "--onnx") or _option(argv, "--torchscript") or "").startswith("runs/export/"):
            shape = TINY_INPUT   # the export above, of the tiny demo: priced at its recorded 8 px
        if shape is not None and "--json" in argv:
            assert json.loads(done.out)["input_shape"] == shape, done.explain()
        elif shape is not None:
            assert f"input {tuple(shape)}" in done.out, done.explain()
    return done


def rule_python_module(argv, ws, what):
    assert argv[1] == "-m" and len(argv) > 2, f"{what}: no rule for {argv[:3]}"
    module, args = argv[2], argv[3:]
    if module == "experiments.random_search":
        return rule_random_search(argv, ws, what)
    if module == "experiments.nni_search":   # NNI's manager and trials: tests/integration/test_nni_experiment.py
        from experiments import nni_search

        ns = _parse(nni_search.build_parser().parse_args, args, what)
        overrides = list(ns.overrides) + [f"{key}={json.dumps(getattr(ns, dest))}"
                                          for dest, key in nni_search._SHORTCUTS.items()
                                          if getattr(ns, dest) is not None]
        cfg = nni_search.load_config(ns.config, overrides)   # the config and its overrides load
        _check_budget(what, cfg.budget.max_ms, cfg.space.name, cfg.space.width_mult, cfg.data.image_size,
                      cfg.predictor)
        return cfg
    if module == "experiments.spos_search":   # supernet training: tests/integration/test_spos_search.py
        from experiments import spos_search

        ns = _parse(spos_search.parse_args, args, what)
        _check_budget(what, ns.budget_ms, "spos", ns.width_mult, ns.image_size, ns.predictor)
        return ns
    if module == "experiments.proxyless_train":   # supernet training: tests/integration/test_proxyless_train.py
        from experiments import proxyless_train

        return _parse(proxyless_train.parse_args, args, what)
    pytest.fail(f"{what}: no rule for python -m {module}")


def rule_for(argv: list[str]):
    prog = Path(argv[0]).name
    if argv[0] == "make":
        return rule_make
    if prog == "hwnas":
        return rule_hwnas
    if prog in ("python", "python3"):
        return rule_python_module
    return None


def test_every_readme_command_has_a_rule():
    assert COMMANDS, "README.md has no shell command"
    missing = [f"README.md:{line}: {shlex.join(argv)}" for line, argv in COMMANDS if rule_for(argv) is None]
    assert not missing, "no rule runs these README commands; add one:\n" + "\n".join(missing)


def _ensure(index: int, ws: Workspace):
    """Run README commands 0..index in order (each once), as a user would; the result of the one asked."""
    for i in range(index + 1):
        if i in ws.done:
            continue
        line, argv = COMMANDS[i]
        what = f"command at README.md:{line} ({shlex.join(argv)})"
        rule = rule_for(argv)
        if rule is None:
            ws.done[i] = "no rule"
            continue
        try:
            ws.done[i] = rule(_local(argv, ws), ws, what)
        except KeyboardInterrupt:
            raise
        except BaseException as err:   # pytest.fail too: later commands still run; this one fails when asked for
            ws.done[i] = err
    if isinstance(ws.done[index], BaseException):
        raise ws.done[index]
    return ws.done[index]


@pytest.mark.parametrize("index", range(len(COMMANDS)),
                         ids=[f"README.md:{line}:{shlex.join(argv[:3])}" for line, argv in COMMANDS])
def test_readme_command_works(index, workspace):
    line, argv = COMMANDS[index]
    if rule_for(argv) is None:
        pytest.fail(f"README.md:{line}: no rule for {shlex.join(argv)}")
    _ensure(index, workspace)
