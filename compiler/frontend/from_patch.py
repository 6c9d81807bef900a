"""The spec a patch carries (``erasec.spec``) as a ``Spec``: what compose, retarget, eval and
verify's efficacy check re-lower. Its own module so that those commands share it without importing
one another (compose imports verify's target check; verify's efficacy check needs the spec)."""

from __future__ import annotations

import yaml

from erasec.compiler.frontend.presets import PRESETS

from .reader import parse_spec
from .spec import Spec


def spec_from_dict(data: dict, source: str) -> Spec:
    """A ``Spec`` from canonical spec data (``erasec.spec``), checked like a spec file."""
    data = dict(data)
    options = {key: value for key, value in (data.get("options") or {}).items() if value is not None}
    if options:
        data["options"] = options
    else:
        data.pop("options", None)
    if data.get("model") is None:
        data.pop("model", None)
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    return parse_spec(text, source=source, base_dir=None, methods=tuple(PRESETS))  # a patch's spec reads no files
