"""``eve keys show|rotate``: the platform's signing keys (``tasks/signing.py``, docs/security.md).

eve keys show                 # fingerprints of the current and retired keys
eve keys rotate platform      # new key; the old public key stays trusted for what it signed

Publish the fingerprints to auditors out of band: ``eve audit verify`` trusts the public keys in the
keys directory, ``git tag -v`` an allowed-signers file (``eve keys show --allowed-signers``).
"""

from __future__ import annotations

import argparse


def _show(args: argparse.Namespace) -> int:
    from tasks.signing import KEY_NAMES, KeyRing

    keyring = KeyRing.default()
    if args.allowed_signers:
        print(keyring.allowed_signers("platform"), end="")
        return 0
    print(f"keys directory {keyring.keys_dir}")
    for name in KEY_NAMES:
        trusted = list(keyring.trusted_keys(name))
        if not trusted:
            print(f"  {name:<9} (not created yet)")
            continue
        held = "private key held" if keyring.holds(name) else "public key only"
        print(f"  {name:<9} current {trusted[0]} ({held}); retired: {', '.join(trusted[1:]) or '-'}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from tasks.signing import KeyRing

    old, new = KeyRing.default().rotate(args.name)
    print(f"{args.name}: new key {new}; {old or 'no'} old key kept as retired (still verifies what it signed)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("keys", help="the platform's signing keys")
    actions = parser.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="fingerprints of the keys")
    show.add_argument("--allowed-signers", action="store_true", help="print an ssh allowed-signers file for git tag -v")
    show.set_defaults(func=_show)
    rotate = actions.add_parser("rotate", help="replace a key (the old public key stays trusted)")
    rotate.add_argument("name", choices=["platform", "gateway"])
    rotate.set_defaults(func=_rotate)
