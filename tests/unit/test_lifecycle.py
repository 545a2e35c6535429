"""A process that is stuck says where, and a stuck shutdown ends instead of waiting for SIGKILL."""

import asyncio
import logging
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fleetpulse.ingest.frontend import server as frontend
from fleetpulse.lifecycle import EXIT_STUCK


def run_python(code: str, timeout_s: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_a_stuck_shutdown_exits_with_every_threads_stack() -> None:
    began = time.monotonic()
    done = run_python(
        """
        import logging, time
        from fleetpulse.lifecycle import exit_if_stuck
        logging.basicConfig()
        exit_if_stuck(0.5)
        def waiting_forever():
            time.sleep(30)
        waiting_forever()
        """
    )
    assert done.returncode == EXIT_STUCK
    assert time.monotonic() - began < 15
    assert "shutdown still not done after 0.5 s: exiting" in done.stderr
    assert "waiting_forever" in done.stderr  # the main thread's stack, from faulthandler


def test_a_cancelled_watchdog_lets_the_process_exit_normally() -> None:
    done = run_python(
        """
        import time
        from fleetpulse.lifecycle import exit_if_stuck
        exit_if_stuck(0.5).cancel()
        time.sleep(1.0)
        """
    )
    assert done.returncode == 0, done.stderr


def test_sigusr1_writes_the_stacks_and_the_process_goes_on() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys, time
                from fleetpulse.lifecycle import dump_stacks_on_sigusr1
                dump_stacks_on_sigusr1()
                def serving():
                    # "ready" from inside: a signal sent on it finds this frame on the stack
                    print("ready", flush=True)
                    time.sleep(2.0)
                serving()
                print("still here", flush=True)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert out == "still here\n"
    assert "serving" in err


def test_a_shutdown_step_that_hangs_is_named_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def shutdown() -> list[str]:
        ran: list[str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.3

        async def hangs() -> None:
            await asyncio.Event().wait()

        async def quick() -> None:
            ran.append("quick")

        await frontend._stage("wait for nothing", hangs(), deadline)
        await frontend._stage("the next step", quick(), deadline)
        return ran

    with caplog.at_level(logging.ERROR, logger=frontend.__name__):
        began = time.monotonic()
        ran = asyncio.run(shutdown())
    assert ran == ["quick"]  # the rest of the shutdown still ran
    assert time.monotonic() - began < 5
    assert "shutdown: wait for nothing did not finish" in caplog.text
    assert "hangs" in caplog.text  # the stuck task's stack


def test_a_shutdown_step_that_fails_is_logged_and_the_next_one_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def shutdown() -> None:
        async def fails() -> None:
            raise ConnectionError("pool closed")

        deadline = asyncio.get_running_loop().time() + 5
        await frontend._stage("flush heartbeats", fails(), deadline)

    with caplog.at_level(logging.ERROR, logger=frontend.__name__):
        asyncio.run(shutdown())
    assert "shutdown: flush heartbeats failed: pool closed" in caplog.text
