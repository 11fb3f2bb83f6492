"""One run as N cooperating processes, one per host: `jax.distributed` started from the
CLI's flags or from the cluster's own environment (SLURM, Open MPI, Cloud TPU, Kubernetes).

Every process runs the same program on the same config. The mesh spans every device of
every process; process 0 writes the run folder. A process that dies ends the others within
the heartbeat timeout (JAX's coordination service stops them).
"""

import signal
import socket
import threading
import time

import numpy as np

from vaejax.config import ConfigError


def detected_processes() -> int:
    """The process count of the cluster job JAX detects itself (1 when there is none).

    JAX's own detection, as `jax.distributed.initialize()` without arguments uses it.
    """
    try:
        from jax._src.clusters import ClusterEnv
        env = next((e for e in ClusterEnv._cluster_types
                    if not e.opt_in_only_method and e.is_env_present()), None)
        return 1 if env is None else int(env.get_process_count())
    except Exception:  # a JAX without this detection, or an environment it cannot read
        return 1


def _check_address(coordinator: str) -> tuple[str, int]:
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--coordinator {coordinator!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _wait_for(coordinator: str, timeout: float) -> None:
    """Waits until process 0 listens at `coordinator`: JAX would abort, not raise, after its
    own timeout."""
    host, port = _check_address(coordinator)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise ConfigError(f"no coordinator answers at {coordinator} within {timeout:g} s: "
                                  "start process 0 with the same --coordinator") from None
            time.sleep(0.2)


def initialize(coordinator=None, num_processes=None, process_id=None, *,
               timeout: float = 100.0, devices: int = 1) -> int:
    """Joins the run's processes; returns their number (1: one process, nothing started).

    Call it before JAX first computes.

    Args:
      coordinator: HOST:PORT of process 0, which serves there.
      num_processes: processes in the run.
      process_id: this process's index, 0 to num_processes − 1.
      timeout: seconds to wait for every process to join, and between heartbeats before a
        silent process counts as dead.
      devices: devices of the whole run; on CPU hosts each process gets devices/N host
        devices, standing in for accelerators.

    With no arguments, a cluster job JAX detects (more than one process) is joined;
    otherwise nothing is started.

    Raises:
      ConfigError: the arguments are incomplete or invalid, process 0 cannot be reached,
        or the processes were given different numbers of processes.
    """
    given = (coordinator, num_processes, process_id)
    processes = num_processes or detected_processes()
    if devices % processes:
        raise ConfigError(f"--devices {devices} is not a multiple of the {processes} processes")
    if all(v is None for v in given):
        if processes <= 1:
            _host_devices(devices)
            return 1
    elif any(v is None for v in given):
        raise ConfigError("--coordinator, --num-processes and --process-id go together "
                          "(or none of them, where JAX detects the cluster)")
    else:
        _check_address(coordinator)
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ConfigError(f"--process-id {process_id} is not in 0..{num_processes - 1}")
        if timeout <= 0:
            raise ConfigError("--process-timeout must be > 0")
        if process_id > 0:
            _wait_for(coordinator, timeout)
    _host_devices(devices // processes)
    import jax
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   initialization_timeout=int(timeout),
                                   heartbeat_timeout_seconds=int(timeout))
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"jax.distributed could not start: {str(error).splitlines()[0]}"
                          ) from None
    # JAX's preemption notifier takes SIGTERM over; give it back to the handler there was
    # (vaejax.interrupts during training: every process stops after the same epoch).
    if sigterm is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, sigterm)
    count = jax.process_count()
    if num_processes is not None:
        said = _told(num_processes, process_id, count, timeout)
        if len(set(said)) > 1 or said[0] != count:
            raise ConfigError(f"the processes were given different --num-processes "
                              f"({', '.join(map(str, said))}); the coordinator runs {count}")
    return count


def _told(num_processes: int, process_id: int, count: int, timeout: float) -> list[int]:
    """Every process's --num-processes, through the coordinator's key-value store (a device
    collective cannot run while the processes disagree on their devices)."""
    from jax._src.distributed import global_state
    client = global_state.client
    client.key_value_set(f"vaejax/num_processes/{process_id}", str(num_processes))
    return [int(client.blocking_key_value_get(f"vaejax/num_processes/{i}", int(timeout * 1000)))
            for i in range(count)]


def _host_devices(count: int) -> None:
    if count > 1:
        import jax
        try:
            jax.config.update("jax_num_cpu_devices", count)
        except RuntimeError:
            pass  # backends already started (in-process use): keep the devices there are


def gather(value: int) -> list[int]:
    """One integer from every process, in process order (no collective for one process)."""
    import jax
    if jax.process_count() == 1:
        return [int(value)]
    from jax.experimental import multihost_utils
    return [int(v) for v in np.ravel(multihost_utils.process_allgather(np.int32(value)))]


def is_primary() -> bool:
    """Whether this process writes the run folder (process 0)."""
    import jax
    return jax.process_index() == 0


def agreed_stop(stops) -> bool:
    """Whether any process was asked to stop (by SIGINT or SIGTERM), so that all stop after
    the same epoch; a process that was not signalled takes the signal of one that was."""
    signals = [s for s in gather(stops.signum or 0) if s]
    if signals and stops.signum is None:
        stops.signum = signals[0]
    return bool(signals)
