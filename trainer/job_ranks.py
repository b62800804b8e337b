"""The other processes of a job that trains with several (ranks 1..N-1 on this machine).

torch-free, like `trainer.jobs`, which owns rank 0 (the child with the event and command
queues). Each helper runs the same `trainer.worker.run_job` with the variables torchrun would
give it (`place`: MASTER_ADDR, MASTER_PORT, RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE);
torch.distributed does the rest (trainer.distributed). A helper sends only heartbeats and its
failure; this module watches them, so the job can say which rank died and why, and ends the
stragglers when rank 0 is done.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import time
from dataclasses import dataclass, field

from trainer.events import Failed
from trainer.job_spec import JobSpec

HELPER_EXIT_S = 20.0  # after rank 0 ended: how long the others may take to leave


def launched_by_torchrun() -> bool:
    """This process is already one rank of a torchrun job (the world is torchrun's)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def is_writer_process() -> bool:
    """Rank 0, or a process that is not part of a torchrun job: it writes and reports."""
    return os.environ.get("RANK", "0") in ("", "0")


def free_port() -> int:
    """A TCP port on this machine that nothing listens on (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def place(rank: int, world: int, port: int) -> dict[str, str]:
    """What torchrun --standalone sets for one of `world` processes on one machine."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not one of {world} processes")
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
            "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "GROUP_RANK": "0", "ROLE_RANK": str(rank), "ROLE_WORLD_SIZE": str(world)}


def how_it_ended(exitcode: int | None) -> str:
    return (f"was killed by signal {signal.Signals(-exitcode).name}" if exitcode and exitcode < 0
            else f"exited with code {exitcode}")


@dataclass
class HelperRanks:
    """Ranks 1..world-1 of one job, their event queues, and the first of them to fail."""

    world: int
    processes: list = field(default_factory=list)
    queues: list = field(default_factory=list)
    failure: Failed | None = None   # the first helper failure, said for the user
    failed_at: float | None = None  # when it was seen (time.monotonic)
    _reported: set[int] = field(default_factory=set)  # ranks that said why they ended
    _ending_since: float | None = None

    @classmethod
    def start(cls, spec: JobSpec, world: int, port: int, context) -> HelperRanks:
        from trainer.worker import run_job  # light module: torch is imported in the child

        helpers = cls(world)
        for rank in range(1, world):
            events, commands = context.Queue(), context.Queue()  # commands: rank 0's alone
            process = context.Process(target=run_job, name=f"lora-studio-trainer-rank{rank}",
                                      args=(spec, events, commands, place(rank, world, port)),
                                      daemon=True)
            process.start()
            helpers.processes.append(process)
            helpers.queues.append((events, commands))
        return helpers

    def _name(self, rank: int) -> str:
        return f"training process {rank + 1} of {self.world} (rank {rank})"

    def check(self) -> Failed | None:
        """Drain the helpers' queues (a full pipe would stall them) and look for the first
        failure that is a cause: one a helper reported (not "rank_lost", which only says that
        another rank went first), or a death it could not report."""
        for index, (process, (events, _)) in enumerate(zip(self.processes, self.queues)):
            rank = index + 1
            while True:
                try:
                    event = events.get_nowait()
                except (queue.Empty, EOFError, OSError, ValueError):
                    break
                if isinstance(event, Failed):  # else a heartbeat
                    self._reported.add(rank)
                    if self.failure is None and event.kind != "rank_lost":
                        self._fail(Failed(kind=event.kind, hint=event.hint,
                                          message=f"{self._name(rank)} failed: {event.message}"))
            if (self.failure is None and rank not in self._reported and not process.is_alive()
                    and process.exitcode not in (0, None)):
                self._fail(Failed(kind="crashed", hint="",
                                  message=f"{self._name(rank)} {how_it_ended(process.exitcode)}"))
        return self.failure

    def _fail(self, failure: Failed) -> None:
        self.failure, self.failed_at = failure, time.monotonic()

    def kill(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()

    def finished(self) -> bool:
        """Called once rank 0 has exited, at every poll: True when every helper has left and
        its queues are closed. Never waits; a helper still there after HELPER_EXIT_S is
        killed (rank 0 wrote everything; nothing of value is lost)."""
        self.check()
        now = time.monotonic()
        self._ending_since = self._ending_since or now
        alive = [p for p in self.processes if p.is_alive()]
        if alive and now - self._ending_since < HELPER_EXIT_S:
            return False
        for process in alive:
            process.kill()
            process.join(timeout=1)
        for events, commands in self.queues:
            for channel in (events, commands):
                channel.close()
                channel.join_thread()
        self.queues = []
        return True
