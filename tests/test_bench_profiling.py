"""The benchmark's profile summary tells waiting from working (bench/profiling.py).

Stacks are as py-spy 0.4 wrote them for pkvc's mutated re-snapshot on a
host whose libc frames have no symbols.
"""

from bench.profiling import GIL_WAIT, category

THREAD = ['process 7124:"pkvc snapshot"', "thread (7194): pkvc-store_0",
          "0x7fb545f278ec (libc.so.6)", "thread_run (libpython3.11.so.1.0)",
          "Thread._bootstrap (threading.py:1002)"]


def test_a_thread_blocked_on_a_lock_is_waiting_even_without_libc_symbols():
    waiting_for_work = THREAD + ["_worker (concurrent/futures/thread.py:83)",
                                 "PyThread_acquire_lock_timed (libpython3.11.so.1.0)",
                                 "0x7fb545eaed90 (libc.so.6)", "0x7fb545ea3f16 (libc.so.6)"]
    waiting_for_result = THREAD + ["Future.result (concurrent/futures/_base.py:451)",
                                   "Condition.wait (threading.py:327)",
                                   "lock_PyThread_acquire_lock (libpython3.11.so.1.0)",
                                   "PyThread_acquire_lock_timed (libpython3.11.so.1.0)",
                                   "0x7fb545eaed90 (libc.so.6)"]
    hashing_behind_a_mutex = THREAD + ["Packer._write_blobs (pkvc/packer.py:273)",
                                       "EVP_update (_hashopenssl.c:602)",
                                       "pthread_mutex_lock (libc.so.6)", "0x7fb545ea412b (libc.so.6)"]
    for frames in (waiting_for_work, waiting_for_result, hashing_behind_a_mutex):
        assert category(frames) == "waiting (subprocess, lock, sleep)"


def test_a_thread_back_from_a_system_call_waiting_for_the_gil_is_told_apart():
    back_from_pwrite = THREAD + ["_pwrite_all (pkvc/restore.py:912)", "os_pwrite (libpython3.11.so.1.0)",
                                 "pthread_cond_timedwait (libc.so.6)", "0x7fb545ea3f16 (libc.so.6)"]
    symbolised = THREAD + ["_Restorer._open (pkvc/restore.py:378)", "os_open (libpython3.11.so.1.0)",
                           "take_gil (libpython3.11.so.1.0)", "pthread_cond_timedwait (libc.so.6)",
                           "__futex_abstimed_wait_common (libc.so.6)"]
    lock_taken_gil_next = THREAD + ["Condition.wait (threading.py:327)",
                                    "lock_PyThread_acquire_lock (libpython3.11.so.1.0)",
                                    "pthread_cond_timedwait (libc.so.6)", "0x7fb545ea3f16 (libc.so.6)"]
    for frames in (back_from_pwrite, symbolised, lock_taken_gil_next):
        assert category(frames) == GIL_WAIT


def test_working_threads_keep_their_categories():
    copying = THREAD + ["_fill (pkvc/chunker.py:88)", "0x7fb545f1a0c0 (libc.so.6)"]
    hashing = THREAD + ["BlobRef.of (pkvc/blobref.py:40)", "EVP_DigestUpdate (libcrypto.so.3)",
                        "0x7fb540011223 (libcrypto.so.3)"]
    writing = THREAD + ["_FileUpload.write (pkvc/backends/local.py:163)",
                        "os_write (libpython3.11.so.1.0)", "write (libc.so.6)"]
    assert category(copying) == "memory (malloc, memcpy, page faults)"
    assert category(hashing) == "SHA-2 (OpenSSL libcrypto)"
    assert category(writing) == "file I/O system calls"
