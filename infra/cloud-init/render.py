"""Fill in infra/cloud-init/user-data.yaml: the deploy user's SSH key(s), the domain, the ACME e-mail, the repository
and the ref to deploy, and print the user-data to paste into the VPS provider's "user data" box.

    python3 infra/cloud-init/render.py --ssh-key-file ~/.ssh/id_ed25519.pub --domain media.example.com \\
        --email ops@example.com --repo https://github.com/OWNER/ai-media-analysis.git --ref main > user-data.yaml

Values are checked before anything is written (they end up in git, useradd and deploy/.env arguments on the VPS),
and are substituted into the parsed document, never spliced into its text, so no value can change its structure.
Needs only Python 3 and PyYAML.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).with_name("user-data.yaml")
HEADER = "#cloud-config"
SSH_KEY_PLACEHOLDER = "REPLACE_WITH_SSH_PUBLIC_KEY"
PLACEHOLDER_PREFIX = "REPLACE_WITH_"

_DOMAIN = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,63}$")
_REPO = re.compile(r"^(?:https://|git@)[A-Za-z0-9._~:/@+-]+$")
# A branch, tag or commit that git cannot mistake for an option.
_REF = re.compile(r"^[A-Za-z0-9._/][A-Za-z0-9._/-]*$")
_SSH_KEY = re.compile(
    r"^(?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}(?: [^\n]*)?$"
)


@dataclass(frozen=True)
class Deployment:
    """What one VPS is set up with."""

    ssh_keys: tuple[str, ...]
    domain: str
    email: str
    repo: str
    ref: str


class RenderError(ValueError):
    """A value that cannot go into the user-data, with the reason."""


def validate(deployment: Deployment) -> None:
    """Raise RenderError naming the first value of ``deployment`` that has the wrong shape."""
    if not deployment.ssh_keys:
        raise RenderError("no SSH public key: the deploy user could not log in")
    for key in deployment.ssh_keys:
        if not _SSH_KEY.match(key):
            raise RenderError(f"not an OpenSSH public key line: {key[:40]!r}")
    checks = (
        (_DOMAIN, deployment.domain, "--domain must be a lower-case DNS name"),
        (_EMAIL, deployment.email, "--email is not an e-mail address"),
        (_REPO, deployment.repo, "--repo must be an https:// or git@ URL"),
        (_REF, deployment.ref, "--ref must be a branch, tag or commit"),
    )
    for pattern, value, message in checks:
        if not pattern.match(value):
            raise RenderError(f"{message}: {value!r}")


def _substitute(node: Any, values: dict[str, str], ssh_keys: Sequence[str]) -> Any:
    if isinstance(node, dict):
        return {key: _substitute(value, values, ssh_keys) for key, value in node.items()}
    if isinstance(node, list):
        items: list[Any] = []
        for item in node:
            if item == SSH_KEY_PLACEHOLDER:
                items.extend(ssh_keys)
            else:
                items.append(_substitute(item, values, ssh_keys))
        return items
    if isinstance(node, str):
        return values.get(node, node)
    return node


def _placeholders_left(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [p for value in node.values() for p in _placeholders_left(value)]
    if isinstance(node, list):
        return [p for item in node for p in _placeholders_left(item)]
    return [node] if isinstance(node, str) and PLACEHOLDER_PREFIX in node else []


def render(template: str, deployment: Deployment) -> str:
    """The user-data for ``deployment``: ``template`` with every ``REPLACE_WITH_...`` value filled in."""
    validate(deployment)
    document = yaml.safe_load(template)
    values = {
        "REPLACE_WITH_DOMAIN": deployment.domain,
        "REPLACE_WITH_EMAIL": deployment.email,
        "REPLACE_WITH_REPO_URL": deployment.repo,
        "REPLACE_WITH_REF": deployment.ref,
    }
    rendered = _substitute(document, values, deployment.ssh_keys)
    left = _placeholders_left(rendered)
    if left:
        raise RenderError(f"the template has placeholders render.py does not know: {sorted(set(left))}")
    body = yaml.safe_dump(rendered, sort_keys=False, default_flow_style=None, width=1000)
    return f"{HEADER}\n# Rendered from infra/cloud-init/user-data.yaml for {deployment.domain}.\n{body}"


def read_ssh_keys(path: Path) -> tuple[str, ...]:
    """The public key lines of an ``authorized_keys``-style file (blank lines and comments skipped)."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the rendered user-data, or the reason it cannot be rendered (exit status 2)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--ssh-key-file", type=Path, required=True, help="public key file, e.g. ~/.ssh/id_ed25519.pub")
    parser.add_argument("--domain", required=True, help="DNS name that points at the VPS")
    parser.add_argument("--email", required=True, help="contact address for Let's Encrypt")
    parser.add_argument("--repo", required=True, help="git URL of the project to deploy")
    parser.add_argument("--ref", default="main", help="branch, tag or commit to deploy (default: main)")
    parser.add_argument("--template", type=Path, default=TEMPLATE, help=argparse.SUPPRESS)
    parser.add_argument("-o", "--output", type=Path, help="write here instead of standard output")
    args = parser.parse_args(argv)
    try:
        deployment = Deployment(read_ssh_keys(args.ssh_key_file), args.domain, args.email, args.repo, args.ref)
        text = render(args.template.read_text(encoding="utf-8"), deployment)
    except (RenderError, OSError) as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
