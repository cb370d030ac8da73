"""Data-parallel runs: one process per device, started by ``torchrun`` or ``accelerate launch``.

The launcher starts ``WORLD_SIZE`` copies of ``anchor-flow run`` (on one machine or several)
and gives each its ``RANK`` and ``LOCAL_RANK``; :func:`start_ranks` joins them in a
``torch.distributed`` process group and :class:`Ranks` is what the run needs of it:

* :meth:`Ranks.shard` — this rank's consecutive part of a list (prompts, seeds); the parts of
  ranks ``0..N-1`` in order are the list;
* :meth:`Ranks.agree` — every rank computes, and if any rank failed every rank raises (the
  checks before the folder exists: all ranks end with the same one-line error);
* :meth:`Ranks.gather` — every rank computes its part; rank 0 receives the parts in rank order
  (a failure on any rank is raised on rank 0, the others learn of it from the next command);
* :meth:`Ranks.send` / :meth:`Ranks.receive` — rank 0 tells the others what to do next (run
  an experiment, finish, or fail with rank 0's error); the others wait for nothing else, so a
  failure on rank 0 between two exchanges never leaves them hanging.

The ranks exchange only results (small, pickled, on the CPU), so the process group is
``gloo`` even when the models run on GPUs: it works on any machine and across nodes, and no
CUDA memory is spent on the exchange. Each rank's model goes to ``cuda:LOCAL_RANK`` unless
``--device``/``--device-map`` says otherwise (:func:`rank_device`).

Deliberately not here: what is sharded and how results are joined (the steps and
:mod:`anchor_flow.run.shards`); scheduling (torchrun, accelerate or SLURM start the processes).
"""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from anchor_flow.errors import AnchorFlowError

__all__ = [
    "TIMEOUT",
    "DistributedRunError",
    "Ranks",
    "lost_ranks",
    "rank_device",
    "shard_bounds",
    "start_ranks",
    "stop_ranks",
]

T = TypeVar("T")

#: How long a rank waits for the others: rank 0 alone writes files, renders the report, times
#: Table 3 and runs the null model while the others wait for its next command.
TIMEOUT = timedelta(hours=6)


class DistributedRunError(RuntimeError):
    """Another rank failed with an error that is not a user error; ``trace`` is its traceback."""

    def __init__(self, message: str, trace: str = "") -> None:
        super().__init__(message)
        self.trace = trace


def shard_bounds(n: int, rank: int, world_size: int) -> range:
    """The indices of rank ``rank``'s consecutive part of ``n`` items (sizes differ by <= 1).

    Example:
        >>> [list(shard_bounds(5, r, 2)) for r in range(2)]
        [[0, 1], [2, 3, 4]]
    """
    if not 0 <= rank < world_size:
        raise AnchorFlowError(f"rank={rank}, world_size={world_size}; expected 0 <= rank < size")
    return range(n * rank // world_size, n * (rank + 1) // world_size)


@dataclass(frozen=True)
class _Failure:
    """What a rank sends instead of its result when its part raised."""

    rank: int
    kind: str
    message: str
    user: bool  # an AnchorFlowError: a one-line error, exit code 2
    trace: str

    @classmethod
    def of(cls, rank: int, error: BaseException) -> _Failure:
        passed_on = getattr(error, "failure", None)  # another rank's failure, raised here
        if isinstance(passed_on, _Failure):
            return passed_on
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        message = " ".join(str(error).split())
        return cls(rank, type(error).__name__, message, isinstance(error, AnchorFlowError), trace)

    def error(self) -> Exception:
        """The exception a rank that did not fail raises for this failure."""
        error: Exception
        if self.user:
            error = AnchorFlowError(f"rank {self.rank}: {self.message}")
        else:
            error = DistributedRunError(
                f"rank {self.rank} failed: {self.kind}: {self.message}", self.trace
            )
        setattr(error, "failure", self)  # noqa: B010 (read back by _Failure.of)
        return error


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a run (one rank, the default: no process group).

    Example:
        >>> Ranks().shard([1, 2, 3]), Ranks(rank=1, world_size=2).shard([1, 2, 3])
        ((0, [1, 2, 3]), (1, [2, 3]))
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        """Rank 0: validates, holds the folder's lock, writes every file, renders the report."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    @classmethod
    def current(cls) -> Ranks:
        """The ranks of the default process group if one is initialised, else one rank."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return cls(dist.get_rank(), dist.get_world_size(), local)

    def shard(self, items: Sequence[T]) -> tuple[int, list[T]]:
        """The index of this rank's first item and its consecutive part of ``items``."""
        part = shard_bounds(len(items), self.rank, self.world_size)
        return part.start, [items[i] for i in part]

    def agree(self, compute: Callable[[], T]) -> T:
        """``compute()`` on every rank; if any rank failed, every rank raises (see module doc)."""
        value, error = _attempt(compute)
        if not self.parallel:
            return _unwrap(value, error)
        failure = None if error is None else _Failure.of(self.rank, error)
        first = next((f for f in self.everyone(failure) if f is not None), None)
        if first is not None and error is None:
            raise first.error()
        return _unwrap(value, error)  # this rank's own error keeps its type and traceback

    def everyone(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank (a collective call)."""
        if not self.parallel:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def gather(self, compute: Callable[[], T]) -> list[T] | None:
        """Every rank's ``compute()`` on rank 0, in rank order (None on the other ranks).

        No rank raises before the exchange; rank 0 then raises the first failure (its own
        exception if it failed), the others return and wait for rank 0's next command.
        """
        value, error = _attempt(compute)
        if not self.parallel:
            return [_unwrap(value, error)]
        import torch.distributed as dist

        sent = _Value(value) if error is None else _Failure.of(self.rank, error)
        received: list[Any] | None = [None] * self.world_size if self.leader else None
        dist.gather_object(sent, received, dst=0)
        if received is None:
            return None
        _unwrap(value, error)
        failed = next((r for r in received if isinstance(r, _Failure)), None)
        if failed is not None:
            raise failed.error()
        return [r.value for r in received]

    def send(self, command: tuple[str, Any]) -> None:
        """Rank 0: tell the other ranks what to do next (a no-op with one rank)."""
        if self.parallel:
            import torch.distributed as dist

            dist.broadcast_object_list([command], src=0)

    def receive(self) -> tuple[str, Any]:
        """The other ranks: rank 0's next command."""
        import torch.distributed as dist

        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        return kind, value

    def fail(self, error: BaseException) -> None:
        """Rank 0: tell the other ranks that the run failed with ``error``."""
        self.send(("fail", _Failure.of(self.rank, error)))

    def follow(self, run_step: Callable[[str], object]) -> Any:
        """The other ranks: run the experiments rank 0 names until it says done or failed.

        Returns rank 0's last value (the run record); raises rank 0's error when it failed.
        """
        while True:
            kind, value = self.receive()
            if kind == "step":
                run_step(value)
            elif kind == "done":
                return value
            else:
                raise value.error()


@dataclass(frozen=True)
class _Value:
    value: Any


def _attempt(compute: Callable[[], T]) -> tuple[T | None, Exception | None]:
    try:
        return compute(), None
    except Exception as error:  # sent to the other ranks; Ctrl-C and exits are not caught
        return None, error


def _unwrap(value: T | None, error: Exception | None) -> T:
    if error is not None:
        raise error
    return value  # type: ignore[return-value]


def start_ranks() -> Ranks:
    """Join the launcher's process group when ``WORLD_SIZE`` > 1, else one rank.

    torchrun and accelerate launch set ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT``; an already initialised default group is used as is.

    Raises:
        AnchorFlowError: ``WORLD_SIZE`` is not an integer, or the group cannot start.
    """
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(text)
    except ValueError:
        raise AnchorFlowError(f"WORLD_SIZE={text!r}; expected a positive integer") from None
    if size <= 1:
        return Ranks()
    import torch.distributed as dist

    if not dist.is_initialized():
        try:
            dist.init_process_group("gloo", timeout=TIMEOUT)
        except (ValueError, RuntimeError) as error:
            raise AnchorFlowError(
                f"WORLD_SIZE={size} but the process group did not start ({error}); start "
                "data-parallel runs with torchrun or accelerate launch"
            ) from error
    ranks = Ranks.current()
    _PEERS.clear()
    _PEERS.update(enumerate(ranks.everyone((socket.gethostname(), os.getpid()))))
    return ranks


# Every rank's host and process id (start_ranks): a rank that dies can be named.
_PEERS: dict[int, tuple[str, int]] = {}


def lost_ranks() -> list[str]:
    """The ranks on this machine whose process has ended, e.g. ``["rank 1 (pid 4242)"]``.

    Ranks on other machines cannot be probed from here and are never listed.
    """
    host, lost = socket.gethostname(), []
    for rank, (where, pid) in sorted(_PEERS.items()):
        if where == host and pid != os.getpid() and not _alive(pid):
            lost.append(f"rank {rank} (pid {pid})")
    return lost


def _alive(pid: int) -> bool:
    try:  # a zombie (ended, not yet reaped by the launcher) counts as ended
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def stop_ranks() -> None:
    """Leave the default process group, if one is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: str | None, device_map: object, ranks: Ranks) -> str | None:
    """The device of this rank's model: ``cuda:LOCAL_RANK`` for ``cuda`` or no ``--device``.

    One rank, a ``--device-map`` or a device with an index (``cuda:1``, ``cpu``) is used as
    given; without CUDA, no ``--device`` stays TransformerLens's choice (the CPU).

    Raises:
        AnchorFlowError: ``LOCAL_RANK`` has no CUDA device of its own on this machine.
    """
    if not ranks.parallel or device_map is not None:
        return device
    import torch

    if device is None and torch.cuda.is_available():
        device = "cuda"
    chosen = None if device is None else torch.device(device)
    if chosen is None or chosen.type != "cuda" or chosen.index is not None:
        return device
    count = torch.cuda.device_count()
    if ranks.local_rank >= count:
        raise AnchorFlowError(
            f"LOCAL_RANK={ranks.local_rank} but this machine has {count} CUDA device(s); start "
            f"at most {count} processes per node (--nproc-per-node) or pass --device cpu"
        )
    torch.cuda.set_device(ranks.local_rank)
    return f"cuda:{ranks.local_rank}"
