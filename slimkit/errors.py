"""Errors the engine raises on purpose, each with a stable machine-readable code.

The job service copies `code` into the failed job's `error.code`; the message is for humans and names the
lever to pull (a supported architecture, a valid ratio, a safetensors revision).
"""

from __future__ import annotations


class SlimError(Exception):
    """Base class: a failure the user can act on, as opposed to a bug."""

    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(SlimError):
    code = "invalid_argument"


class UnsupportedArchitecture(SlimError):
    code = "unsupported_architecture"


class NoSafetensors(SlimError):
    code = "no_safetensors"


class ModelNotFound(SlimError):
    code = "model_not_found"


class RevisionNotFound(SlimError):
    code = "revision_not_found"


class InvalidModel(SlimError):
    """The checkpoint itself is broken: corrupt safetensors, or a config its weights contradict."""

    code = "invalid_model"


class GatedOrUnauthorized(SlimError):
    code = "gated_or_unauthorized"


class HubUnavailable(SlimError):
    """The Hub could not be reached, or answered with a server error, while reading a model."""

    code = "hub_unavailable"


class SpeedupUnreachable(SlimError):
    """A speed-up target above what the most aggressive allowed allocation is predicted to reach."""

    code = "speedup_unreachable"

    def __init__(self, message: str, best: float) -> None:
        super().__init__(message)
        self.best = best


class TimingUnstable(SlimError):
    """Timings too noisy to trust, or a measurement contradicting the plan by more than the noise.

    `noise` is the relative uncertainty seen (0.23 for ±23 %), `bound` what was allowed, `repeats` how many
    interleaved rounds were timed before giving up.
    """

    code = "timing_unstable"

    def __init__(self, message: str, noise: float, bound: float, repeats: int) -> None:
        super().__init__(message)
        self.noise, self.bound, self.repeats = noise, bound, repeats


class ReloadMismatch(SlimError):
    code = "reload_mismatch"


class Cancelled(SlimError):
    """Raised between layers when the caller's cancel check says stop."""

    code = "cancelled"
