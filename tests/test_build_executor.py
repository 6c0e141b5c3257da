"""The local executor: results of every task, and a clear error when a worker process dies."""

import os

import pytest

from kohaku_data.assembly.executor import LocalExecutor, WorkerDied


def square(x: int) -> int:
    return x * x


def die_on_three(x: int) -> int:
    if x == 3:
        os._exit(9)  # what the OOM killer or a SIGKILL looks like to the pool
    return x


@pytest.mark.parametrize("workers", [1, 2])
def test_every_task_runs_once(workers):
    assert sorted(LocalExecutor(workers).map_unordered(square, range(20))) == [x * x for x in range(20)]


def test_a_dead_worker_is_a_clear_error():
    with pytest.raises(WorkerDied, match="run the same command again to resume"):
        list(LocalExecutor(2).map_unordered(die_on_three, range(10)))


def test_every_result_is_recorded_with_where_it_ran():
    executor = LocalExecutor(2)
    assert sorted(executor.map_unordered(square, range(6))) == [x * x for x in range(6)]
    assert sum(executor.placements.values()) == 6 and len(executor.placements) == 1  # one machine


def test_a_result_made_with_other_library_versions_is_refused():
    from kohaku_data.assembly.executor import Recorded, ToolchainMismatch, check_toolchain
    from kohaku_data.assembly.lock import toolchain_versions

    ours = toolchain_versions()
    assert {"pillow", "libwebp", "libavif", "zlib", "numpy", "polars"} <= set(ours)
    check_toolchain(Recorded(1, "node-a", dict(ours)), ours)
    with pytest.raises(ToolchainMismatch, match=r"node-b .*pillow 0\.0 \(driver: .*constraints\.txt"):
        check_toolchain(Recorded(1, "node-b", {**ours, "pillow": "0.0"}), ours)


def test_executor_settings_come_from_options_environment_and_kdata_toml(tmp_path, monkeypatch):
    from kohaku_data.config import ConfigError, load_settings

    monkeypatch.delenv("KDATA_EXECUTOR", raising=False)
    monkeypatch.delenv("KDATA_RAY_ADDRESS", raising=False)
    assert (load_settings(cwd=tmp_path).executor, load_settings(cwd=tmp_path).ray_address) == ("local", "auto")
    (tmp_path / "kdata.toml").write_text('executor = "ray"\nray_address = "10.0.0.1:6379"\n')
    assert load_settings(cwd=tmp_path).executor == "ray"
    monkeypatch.setenv("KDATA_RAY_ADDRESS", "10.0.0.2:6379")
    assert load_settings(cwd=tmp_path).ray_address == "10.0.0.2:6379"
    assert load_settings(cwd=tmp_path, executor="local").executor == "local"
    monkeypatch.setenv("KDATA_EXECUTOR", "spark")
    with pytest.raises(ConfigError, match="executor"):
        load_settings(cwd=tmp_path)
