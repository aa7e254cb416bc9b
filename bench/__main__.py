"""Run every replicator benchmark at its default size and print a summary block for RESULTS.md."""

from __future__ import annotations

import argparse
import datetime
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

from bench import endpoint, initial_copy, latency, online, streaming, training, writeback
from bench import workload as w


class _Result(Protocol):
    def table(self) -> str: ...


_Runner = Callable[[argparse.Namespace], Sequence[_Result]]

BENCHMARKS: dict[str, tuple[Callable[[], argparse.ArgumentParser], _Runner]] = {
    "streaming": (streaming.parser, streaming.run),
    "latency": (latency.parser, latency.run),
    "initial_copy": (initial_copy.parser, initial_copy.run),
    "training": (training.parser, training.run),
    "endpoint": (endpoint.parser, endpoint.run),
    "writeback": (writeback.parser, writeback.run),
    "online": (online.parser, online.run),
}


def code_version() -> str:
    """``git describe`` of the benchmarked checkout, or a note that it is not one."""
    done = subprocess.run(
        ["git", "-C", str(w.CODE_ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    version = done.stdout.strip() if done.returncode == 0 else "not a git checkout"
    return f"{w.CODE_ROOT} ({version})"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated benchmarks to run (default all: {', '.join(BENCHMARKS)})",
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds per benchmark (default 3)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmarks: {', '.join(unknown)}")
    started = datetime.datetime.now(datetime.UTC)
    blocks: list[str] = []
    for name in chosen:
        make_parser, run = BENCHMARKS[name]
        w.say(f"running {name}")
        options = make_parser().parse_args(["--rounds", str(args.rounds)])
        blocks.extend(result.table() for result in run(options))
    finished = datetime.datetime.now(datetime.UTC)
    command = shlex.join([sys.executable, "-m", "bench", *(argv or sys.argv[1:])])
    print(f"## {started:%Y-%m-%d %H:%M} UTC ({(finished - started).seconds // 60} min)\n")
    print(f"- command: `{command}`")
    print(f"- code: {code_version()}")
    print(w.machine_info())
    print()
    print("\n\n".join(blocks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
