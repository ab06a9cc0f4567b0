"""Every shell example in docs/ and in ``casda ... --help`` runs, and succeeds, against the
emulator (issue 19).

Examples are the ``$ casda ...`` lines of literal blocks and the inline ````casda ...````
literals of the pages (synopses with placeholders such as ``POSITION`` are not examples),
and the lines under "Examples:" in each command's help.  Only what cannot exist on a test
machine is substituted (`SUBSTITUTIONS`): CASDA's production host and job URLs, a user's
e-mail, ``<SBID>``; ``--server`` always names the emulator.  The examples of one page or one
command run in order in one folder, so a file one writes (``found.ecsv``) is there for the
next.  Object names resolve from a fixed table: the test session has no network.
"""
import io
import re
import shlex
from pathlib import Path

import pytest

from astroquery_casda_ext import cli
from astroquery_casda_ext.emulator.holdings import spectral_line_source

DOCS = Path(__file__).parents[1] / "docs"
COMMANDS = "|".join(sorted(cli.cli.commands))
#: Synopsis words: a literal holding one is a command's form, not an example to run.
_SYNOPSIS = re.compile(r"\b(POSITION|SBID|IMAGE|SOURCES|RADIUS|ADQL|RA|DEC|N|DIR|FILE)\b|\.\.\.|\[")
#: Object names of the examples, with their positions (the test session has no network).
_KNOWN_NAMES = {"NGC 7232": (333.9083, -45.8500)}


def _doc_examples():
    examples = []
    for page in sorted(DOCS.glob("*.rst")):
        text = page.read_text()
        found = [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("$ casda ")]
        for literal in re.findall(r"``(casda (?:%s)\b[^`]*)``" % COMMANDS, text):
            words = literal.split()
            if not _SYNOPSIS.search(literal) and (len(words) > 2 or words[1] == "demo"):
                found.append(literal)
        if found:
            examples.append((page.name, found))
    return examples


def _help_examples():
    examples = []
    for name, command in sorted(cli.cli.commands.items()):
        lines = command.epilog.split("Examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
        examples.append((f"casda {name} --help", [line.strip() for line in lines
                                                  if line.strip() and not line.strip().startswith("#")]))
    return examples


def _once(groups):
    """Each demo example once (the first place it appears): a demo starts an emulator of its own,
    and the same line elsewhere proves nothing new.  Other lines stay where they are: one may
    write a file the next one reads."""
    seen, kept = set(), []
    for where, examples in groups:
        fresh = [example for example in examples
                 if example not in seen or not example.startswith("casda demo")]
        seen.update(fresh)
        if fresh:
            kept.append((where, fresh))
    return kept


ALL_EXAMPLES = _doc_examples() + _help_examples()
EXAMPLES = _once(ALL_EXAMPLES)


def test_the_docs_and_every_command_help_have_examples():
    where = dict(ALL_EXAMPLES)
    assert {f"casda {name} --help" for name in cli.cli.commands} <= set(where)
    assert {"cli.rst", "quickstart.rst", "catalogues.rst", "emulator.rst"} <= set(where)


@pytest.fixture
def world(tmp_path, emulator, monkeypatch, memory_keyring):
    """A working folder with the files the examples name, and the URLs they stand for."""
    from astropy.coordinates import SkyCoord
    from astroquery_casda_ext import CasdaClass
    line = spectral_line_source(609, emulator.holdings.config)
    work = tmp_path / "work"
    work.mkdir()
    (work / "my_sources.txt").write_text(f"# the line source of SB609, and a continuum source\n"
                                         f"{line['ra']} {line['dec']}\n187.66611477 -45.06210196\n")
    monkeypatch.chdir(work)
    monkeypatch.setenv("CASDA_USER", emulator.username)
    monkeypatch.setenv("CASDA_PASSWORD", emulator.password)
    monkeypatch.setattr(SkyCoord, "from_name",
                        lambda name, *a, **k: SkyCoord(*_KNOWN_NAMES[name], unit="deg"))
    client = CasdaClass(server=emulator.url)
    client.login(emulator.username, password=emulator.password)
    [job] = client.stage_data(["cube-1002"], wait=False)
    phases = emulator.options.job_phases
    emulator.set_options(job_phases=(("QUEUED", 600.0),))        # still running when aborted
    [to_abort] = client.stage_data(["cube-1003"], wait=False)
    emulator.set_options(job_phases=phases)
    return {"job": job.url, "abort": to_abort.url, "user": emulator.username,
            "files": lambda: client.stage_data(["cube-1005"], poll_interval=0.2)}


SUBSTITUTIONS = (
    (r"https://casda\.csiro\.au/casda_data_access/data/async/<job(?: id)?>", lambda w: w["job"]),
    (r"\bURL1\b", lambda w: w["files"]()[0]),
    (r"\bURL2\b", lambda w: w["files"]()[1]),
    (r"\bURL --abort\b", lambda w: w["abort"] + " --abort"),
    (r"\bURL\b", lambda w: w["job"]),
    (r"\bDEST\b", lambda w: "dest/"),
    (r"<SBID>", lambda w: "609"),
    (r"you@example\.org", lambda w: w["user"]),
)


def _prepared(example, world, emulator):
    """(argv, stdin, environment) of one example line."""
    text = example.split("  # ", 1)[0].strip()
    for pattern, value in SUBSTITUTIONS:
        text = re.sub(pattern, lambda match: value(world), text)
    stdin = None
    piped = re.match(r"^echo (.+?) \| (casda .*)$", text)
    if piped:
        stdin, text = shlex.split(piped.group(1))[0], piped.group(2)
    text = re.sub(r"\s*\|\s*head\s*$", "", text)          # a pager on the data: not part of the command
    env = {}
    while re.match(r"^[A-Z_]+=\S+ ", text):
        assignment, text = text.split(" ", 1)
        env.update([assignment.split("=", 1)])
    argv = shlex.split(text)
    assert argv[0] == "casda", example
    argv = argv[1:]
    if "--server" in argv:
        index = argv.index("--server")
        del argv[index:index + 2]
        argv += ["--server", emulator.url]
    elif argv[0] != "demo":          # the demo without --server runs its own emulator: that is the point
        argv += ["--server", emulator.url]
    if any(command in argv for command in ("cutouts", "sources", "images", "spectra", "slice", "stage",
                                           "download", "job", "demo")):
        argv += ["--poll-interval", "0.2"]
    return argv, stdin, env


@pytest.mark.parametrize("where, examples", EXAMPLES, ids=[where for where, _ in EXAMPLES])
def test_every_example_runs_against_the_emulator(where, examples, world, emulator, capsys, monkeypatch):
    for example in examples:
        argv, stdin, env = _prepared(example, world, emulator)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin or ""))
        code = cli.main(argv)
        out, err = capsys.readouterr()
        assert code == cli.EXIT_OK, f"{where}: {example!r} exited {code}: {err[-800:]}"
