"""``eve users add|remove|list|reset-password``: accounts of the platform's Prefect server.

eve users add carol                  # a person; prints a generated password once
eve users add ci --kind service      # automation (may start promotions, never review)
eve users reset-password carol       # a new generated password; the old one stops working
eve users remove carol
eve users list

Passwords are generated (or read from stdin with ``--password-stdin``) and only their bcrypt hash is
kept (``tasks/accounts.py``). A person logs in to the Prefect UI with ``name:password``, and uses the
CLI with ``PREFECT_API_AUTH_STRING=name:password`` or ``--user name``.
"""

from __future__ import annotations

import argparse
import sys


def _password_from_stdin(args: argparse.Namespace) -> str | None:
    return sys.stdin.readline().rstrip("\n") if args.password_stdin else None


def _add(args: argparse.Namespace) -> int:
    from tasks.accounts import AccountError, AccountStore

    try:
        password = AccountStore.default().add(args.name, kind=args.kind, password=_password_from_stdin(args))
    except AccountError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"created {args.kind} account {args.name}")
    if not args.password_stdin:
        print(f"password (shown once, not stored): {password}")
    print(f"Prefect UI login: {args.name}:<password>   CLI: PREFECT_API_AUTH_STRING='{args.name}:<password>'")
    return 0


def _reset(args: argparse.Namespace) -> int:
    from tasks.accounts import AccountError, AccountStore

    try:
        password = AccountStore.default().reset_password(args.name, password=_password_from_stdin(args))
    except AccountError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"new password for {args.name}" + ("" if args.password_stdin else f" (shown once): {password}"))
    return 0


def _remove(args: argparse.Namespace) -> int:
    from tasks.accounts import AccountError, AccountStore

    try:
        AccountStore.default().remove(args.name)
    except AccountError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"removed {args.name}; its logins stop working at once")
    return 0


def _list(args: argparse.Namespace) -> int:
    from tasks.accounts import AccountStore

    accounts = AccountStore.default().list()
    if not accounts:
        print("no accounts (the local server creates its service accounts; `eve users add NAME` adds a person)")
        return 0
    print(f"{'name':<20} {'kind':<8} {'origin':<9} created (UTC)")
    for account in accounts:
        print(f"{account.name:<20} {account.kind:<8} {account.origin:<9} {account.created_at}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("users", help="accounts of the platform's Prefect server")
    actions = parser.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create an account and print its generated password once")
    add.add_argument("name")
    add.add_argument("--kind", choices=["user", "service", "worker"], default="user",
                     help="user: a person (may review); service: automation; worker: a Prefect worker")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin instead")
    add.set_defaults(func=_add)
    reset = actions.add_parser("reset-password", help="issue a new password (the old one stops working)")
    reset.add_argument("name")
    reset.add_argument("--password-stdin", action="store_true", help="read the password from stdin instead")
    reset.set_defaults(func=_reset)
    remove = actions.add_parser("remove", help="delete an account")
    remove.add_argument("name")
    remove.set_defaults(func=_remove)
    actions.add_parser("list", help="list the accounts").set_defaults(func=_list)
