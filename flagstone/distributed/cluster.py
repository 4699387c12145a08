"""Connecting to a Ray cluster (or starting a local one) and the errors shard calls can end in."""
from __future__ import annotations

from typing import Any

from flagstone.errors import FlagstoneError, require_extra


class ClusterError(FlagstoneError):
    """The Ray cluster cannot be reached or refused the work."""


class ShardUnavailableError(FlagstoneError):
    """A shard did not answer within the deadline on any of its replicas."""


def require_ray() -> Any:
    """The ``ray`` module, or MissingDependencyError naming the extra."""
    require_extra("ray", ("ray",), "distributed work needs")
    import ray

    return ray


def connect(address: str | None = None, *, num_cpus: int | None = None) -> Any:
    """Join the cluster at ``address`` ("auto", "ray://host:10001", "host:6379"), or start a local one when
    it is None; a process already connected keeps its connection. Returns the ``ray`` module."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    # workers' output stays in Ray's log files (a worker's exception still reaches the caller): actors that
    # Ray stops at the end print abort traces that would bury the CLI's own output
    try:
        if address is None:
            # "local": a new cluster of our own, never one another process on this machine happens to run
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING",
                     log_to_driver=False)
        else:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    except ConnectionError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None
    return ray


def actor_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """The exceptions that mean "this actor (or its node) did not answer": retry elsewhere or report it."""
    from ray import exceptions

    return (exceptions.GetTimeoutError, exceptions.ActorUnavailableError, exceptions.ActorDiedError,
            exceptions.RayActorError, exceptions.NodeDiedError, exceptions.ObjectLostError,
            exceptions.OwnerDiedError, exceptions.WorkerCrashedError)
