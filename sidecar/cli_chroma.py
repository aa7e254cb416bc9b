"""The ``chroma`` command: verify a Chroma collection against its table, or rebuild it."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from mirror.errors import ConfigError, SidecarError
from sidecar import config, masking


def add_parsers(commands: argparse._SubParsersAction) -> None:
    chroma = commands.add_parser(
        "chroma",
        help="the Chroma collections kept equal to tables ([[chroma]]): verify, rebuild",
        description=(
            "Ask the running daemon (at --metrics-host:--metrics-port) about the Chroma"
            " collections of the config file's [[chroma]] sections."
        ),
    )
    actions = chroma.add_subparsers(dest="chroma_action", metavar="ACTION", required=True)
    for name, text in [
        ("verify", "compare every record of a collection with its table's row (ids, embeddings,"
                   " documents, metadata) and print what differs"),
        ("rebuild", "make a collection equal to its table again: what a verify finds different"
                    " is deleted and added again from the mirror, extra records deleted, missing"
                    " ones added; a collection of another distance space is made anew"),
    ]:  # fmt: skip
        action = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        action.add_argument("--config", help="TOML file with the settings")
        action.add_argument(
            "--collection", help="the collection (default: every [[chroma]] collection)"
        )
        for setting in ("metrics_host", "metrics_port"):
            found = next(s for s in config.SETTINGS if s.name == setting)
            action.add_argument(
                "--" + setting.replace("_", "-"), dest=setting, type=found.kind, default=None,
                help=f"{found.help} of the running daemon",
            )  # fmt: skip
        action.add_argument("--json", action="store_true", help="print JSON")
        action.set_defaults(run=_chroma)


def _chroma(args: argparse.Namespace) -> int:
    flags = {s.name: getattr(args, s.name, None) for s in config.SETTINGS}
    settings = config.load(flags, args.config)
    query = f"?collection={urllib.parse.quote(args.collection)}" if args.collection else ""
    url = (
        f"http://{settings['metrics_host']}:{settings['metrics_port']}"
        f"/chroma/{args.chroma_action}{query}"
    )
    answer = _post(url)
    if args.json:
        print(json.dumps(answer, indent=2, default=str))
        return 0
    for name, done in answer.items():
        print(f"{name}: {_summary(args.chroma_action, done)}")
    return 0


def _post(url: str) -> dict[str, Any]:
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=3600) as reply:
            return dict(json.loads(reply.read()))
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read()
        if exc.code == 404:
            raise ConfigError(
                f"the daemon at {url.split('/chroma')[0]} keeps no Chroma collection: start"
                " pgml-sidecar run with [[chroma]] sections in its --config"
            ) from None
        try:
            reason = json.loads(body).get("error", body.decode(errors="replace"))
        except ValueError:
            reason = body.decode(errors="replace")
        raise SidecarError(masking.mask(str(reason))) from None
    except OSError as exc:
        raise ConfigError(
            f"no daemon answers at {url.split('/chroma')[0]} ({getattr(exc, 'reason', exc)}):"
            " start pgml-sidecar run, or give the --metrics-host and --metrics-port it serves on"
        ) from None


def _summary(action: str, done: dict[str, Any] | None) -> str:
    if not done:
        return "nothing done"
    if action == "verify":
        return _drift(done)
    if done.get("recreated"):
        return f"made anew (another distance space), {done.get('rows')} records loaded"
    fixed, after = done["fixed"], done.get("after") or {}
    return (
        f"rebuilt: {fixed['extra']} extra deleted, {fixed['changed']} changed added again,"
        f" {fixed['missing']} missing added; now {_drift(after)}"
    )


def _drift(drift: dict[str, Any]) -> str:
    if not drift.get("rows"):
        return f"equal to its table ({drift.get('records_checked', 0)} records checked)"
    return (
        f"drifted: {drift['missing']} missing, {drift['extra']} extra, {drift['changed']}"
        f" changed (e.g. ids {', '.join(drift['examples'])})"
    )
