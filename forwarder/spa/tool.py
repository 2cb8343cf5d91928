"""`python -m forwarder.spa_tool --dir DIR <command>`: run a lab SPA authority.

DIR holds everything the authority owns:

  authority.key           Ed25519 private key, PEM PKCS8, mode 0600
  authority.json          state: next serial, issued authorizations, revoked serials
  authority.pub           public key (PEM) to give to gateways and routers
  authorizations/N.auth   authorization with serial N (SPA_AUTHORIZATION bytes)
  services/NAME.key/.auth service identities made by `issue --new-service NAME`
  crl.bin                 the latest signed revocation list

See docs/protocol.md sections 6.4 and 11 for the byte layouts.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

from ..dataplane.names import InvalidName, Name
from ..spa import (
    Authority,
    Authorization,
    RevocationList,
    ServiceIdentity,
    SpaError,
    Validator,
    key_id,
    load_public_key,
    public_key_pem,
)

KEY_FILE = "authority.key"
PUB_FILE = "authority.pub"
CRL_FILE = "crl.bin"
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ToolError(Exception):
    """A user error: printed as one line, exit status 1."""


def _when(t: int) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load(d: Path) -> Authority:
    key = d / KEY_FILE
    if not d.is_dir():
        raise ToolError(f"no such directory {d}")
    if not key.exists():
        raise ToolError(f"no SPA authority in {d} (create one with: --dir {d} init)")
    try:
        return Authority.load(key)
    except FileNotFoundError as exc:
        raise ToolError(f"{exc.filename} is missing; refusing to guess the next serial") from None
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        raise ToolError(f"cannot load the authority in {d}: {exc}") from None


def _publish_crl(auth: Authority, d: Path, days: float = 7) -> bytes:
    crl = auth.revocation_list(valid_for_s=days * 86400)
    tmp = d / (CRL_FILE + ".tmp")
    tmp.write_bytes(crl)
    os.replace(tmp, d / CRL_FILE)
    auth.save(d / KEY_FILE)  # the new CRL sequence number
    return crl


def _status(rec_nb: int, rec_na: int, revoked: bool, now: float) -> str:
    if revoked:
        return "revoked"
    if now < rec_nb:
        return "not-yet-valid"
    return "valid" if now < rec_na else "expired"


# -- commands ---------------------------------------------------------------

def cmd_init(args: argparse.Namespace) -> None:
    d: Path = args.dir
    key = d / KEY_FILE
    next_serial = 1
    if key.exists():
        if not args.force:
            raise ToolError(f"{key} exists; use --force to replace the authority "
                            "(every authorization it issued becomes invalid)")
        try:  # keep serials increasing so old files never collide with new ones
            next_serial = int(json.loads(Authority.state_path(key).read_text())["next_serial"])
        except (OSError, ValueError, KeyError):
            pass
        (d / CRL_FILE).unlink(missing_ok=True)
    auth = Authority.generate()
    auth.next_serial = next_serial
    auth.save(key)
    (d / PUB_FILE).write_bytes(public_key_pem(auth.public_key))
    (d / "authorizations").mkdir(exist_ok=True)
    (d / "services").mkdir(exist_ok=True)
    print(f"authority {auth.key_id.hex()} created in {d}; trust {d / PUB_FILE}")


def cmd_issue(args: argparse.Namespace) -> None:
    d: Path = args.dir
    auth = _load(d)
    try:
        prefix = Name.parse(args.prefix)
    except InvalidName as exc:
        raise ToolError(f"bad prefix {args.prefix!r}: {exc}") from None
    if not args.days > 0:
        raise ToolError("--days must be positive")
    identity: Optional[ServiceIdentity] = None
    if args.new_service:
        if not _SERVICE_NAME.match(args.new_service):
            raise ToolError(f"bad service name {args.new_service!r} (letters, digits, . _ -)")
        svc_key = d / "services" / f"{args.new_service}.key"
        if svc_key.exists():
            raise ToolError(f"{svc_key} exists; use --service-key {svc_key}")
        identity = ServiceIdentity.generate()
        service_key = identity.public_key
    else:
        try:
            service_key = load_public_key(args.service_key)
        except OSError as exc:
            raise ToolError(f"cannot read {args.service_key}: {exc.strerror}") from None
        except ValueError as exc:
            raise ToolError(str(exc)) from None
    try:
        a = auth.issue(service_key, prefix, valid_for_s=args.days * 86400)
    except ValueError as exc:
        raise ToolError(f"cannot issue for {prefix}: {exc}") from None
    auth.save(d / KEY_FILE)  # first: a failure below skips a serial, never reuses one
    out = d / "authorizations" / f"{a.serial}.auth"
    out.parent.mkdir(exist_ok=True)
    out.write_bytes(a.encode())
    if identity is not None:
        identity.authorization = a
        identity.save(d / "services" / f"{args.new_service}.key")
    print(f"serial {a.serial}  prefix {a.prefix}  valid {_when(a.not_before)} .. "
          f"{_when(a.not_after)}  service key id {a.service_key_id.hex()}")
    print(f"wrote {out}" + (f" and {d / 'services' / args.new_service}.key/.auth"
                            if identity else ""))


def cmd_list(args: argparse.Namespace) -> None:
    auth = _load(args.dir)
    now = time.time()
    rows = [{"serial": r.serial, "prefix": r.prefix,
             "service_key_id": key_id(bytes.fromhex(r.service_key)).hex(),
             "not_before": r.not_before, "not_after": r.not_after,
             "status": _status(r.not_before, r.not_after, r.serial in auth.revoked, now)}
            for r in sorted(auth.issued.values(), key=lambda r: r.serial)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    if not rows:
        print("no authorizations issued")
        return
    width = max(len("prefix"), *(len(r["prefix"]) for r in rows))
    print(f"{'serial':>6}  {'prefix':<{width}}  {'service key id':<16}  "
          f"{'not before':<20}  {'not after':<20}  status")
    for r in rows:
        print(f"{r['serial']:>6}  {r['prefix']:<{width}}  {r['service_key_id']}  "
              f"{_when(r['not_before'])}  {_when(r['not_after'])}  {r['status']}")


def cmd_revoke(args: argparse.Namespace) -> None:
    auth = _load(args.dir)
    try:
        fresh = auth.revoke(args.serial)
    except KeyError:
        raise ToolError(f"unknown serial {args.serial}") from None
    crl = _publish_crl(auth, args.dir)
    seq = RevocationList.decode(crl).sequence
    print(f"serial {args.serial} {'revoked' if fresh else 'was already revoked'}; "
          f"published {args.dir / CRL_FILE} (sequence {seq})")


def cmd_crl(args: argparse.Namespace) -> None:
    auth = _load(args.dir)
    if not args.days > 0:
        raise ToolError("--days must be positive")
    raw = _publish_crl(auth, args.dir, args.days)
    crl = RevocationList.decode(raw)
    print(f"wrote {args.dir / CRL_FILE}: authority {crl.authority_id.hex()} sequence "
          f"{crl.sequence} issued {_when(crl.issued_at)} next update {_when(crl.next_update)}")
    print("revoked serials: " + (" ".join(map(str, crl.serials)) or "none"))


def cmd_show(args: argparse.Namespace) -> None:
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        raise ToolError(f"cannot read {args.file}: {exc.strerror}") from None
    trusted: List[bytes] = []
    if args.dir is not None and (args.dir / PUB_FILE).exists():
        trusted.append(load_public_key(args.dir / PUB_FILE))
    try:
        a = Authorization.decode(data)
    except SpaError:
        a = None
    if a is None:
        try:
            crl = RevocationList.decode(data)
        except SpaError:
            raise ToolError(f"{args.file} is neither an SPA authorization nor a "
                            "revocation list") from None
        info = {"kind": "revocation list", "authority_id": crl.authority_id.hex(),
                "sequence": crl.sequence, "issued_at": _when(crl.issued_at),
                "next_update": _when(crl.next_update), "revoked": list(crl.serials)}
        if trusted:
            try:
                Validator(trusted).load_revocation_list(data)
                info["signature"] = "ok"
            except SpaError as exc:
                info["signature"] = exc.reason
    else:
        info = {"kind": "authorization", "serial": a.serial, "prefix": a.prefix.text,
                "not_before": _when(a.not_before), "not_after": _when(a.not_after),
                "service_key": a.service_key.hex(), "service_key_id": a.service_key_id.hex(),
                "authority_id": a.authority_id.hex(), "bytes": len(data)}
        if trusted:
            v = Validator(trusted)
            crl_file = args.dir / CRL_FILE
            try:
                if crl_file.exists():
                    v.load_revocation_list(crl_file.read_bytes())
                v.check_authorization(data, a.prefix)
                info["check"] = "valid"
            except SpaError as exc:
                info["check"] = exc.reason
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        for k, v in info.items():
            print(f"{k:>15}: {' '.join(map(str, v)) if isinstance(v, list) else v}")


# -- argument parsing -------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    # --dir is accepted before or after the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=argparse.SUPPRESS,
                        help="the authority's directory (default: $DMSC_SPA_DIR)")
    p = argparse.ArgumentParser(prog="python -m forwarder.spa_tool", parents=[common],
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str = "") -> argparse.ArgumentParser:
        """A subcommand; its one-line help doubles as its description."""
        return sub.add_parser(name, parents=[common], help=help,
                              description=description or help[0].upper() + help[1:] + ".")

    s = command("init", "create the authority key and state")
    s.add_argument("--force", action="store_true",
                   help="replace an existing authority (its authorizations become invalid)")
    s.set_defaults(func=cmd_init)

    s = command("issue", "issue an authorization for a prefix",
                "Sign an authorization letting one service key use "
                "PREFIX and every name below it.")
    s.add_argument("prefix", metavar="PREFIX", help="authorized subtree, e.g. /shop/cart")
    who = s.add_mutually_exclusive_group(required=True)
    who.add_argument("--service-key", metavar="FILE",
                     help="the service's key: PEM public or private key, 32 raw bytes or hex")
    who.add_argument("--new-service", metavar="NAME",
                     help="generate DIR/services/NAME.key and issue for it (NAME.auth beside)")
    s.add_argument("--days", type=float, default=30, help="validity in days (default 30)")
    s.set_defaults(func=cmd_issue)

    s = command("list", "list issued authorizations and status")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_list)

    s = command("revoke", "revoke a serial and re-publish DIR/crl.bin")
    s.add_argument("serial", metavar="SERIAL", type=int, help="serial number to revoke")
    s.set_defaults(func=cmd_revoke)

    s = command("crl", "publish a fresh signed revocation list to DIR/crl.bin")
    s.add_argument("--days", type=float, default=7,
                   help="days until the list's next-update time (default 7)")
    s.set_defaults(func=cmd_crl)

    s = command("show", "decode an authorization (or revocation list) file",
                "Decode FILE; with --dir, also check it against that authority and "
                "its crl.bin.")
    s.add_argument("file", metavar="FILE", help="an .auth file or crl.bin")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_show)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if getattr(args, "dir", None) is None:
        env = os.environ.get("DMSC_SPA_DIR")
        args.dir = Path(env) if env else None
    if args.dir is None and args.command != "show":
        p.error("--dir DIR is required (or set DMSC_SPA_DIR)")
    try:
        if args.command == "init":
            args.dir.mkdir(parents=True, exist_ok=True)
        args.func(args)
    except ToolError as exc:
        print(f"spa_tool: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"spa_tool: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
