"""Repository names and tags, validated exactly as the OCI distribution-spec says."""

from __future__ import annotations

import re

from cargohold.errors import NameInvalid, TagInvalid

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
# Used with `fullmatch`: `$` would also accept a trailing "\n".
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*", re.ASCII)
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}", re.ASCII)
# A name plus the registry host must fit in 255 characters; keep room for a host.
MAX_NAME_LENGTH = 255


def validate_name(name: str) -> str:
    if not name or len(name) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(name):
        raise NameInvalid(detail={"name": name})
    return name


def validate_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag or ""):
        raise TagInvalid("invalid tag", detail={"tag": tag})
    return tag
