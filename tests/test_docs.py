"""The documentation runs as written (README.md and docs/*.md).

The convention (see docs/development.md, "Documentation"):

* a fenced block ```` ```console ```` holds commands: each line starting with ``$ `` is run by
  ``bash`` from the repository root, after ``make demo``, with ``.venv/bin`` on PATH (here: the
  directory of the Python running the tests, which is ``.venv/bin`` under ``make test``); a
  line ending in ``\\`` continues on the next line;
* the lines after a command, up to the next ``$ ``, are its expected output, compared (stdout
  and stderr together, trailing blanks ignored) only when the block is preceded by
  ``<!-- output: exact -->``; otherwise the command must exit with status 0;
* a block preceded by ``<!-- not run: <reason> -->`` is shown but not run (hardware, root, a
  Pi, long runs): its test is skipped with that reason.

One demo state is shared by the session: a private Mosquitto on a free port stands in for the
one on localhost:1883 that ``make demo`` uses (``EDGED_MQTT__PORT`` points edged at it, and
``$XDG_CONFIG_HOME/mosquitto_sub`` / ``mosquitto_pub`` the Mosquitto clients, which read their
default options from there), and ``edged run -c config/demo.toml`` runs once first, as
``make demo`` does.

Every relative link in those files must resolve to a file in the repository, and a link's
``#anchor`` to a heading of the page it points to.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.broker import Mosquitto, MosquittoNotInstalled, find_mosquitto
from tests.daemon import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_TIMEOUT_S = 120

# Pages that other branches of the same round add (issue 14, 15.3, 17): a link to one of them
# is reported as skipped until it exists, then checked like every other link.
PENDING = {"docs/performance.md", "docs/fleets.md", "docs/mqtt-api.yaml", "docs/schemas"}

_MARK = re.compile(r"<!--\s*(output:\s*exact|not run:\s*(?P<reason>.*?))\s*-->")
_FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass
class Command:
    line: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Block:
    path: Path
    lineno: int
    exact: bool
    not_run: str | None
    commands: list[Command]

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.lineno}"


def parse_blocks(path: Path) -> list[Block]:
    """The ```console blocks of a Markdown file, with the marker before each one."""
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2)
        end = i + 1
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        if lang == "console":
            before = next((x.strip() for x in reversed(lines[:i]) if x.strip()), "")
            mark = _MARK.fullmatch(before)
            exact = mark is not None and mark.group("reason") is None
            reason = mark.group("reason") if mark is not None else None
            blocks.append(Block(path, i + 1, exact, reason, _commands(lines[i + 1 : end])))
        i = end + 1
    return blocks


def _commands(body: list[str]) -> list[Command]:
    commands: list[Command] = []
    continued = False
    for line in body:
        if continued:
            commands[-1].line += "\n" + line
        elif line.startswith("$ "):
            commands.append(Command(line[2:]))
        elif commands:
            commands[-1].expected.append(line)
        else:
            raise AssertionError(f"output before the first command: {line!r}")
        continued = line.endswith("\\") and not commands[-1].expected
    return commands


ALL_BLOCKS = [b for path in DOCS for b in parse_blocks(path)]


@pytest.fixture(scope="session")
def demo_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a user after ``make demo``, on a private broker."""
    try:
        find_mosquitto()
    except MosquittoNotInstalled as err:
        pytest.fail(str(err), pytrace=False)
    work = tmp_path_factory.mktemp("docs")
    broker = Mosquitto(work / "mosquitto")
    xdg = work / "xdg"
    xdg.mkdir()
    for client in ("mosquitto_sub", "mosquitto_pub"):
        (xdg / client).write_text(f"-p {broker.port}\n")
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": os.pathsep.join([bindir, os.environ.get("PATH", ""), "/usr/sbin"]),
        "VIRTUAL_ENV": str(Path(bindir).parent),
        "EDGED_MQTT__PORT": str(broker.port),
        "XDG_CONFIG_HOME": str(xdg),
    }
    env.pop("EDGED_CONFIG", None)
    # What make demo leaves behind: the demo daemon has run once on config/demo.toml.
    demo = subprocess.run(
        ["edged", "run", "-c", "config/demo.toml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert demo.returncode == 0, demo.stderr
    try:
        yield env
    finally:
        broker.close()


def _run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )


def _lines(text: str) -> list[str]:
    out = [line.rstrip() for line in text.rstrip("\n").split("\n")]
    return [] if out == [""] else out


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.name for b in ALL_BLOCKS])
def test_console_block_runs_as_shown(block: Block, demo_env: dict[str, str]) -> None:
    if block.not_run is not None:
        pytest.skip(f"{block.name}: not run: {block.not_run}")
    for cmd in block.commands:
        done = _run(cmd.line, demo_env)
        if block.exact:
            assert _lines(done.stdout) == _lines("\n".join(cmd.expected)), (
                f"{block.name}: $ {cmd.line}\n{done.stdout}"
            )
        else:
            assert done.returncode == 0, f"{block.name}: $ {cmd.line}\n{done.stdout}"


def test_every_console_block_has_commands_and_exact_ones_have_output() -> None:
    assert ALL_BLOCKS, "no ```console block found"
    for block in ALL_BLOCKS:
        assert block.commands, f"{block.name}: a console block without a `$ ` command"
        if block.exact:
            assert any(c.expected for c in block.commands), f"{block.name}: nothing to compare"
        if block.not_run is not None:
            assert block.not_run.strip(), f"{block.name}: `not run:` needs a reason"


def test_readme_keeps_the_two_commands() -> None:
    """.ci/run calls `make test`; the README names both commands."""
    shown = [c.line for b in parse_blocks(ROOT / "README.md") for c in b.commands]
    assert "make demo" in shown and "make test" in shown


# -- links --------------------------------------------------------------------------------------

_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans."""
    out: list[str] = []
    fence: str | None = None
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if fence is None and m is not None:
            fence = m.group(1)
        elif fence is not None and line.startswith(fence):
            fence = None
        elif fence is None:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def slug(heading: str, seen: dict[str, int]) -> str:
    """GitHub's anchor for a heading (repeats get -1, -2, ...)."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    base = text.replace(" ", "-")
    n = seen.get(base, 0)
    seen[base] = n + 1
    return base if n == 0 else f"{base}-{n}"


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    fence: str | None = None
    found: set[str] = set()
    for line in path.read_text(encoding="utf-8").split("\n"):
        m = _FENCE.match(line)
        if fence is None and m is not None:
            fence = m.group(1)
        elif fence is not None and line.startswith(fence):
            fence = None
        elif fence is None and (h := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            found.add(slug(h.group(1), seen))
    return found


def links(path: Path) -> list[str]:
    return [
        t
        for t in _LINK.findall(_prose(path.read_text(encoding="utf-8")))
        if not re.match(r"[a-z][a-z0-9+.-]*:", t)  # http:, https:, mailto: ...
    ]


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_relative_links_resolve(path: Path) -> None:
    pending: list[str] = []
    for target in links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists() and rel.rstrip("/") in PENDING:
            pending.append(rel)
            continue
        assert dest.exists(), f"{path.relative_to(ROOT)}: broken link {target}"
        assert dest.is_relative_to(ROOT), f"{path.relative_to(ROOT)}: {target} leaves the repo"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{path.relative_to(ROOT)}: no #{anchor} in {rel}"
    if pending:
        pytest.skip(
            f"{path.relative_to(ROOT)}: links to pages of other branches, not merged yet: "
            f"{sorted(set(pending))}"
        )


def test_every_docs_page_is_linked_from_the_index_and_the_readme() -> None:
    index = {(ROOT / "docs" / t.partition("#")[0]).resolve() for t in links(ROOT / "docs/index.md")}
    readme = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md")}
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "index.md":
            assert page.resolve() in index, f"docs/index.md does not link {page.name}"
        assert page.resolve() in readme, f"README.md does not link docs/{page.name}"


def test_the_link_checker_finds_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# Top\n\n[a](missing.md) [b](#top) `[c](x.md)` [d](https://x.y/z)\n")
    assert links(page) == ["missing.md", "#top"]
    assert anchors(page) == {"top"}
    assert slug("Control over MQTT", {}) == "control-over-mqtt"
    assert slug("Publish policy (`[publish]`)", {}) == "publish-policy-publish"
