"""`cargohold admin trust ...`: the signature verification keys and pull policy of
namespaces (docs/security.md "Signed images").

    cargohold admin trust add-key NAMESPACE NAME --file KEY.pem   register a public key
    cargohold admin trust remove-key NAMESPACE NAME
    cargohold admin trust require-signature NAMESPACE on|off      the pull policy
    cargohold admin trust vuln-policy NAMESPACE --block-severity critical|high|medium|low|
                                     unknown|none [--allow CVE-ID ...] [--unscanned allow|deny]
    cargohold admin trust list [--json]

A key must parse as an ECDSA (P-256, P-384), RSA (2048 bits or more) or Ed25519 public key
before it is sent; the cluster stores its PEM text. Each change is in the activity log
(action `admin`, reference `trust:NAMESPACE`, the CLI user as actor).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from cargohold.config import ConfigError
from cargohold.metadata_api import BLOCK_SEVERITIES, UNSCANNED_RULES, VULN_ID


def add_parser(admin_sub: Any, nodes_default: str) -> argparse.ArgumentParser:
    trust = admin_sub.add_parser(
        "trust", help="signature verification keys and pull policy of namespaces"
    )
    verbs = trust.add_subparsers(dest="trust_verb", required=True)
    add_key = verbs.add_parser("add-key", help="register a PEM public key in a namespace")
    add_key.add_argument("namespace")
    add_key.add_argument("name", help="the key's name ([a-z0-9][a-z0-9._-]*)")
    add_key.add_argument("--file", required=True, help="PEM public key (ECDSA, RSA, Ed25519)")
    remove_key = verbs.add_parser("remove-key", help="remove a registered key")
    remove_key.add_argument("namespace")
    remove_key.add_argument("name")
    require = verbs.add_parser(
        "require-signature", help="pulls need a signature by one of the namespace's keys"
    )
    require.add_argument("namespace")
    require.add_argument("state", choices=("on", "off"))
    vuln = verbs.add_parser(
        "vuln-policy",
        help="refuse images with vulnerabilities at or above a severity (docs/supply-chain.md)",
    )
    vuln.add_argument("namespace")
    vuln.add_argument("--block-severity", required=True, choices=BLOCK_SEVERITIES)
    vuln.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="ID",
        help="an advisory id or alias (CVE-...) that never blocks (repeat; replaces the list)",
    )
    vuln.add_argument(
        "--unscanned", choices=UNSCANNED_RULES, default="allow", help="images without a report"
    )
    listing = verbs.add_parser("list", help="namespaces with keys or a pull policy")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    for one in (add_key, remove_key, require, vuln, listing):
        one.add_argument("--nodes", default=nodes_default, help="node gRPC addresses")
    return trust


def run(args: argparse.Namespace, cfg: Any, nodes: list[str]) -> int:
    from cargohold_cli.admin_access import _meta, cli_actor
    from gateway.signatures.cosign import UnsupportedKey, load_public_key

    meta = _meta(nodes, cfg)
    verb = args.trust_verb
    if verb == "add-key":
        try:
            pem = Path(args.file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {args.file}: {exc}") from None
        try:
            load_public_key(pem)
        except UnsupportedKey as exc:
            raise ConfigError(f"{args.file}: {exc}") from None
        asyncio.run(meta.trust_key_put(args.namespace, args.name, pem, cli_actor()))
    elif verb == "remove-key":
        asyncio.run(meta.trust_key_put(args.namespace, args.name, None, cli_actor()))
    elif verb == "require-signature":
        asyncio.run(meta.pull_policy_put(args.namespace, args.state == "on", cli_actor()))
    elif verb == "vuln-policy":
        allowed = tuple(a.strip() for a in args.allow if a.strip())
        bad = [a for a in allowed if not VULN_ID.fullmatch(a)]
        if bad:
            raise ConfigError(f"not an advisory id: {', '.join(bad)}")
        request = (args.namespace, args.block_severity, allowed, args.unscanned, cli_actor())
        asyncio.run(meta.vuln_policy_put(*request))
    else:
        infos = asyncio.run(meta.trust_list())
        if args.json:
            print(json.dumps([i.to_json() for i in infos], indent=2))
        else:
            for info in infos:
                required = "required" if info.require_signature else "not required"
                keys = ", ".join(sorted(info.keys)) or "-"
                allow = ",".join(info.allowlist) or "-"
                print(
                    f"{info.namespace:<24} signature {required:<13} keys: {keys}  "
                    f"block_severity {info.block_severity}  allowlist {allow}  "
                    f"unscanned {info.unscanned}"
                )
    return 0
