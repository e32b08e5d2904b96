"""``helios admin``: tenants, policies, API keys, gateways and resets over the REST API.

A thin client of the control plane's REST API (see docs/control-plane.md). The
admin key comes from ``HELIOS_ADMIN_KEY`` or a file, never from an argument,
which any user of the machine could read in the process list.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from helios.errors import InvalidRequest
from helios.jsonbody import unique_fields

DEFAULT_URL = "http://127.0.0.1:8081"
TIMEOUT_SECONDS = 10.0

_DESCRIPTION = """\
Manage a running Helios control plane: tenants, their policies and API keys,
live gateways, counter resets.

The admin key is read from HELIOS_ADMIN_KEY, or from --key-file FILE (its
first line). The control plane's address is --url or HELIOS_CONTROL_URL.
"""

_EPILOG = """\
examples:
  export HELIOS_ADMIN_KEY=...        # or --key-file /run/secrets/helios-admin
  helios admin tenants create acme --description "Acme Corp"
  helios admin policies put acme search --file search.toml
  helios admin policies put acme search --file search.toml --if-match 14
  helios admin keys issue acme --description billing
  helios admin --json tenants list

--if-match REVISION makes a write conditional (tenants update and delete,
policies put and delete): it happens only if the tenant or policy is still at
that revision (shown by "show" and "list"), else the control plane answers 409
and nothing changes. For policies put, --if-match 0 creates the policy only if
it does not exist yet.

exit status: 0 done, 1 the control plane refused or could not be reached,
2 wrong usage.
"""


class UsageError(Exception):
    """The command line or a file it names is wrong (exit status 2)."""


class ApiError(Exception):
    """The control plane answered with an error, or could not be reached (exit status 1)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helios admin",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("HELIOS_CONTROL_URL", DEFAULT_URL),
        help=f"the control plane's REST API (HELIOS_CONTROL_URL; default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--key-file", metavar="FILE", help="read the admin key from FILE (else HELIOS_ADMIN_KEY)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON, for machines")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tenants = commands.add_parser("tenants", help="list, create, show, update, delete tenants")
    tenant_actions = tenants.add_subparsers(dest="action", required=True, metavar="ACTION")
    tenant_actions.add_parser("list", help="every tenant")
    create = tenant_actions.add_parser("create", help="create a tenant")
    create.add_argument("name")
    create.add_argument("--description")
    tenant_actions.add_parser("show", help="one tenant").add_argument("name")
    update = tenant_actions.add_parser("update", help="change a tenant's description")
    update.add_argument("name")
    update.add_argument("--description", required=True)
    _if_match_option(update, "change it", "tenant")
    delete = tenant_actions.add_parser("delete", help="delete a tenant, its policies and keys")
    delete.add_argument("name")
    _if_match_option(delete, "delete it", "tenant")

    policies = commands.add_parser("policies", help="list, put, show, delete policies")
    policy_actions = policies.add_subparsers(dest="action", required=True, metavar="ACTION")
    policy_actions.add_parser("list", help="a tenant's policies").add_argument("tenant")
    put = policy_actions.add_parser("put", help="create or replace a policy from a file")
    put.add_argument("tenant")
    put.add_argument("resource")
    put.add_argument(
        "--file",
        required=True,
        metavar="FILE",
        help="the policy: a .toml file (one table) or a .json file (one object)",
    )
    _if_match_option(put, "write it", "policy", "; 0: only if there is none yet")
    for name, text in (("show", "one policy"), ("delete", "delete a policy")):
        action = policy_actions.add_parser(name, help=text)
        action.add_argument("tenant")
        action.add_argument("resource")
        if name == "delete":
            _if_match_option(action, "delete it", "policy")

    keys = commands.add_parser("keys", help="issue, list, revoke API keys")
    key_actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    issue = key_actions.add_parser("issue", help="issue a key (shown once)")
    issue.add_argument("tenant")
    issue.add_argument("--description")
    key_actions.add_parser("list", help="a tenant's keys").add_argument("tenant")
    revoke = key_actions.add_parser("revoke", help="revoke a key")
    revoke.add_argument("tenant")
    revoke.add_argument("id")

    commands.add_parser("gateways", help="the live gateways")
    reset = commands.add_parser(
        "reset",
        help="forget a tenant's counters on every gateway",
        description="Forget one tenant's counters on every gateway: of one resource, or of"
        " all. The tenant is a name, not a pattern (team-a, not team-*); it needs a record"
        " of its own or one of a tenant pattern that matches it.",
    )
    reset.add_argument("tenant", help="one tenant (not a pattern)")
    reset.add_argument(
        "--resource", help="only this resource, not a pattern (default: every resource)"
    )
    return parser


def _if_match_option(
    parser: argparse.ArgumentParser, action: str, what: str, zero: str = ""
) -> None:
    """``--if-match REVISION``: the write is sent with ``If-Match: "REVISION"``."""
    parser.add_argument(
        "--if-match",
        type=_revision,
        metavar="REVISION",
        help=f"{action} only if the {what} is still at REVISION (the revision show prints)"
        f"{zero}; else the answer is 409 and nothing changes",
    )


def _revision(value: str) -> int:
    """A revision for --if-match: its digits, or the ETag that carries it ("42")."""
    digits = value[1:-1] if len(value) > 2 and value[0] == value[-1] == '"' else value
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
        raise argparse.ArgumentTypeError(f"must be a revision such as 42, got {value!r}")
    return int(digits)


def _conditional(args: argparse.Namespace) -> dict[str, str]:
    """The If-Match header asked for with --if-match, if any."""
    return {} if args.if_match is None else {"If-Match": f'"{args.if_match}"'}


def main(argv: Sequence[str]) -> int:
    """Run one ``helios admin`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        key = _admin_key(args.key_file)
        with httpx.Client(
            base_url=args.url.rstrip("/"),
            headers={"X-API-Key": key},
            timeout=TIMEOUT_SECONDS,
        ) as client:
            admin = _Admin(client, args.url, as_json=args.json)
            admin.run(args)
    except UsageError as error:
        print(f"helios admin: {error}", file=sys.stderr)
        return 2
    except ApiError as error:
        print(f"helios admin: {error}", file=sys.stderr)
        return 1
    return 0


def _admin_key(key_file: str | None) -> str:
    if key_file is not None:
        try:
            lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"cannot read the key file {key_file}: {error}") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise UsageError(f"the key file {key_file} is empty")
        return key
    key = os.environ.get("HELIOS_ADMIN_KEY", "").strip()
    if not key:
        raise UsageError("no admin key: set HELIOS_ADMIN_KEY or pass --key-file FILE")
    return key


def read_policy(path: str) -> dict[str, Any]:
    """One policy from a file: a TOML table or a JSON object."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".toml", ".json"):
        raise UsageError(f"{path}: the policy file must end in .toml or .json")
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        if suffix == ".toml":
            document: object = tomllib.loads(data.decode("utf-8"))
        else:
            document = json.loads(data, object_pairs_hook=unique_fields)
    except InvalidRequest as error:  # a field given twice
        raise UsageError(f"{path}: {error.message}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as error:
        raise UsageError(f"{path} is not valid {suffix[1:].upper()}: {error}") from None
    if not isinstance(document, dict):
        raise UsageError(f"{path} must hold one JSON object")
    if "policies" in document:
        raise UsageError(
            f"{path} holds a policy file ([[policies]]); give one policy's fields"
            " (algorithm, limit, window, bands, ...) at the top level"
        )
    return document


def _segment(name: str) -> str:
    """``name`` as one path segment: every reserved character, and dots, escaped.

    A name like ``..`` or ``a/../b`` must reach the server as a name, never
    be resolved by the HTTP client into another path.
    """
    return quote(name, safe="").replace(".", "%2E")


def _tenant_path(tenant: str) -> str:
    return f"/v1/tenants/{_segment(tenant)}"


def _policy_path(tenant: str, resource: str) -> str:
    # '/' and '=' stay as they are: resources such as key1=value1/key2=value2.
    return f"{_tenant_path(tenant)}/policies/{_segment(resource)}"


class _Admin:
    """The commands, over one HTTP client."""

    def __init__(self, client: httpx.Client, url: str, *, as_json: bool) -> None:
        self.client = client
        self.url = url
        self.as_json = as_json

    def run(self, args: argparse.Namespace) -> None:
        commands: dict[tuple[str, str | None], Callable[[argparse.Namespace], None]] = {
            ("tenants", "list"): self.tenants_list,
            ("tenants", "create"): self.tenants_create,
            ("tenants", "show"): self.tenants_show,
            ("tenants", "update"): self.tenants_update,
            ("tenants", "delete"): self.tenants_delete,
            ("policies", "list"): self.policies_list,
            ("policies", "put"): self.policies_put,
            ("policies", "show"): self.policies_show,
            ("policies", "delete"): self.policies_delete,
            ("keys", "issue"): self.keys_issue,
            ("keys", "list"): self.keys_list,
            ("keys", "revoke"): self.keys_revoke,
            ("gateways", None): self.gateways,
            ("reset", None): self.reset,
        }
        commands[args.command, getattr(args, "action", None)](args)

    def send(
        self,
        method: str,
        path: str,
        body: object = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One request; an error answer or no answer raises :class:`ApiError`."""
        try:
            response = self.client.request(method, path, json=body, params=params, headers=headers)
        except httpx.HTTPError as error:
            raise ApiError(f"cannot reach the control plane at {self.url}: {error}") from None
        if response.status_code >= 400:
            raise ApiError(_error_message(response))
        return response

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One request; the JSON it answers with (None for an empty answer)."""
        response = self.send(method, path, body, params, headers)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                f"the control plane answered {response.status_code} without JSON"
            ) from None

    # Tenants.

    def tenants_list(self, args: argparse.Namespace) -> None:
        tenants: list[dict[str, Any]] = []
        after = ""
        while True:
            params = {"limit": "1000", **({"after": after} if after else {})}
            page = self.request("GET", "/v1/tenants", params=params)
            tenants += page["tenants"]
            if page["next"] is None:
                break
            after = page["next"]
        if self.as_json:
            _print_json({"tenants": tenants, "next": None})
            return
        _table(
            ["NAME", "REVISION", "CREATED", "DESCRIPTION"],
            [[t["name"], t["revision"], t["created_at"], t["description"]] for t in tenants],
        )

    def tenants_create(self, args: argparse.Namespace) -> None:
        body = {"name": args.name}
        if args.description is not None:
            body["description"] = args.description
        tenant = self.request("POST", "/v1/tenants", body)
        self._show(tenant, f"created tenant {tenant['name']}")

    def tenants_show(self, args: argparse.Namespace) -> None:
        self._show(self.request("GET", _tenant_path(args.name)))

    def tenants_update(self, args: argparse.Namespace) -> None:
        body = {"description": args.description}
        tenant = self.request("PATCH", _tenant_path(args.name), body, headers=_conditional(args))
        self._show(tenant, f"updated tenant {tenant['name']}")

    def tenants_delete(self, args: argparse.Namespace) -> None:
        self.request("DELETE", _tenant_path(args.name), headers=_conditional(args))
        self._done({"deleted": {"tenant": args.name}}, f"deleted tenant {args.name}")

    # Policies.

    def policies_list(self, args: argparse.Namespace) -> None:
        answer = self.request("GET", f"{_tenant_path(args.tenant)}/policies")
        if self.as_json:
            _print_json(answer)
            return
        _table(
            ["RESOURCE", "ALGORITHM", "BANDS", "SHADOW", "FAILURE MODE", "REVISION"],
            [
                [
                    p["resource"],
                    p["algorithm"],
                    _bands(p["bands"]),
                    "yes" if p["shadow"] else "no",
                    p["failure_mode"],
                    p["revision"],
                ]
                for p in answer["policies"]
            ],
        )

    def policies_put(self, args: argparse.Namespace) -> None:
        document = read_policy(args.file)
        path = _policy_path(args.tenant, args.resource)
        response = self.send("PUT", path, document, headers=_conditional(args))
        policy = response.json()
        verb = "created" if response.status_code == 201 else "replaced"
        self._show_policy(policy, f"{verb} policy {policy['tenant']}/{policy['resource']}")

    def policies_show(self, args: argparse.Namespace) -> None:
        self._show_policy(self.request("GET", _policy_path(args.tenant, args.resource)))

    def policies_delete(self, args: argparse.Namespace) -> None:
        self.request("DELETE", _policy_path(args.tenant, args.resource), headers=_conditional(args))
        self._done(
            {"deleted": {"tenant": args.tenant, "resource": args.resource}},
            f"deleted policy {args.tenant}/{args.resource}",
        )

    # API keys.

    def keys_issue(self, args: argparse.Namespace) -> None:
        body = {} if args.description is None else {"description": args.description}
        issued = self.request("POST", f"{_tenant_path(args.tenant)}/keys", body)
        print(
            "helios admin: store this key now; it is not shown again",
            file=sys.stderr,
        )
        if self.as_json:
            _print_json(issued)
            return
        print(f"issued API key {issued['id']} for tenant {issued['tenant']}:")
        print(issued["key"])

    def keys_list(self, args: argparse.Namespace) -> None:
        answer = self.request("GET", f"{_tenant_path(args.tenant)}/keys")
        if self.as_json:
            _print_json(answer)
            return
        _table(
            ["ID", "PREFIX", "CREATED", "DESCRIPTION"],
            [
                [k["id"], k["prefix"] + "…", k["created_at"], k["description"]]
                for k in answer["keys"]
            ],
        )

    def keys_revoke(self, args: argparse.Namespace) -> None:
        self.request("DELETE", f"{_tenant_path(args.tenant)}/keys/{quote(args.id, safe='')}")
        self._done(
            {"revoked": {"tenant": args.tenant, "id": args.id}},
            f"revoked API key {args.id} of tenant {args.tenant}",
        )

    # Gateways and resets.

    def gateways(self, args: argparse.Namespace) -> None:
        answer = self.request("GET", "/v1/gateways")
        if self.as_json:
            _print_json(answer)
            return
        _table(
            ["ID", "ADDRESS", "MODE", "VERSION", "REVISION", "STARTED"],
            [
                [g["id"], g["address"], g["mode"], g["version"], g["revision"], g["started_at"]]
                for g in answer["gateways"]
            ],
        )

    def reset(self, args: argparse.Namespace) -> None:
        body = {} if args.resource is None else {"resource": args.resource}
        record = self.request("POST", f"{_tenant_path(args.tenant)}/reset", body)
        what = "every resource" if record["resource"] is None else f"resource {record['resource']}"
        self._done(record, f"reset {record['id']}: counters of tenant {record['tenant']}, {what}")

    # Output.

    def _show(self, document: dict[str, Any], heading: str | None = None) -> None:
        if self.as_json:
            _print_json(document)
            return
        if heading:
            print(heading)
        width = max(len(name) for name in document)
        for name, value in document.items():
            print(f"  {name:<{width}}  {value}")

    def _show_policy(self, policy: dict[str, Any], heading: str | None = None) -> None:
        if self.as_json:
            _print_json(policy)
            return
        self._show({**policy, "bands": _bands(policy["bands"])}, heading)

    def _done(self, document: dict[str, Any], message: str) -> None:
        if self.as_json:
            _print_json(document)
        else:
            print(message)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
        field = body.get("field")
        where = f" (field: {field})" if isinstance(field, str) else ""
        return f"{response.status_code}: {message}{where}"
    return f"{response.status_code}: {response.reason_phrase or 'error'}"


def _bands(bands: list[dict[str, Any]]) -> str:
    parts = []
    for band in bands:
        text = f"{band['limit']}/{band['window']}"
        if "burst" in band and band["burst"] != band["limit"]:
            text += f" (burst {band['burst']})"
        parts.append(text)
    return ", ".join(parts)


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


def _table(headings: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(value) for value in row] for row in rows]
    widths = [
        max([len(heading), *(len(row[i]) for row in cells)]) for i, heading in enumerate(headings)
    ]
    for row in [headings, *cells]:
        print(
            "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        )
