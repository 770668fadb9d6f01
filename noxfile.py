"""Developer sessions: ``nox -s tests chaos real_network lint typecheck docs bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The default test suite (the README's test command): unit, simulation, fast real-network."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "not slow", *session.posargs)


@nox.session(python=PYTHON)
def chaos(session: nox.Session) -> None:
    """Many seeds under full chaos (swarm mode): slow, run before releases and nightly."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "slow and not real_network", "-p", "no:randomly", *session.posargs)


@nox.session(python=PYTHON)
def real_network(session: nox.Session) -> None:
    """Every real-socket test (loopback only), on trio and asyncio."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "real_network", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site, warnings as errors (``-- serve`` to preview it)."""
    session.install("-e", ".[docs]")
    session.env["NO_MKDOCS_2_WARNING"] = "1"  # Material's banner about MkDocs 2, not ours
    if session.posargs == ["serve"]:
        session.run("mkdocs", "serve")
    else:
        session.run("mkdocs", "build", "--strict", *session.posargs)
        session.run("python", "docs/check_reference.py", "site")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Ratio benchmarks against raw baselines measured in the same run."""
    # workers runs a Dask LocalCluster too; vs_detangle compares with detangle.
    session.install("-e", ".[dask,bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(python=PYTHON)
def bench_versions(session: nox.Session) -> None:
    """Round trips of this checkout against a revision: ``nox -s bench_versions -- REV``."""
    session.install("-e", ".")
    session.run("python", "-m", "benchmarks.versions", *session.posargs)


@nox.session(python=PYTHON)
def html(session: nox.Session) -> None:
    """The HTML report in a real headless Chromium (installs Debian's chromium if missing)."""
    import shutil

    if shutil.which("chromium") is None:
        session.run("apt-get", "install", "-y", "-qq", "chromium", external=True)
    session.install("-e", ".[test]")
    session.run("pytest", "tests/sim/test_html_report.py", "-rs", *session.posargs)
