"""The output lock: one holder at a time, the holder named to whoever is refused, a lease that
is renewed while the run lives and taken over when it expires or its holder is dead; atomic
creation on local disks and on both S3 servers."""
import json
import socket
import threading
import time

import pytest

from pipeline.lock import LockHeld, LockLost, OutputLock
from pipeline.storage import create_exclusive, read_json
from tests.conftest import s3_bucket


def fake_lease(path, host, pid, expires_in, run_id="other"):
    now = time.time()
    path.write_text(json.dumps({"token": "t0", "run_id": run_id, "host": host, "pid": pid,
                                "acquired": now, "expires": now + expires_in}))


def test_a_second_run_is_refused_with_the_holder_named(tmp_path):
    with OutputLock(str(tmp_path), "run-a", lease_s=30):
        with pytest.raises(LockHeld, match=r"locked by pid \d+ on .* \(run run-a\)"):
            OutputLock(str(tmp_path), "run-b", lease_s=30).acquire()
    assert not (tmp_path / "lock.json").exists()  # released
    with OutputLock(str(tmp_path), "run-b", lease_s=30):
        pass


def test_an_expired_lease_or_a_dead_local_holder_is_taken_over(tmp_path):
    fake_lease(tmp_path / "lock.json", "another-host", 1, expires_in=-1)
    with OutputLock(str(tmp_path), "mine", lease_s=30) as lock:
        assert read_json(str(tmp_path / "lock.json"))["token"] == lock.lease.token
    fake_lease(tmp_path / "lock.json", socket.gethostname(), 2 ** 22 + 12345, expires_in=300)
    with OutputLock(str(tmp_path), "mine", lease_s=30):
        pass
    fake_lease(tmp_path / "lock.json", "another-host", 1, expires_in=300)  # alive elsewhere
    with pytest.raises(LockHeld, match="another-host"):
        OutputLock(str(tmp_path), "mine", lease_s=30).acquire()


def test_the_lease_is_renewed_while_the_run_lives(tmp_path):
    with OutputLock(str(tmp_path), "long", lease_s=1.5):
        first = read_json(str(tmp_path / "lock.json"))["expires"]
        time.sleep(2.5)  # longer than the lease: only renewal keeps it
        assert read_json(str(tmp_path / "lock.json"))["expires"] > first + 0.5
        with pytest.raises(LockHeld):
            OutputLock(str(tmp_path), "other", lease_s=1.5).acquire()


def test_a_holder_whose_lease_was_taken_over_notices_and_stops(tmp_path):
    lock = OutputLock(str(tmp_path), "slow", lease_s=1.2)
    lock.acquire()
    fake_lease(tmp_path / "lock.json", "another-host", 1, expires_in=300, run_id="thief")
    deadline = time.monotonic() + 3
    while not lock.lost.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(LockLost, match="taken over"):
        lock.check()
    lock.release()
    assert read_json(str(tmp_path / "lock.json"))["run_id"] == "thief"  # not ours to delete


def race_to_create(url: str, contenders: int = 8) -> int:
    wins, barrier = [], threading.Barrier(contenders)

    def contend(i):
        barrier.wait()
        wins.append(create_exclusive(url, str(i).encode()))

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(wins)


def test_exactly_one_of_many_simultaneous_creates_wins_on_disk(tmp_path):
    assert race_to_create(str(tmp_path / "x" / "lock.json")) == 1


def check_lock_on_s3(env: dict) -> None:
    bucket = s3_bucket(env, "locks")
    assert race_to_create(f"{bucket}/race/lock.json") == 1
    with OutputLock(f"{bucket}/out", "a", lease_s=30):
        with pytest.raises(LockHeld):
            OutputLock(f"{bucket}/out", "b", lease_s=30).acquire()


def test_exactly_one_create_wins_and_the_lock_works_on_moto(moto_env):
    check_lock_on_s3(moto_env)


@pytest.mark.radosgw
def test_exactly_one_create_wins_and_the_lock_works_on_radosgw(radosgw_env):
    check_lock_on_s3(radosgw_env)
