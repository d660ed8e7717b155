"""The errors `mnist-models` reports: one line for the user, one exit code per kind (docs/model-ops.md)."""

from __future__ import annotations


class OpsError(Exception):
    """A problem the user can act on. The CLI prints `error: <message>` and exits with `exit_code`."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(OpsError):
    """The model config file is missing, unreadable, not a ModelServerConfig, or lacks the model."""

    exit_code = 3


class ServerError(OpsError):
    """The model server is unreachable (deadline exceeded) or rejected a request."""

    exit_code = 4
    may_have_applied = False  # a deadline: the request may have taken effect all the same


class VersionNotFound(OpsError):
    """The requested version has no complete directory under the model base path."""

    exit_code = 5


class QualityGateFailed(OpsError):
    """The version's metrics.json accuracy is below --min-accuracy (or missing), more than --max-accuracy-drop
    below the stable version's, or (trained with feedback) not above stable's on the feedback holdout;
    --force overrides."""

    exit_code = 6


class LoadFailed(OpsError):
    """The server did not make the version AVAILABLE (load error or timeout); the config was reverted."""

    exit_code = 7


class NothingToRollBack(OpsError):
    """The history beside the config file holds no earlier stable version."""

    exit_code = 8


class GatewayError(OpsError):
    """The gateway is unreachable, too slow, refused the ops token, or answered something unexpected."""

    exit_code = 9


class RolloutConflict(OpsError):
    """Another rollout is running, or the stored rollout changed under this one (an --abort elsewhere)."""

    exit_code = 10


class GuardFailed(OpsError):
    """A rollout guard failed: the traffic went back to stable and the rollout is rolled back."""

    exit_code = 11


class RolloutInterrupted(OpsError):
    """SIGINT or SIGTERM stopped a rollout: the traffic went back to stable and the rollout is rolled back."""

    exit_code = 12


class NoRollout(OpsError):
    """`--resume` found no interrupted rollout to continue, or a stored one it cannot drive (inconsistent)."""

    exit_code = 13
