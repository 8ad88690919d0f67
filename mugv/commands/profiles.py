"""Which commands a config profile is for, so that a profile given to another command is named as
such (`mugv train --config vae_tiny`) instead of reported by its first key the command lacks."""

from __future__ import annotations

import importlib

from mugv.config import ConfigError, from_dict, load_profile_dict

# commands -> the module and dataclass their profiles are validated against, and how to run one
PROFILE_KINDS: dict[str, tuple[str, str, str]] = {
    "mugv train": ("mugv.config", "RunConfig", "mugv train --config {}"),
    "mugv vae": ("mugv.vae_train.config", "VAERunConfig", "mugv vae train --config {}"),
    "mugv curate": ("mugv.curate.config", "CurateConfig", "mugv curate INPUT --out DIR --config {}"),
}


def _fits(data: dict, kind: str) -> bool:
    module, name, _ = PROFILE_KINDS[kind]
    try:
        from_dict(getattr(importlib.import_module(module), name), data)
    except ConfigError:
        return False
    return True


def reject_foreign_profile(profile: str, kind: str) -> None:
    """Called when `profile` failed to load for the `kind` commands: raise a ConfigError naming
    the commands it is for when it is valid only as another kind; else return, and the caller
    re-raises its own error."""
    try:
        data = load_profile_dict(profile)
    except ConfigError:
        return
    if _fits(data, kind):
        return  # the profile is fine; what the command added to it is not
    for other, (_, _, usage) in PROFILE_KINDS.items():
        if other != kind and _fits(data, other):
            raise ConfigError(f"profile {profile!r} is a `{other}` profile, not a `{kind}` one: "
                              f"use it as `{usage.format(profile)}`")
