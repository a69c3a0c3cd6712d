#!/usr/bin/env python3
"""Where a node's CPU goes while it sells: reads `perf script -F comm,pid,tid,ip,sym` output of a system-wide
profile (scripts/order-profile.sh records one) on stdin and prints, for the busiest process whose threads include
`tokio-rt-worker` (the node), the share of its samples by thread and by what the sample was doing.

Each sample goes to the first category whose pattern matches a frame of its stack, in the order listed below, so
that e.g. a page fault taken while growing a hash map counts as a page fault, and a socket write as socket I/O."""

import collections
import re
import sys

# (category, pattern over the frames of one stack), first match wins.
CATEGORIES = [
    ("fsync (journal writer, kernel)", r"fdatasync|do_fsync"),
    ("page faults (new memory zeroed)", r"asm_exc_page_fault|clear_page"),
    ("socket I/O (kernel)", r"sys_writev|sys_write$|sock_write|tcp_sendmsg|tcp_recvmsg|sock_read|sys_recvfrom|sys_readv|sys_read$"),
    ("wake-ups and scheduling", r"futex|try_to_wake_up|Waker::wake|unpark|schedule$|__schedule|epoll_wait|finish_task_switch"),
    ("hash map growth (rehash)", r"reserve_rehash"),
    ("shard actors", r"ShardActor"),
    ("order book (desk)", r"engine::desk::Book|claim_idempotency_key"),
    ("payment simulator and pool", r"SimulatedProvider|PaymentPool"),
    ("card decryption", r"payment_card|aes_gcm|Aes256"),
    ("JSON", r"serde_json"),
    ("allocator", r"^mi_|^_mi_|mi_free|malloc|cfree"),
    ("metrics", r"^metrics|metrics_exporter|metrics_util"),
    ("HTTP (hyper, axum, tower)", r"^hyper::|^axum|^tower|hyper_util"),
    ("order flow (desk, router)", r"engine::desk|engine::router"),
]


def stacks(lines):
    head, frames = None, []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if head:
                yield head, frames
            head, frames = None, []
        elif line[0] in " \t":
            parts = line.strip().split(" ", 1)
            if len(parts) == 2:
                frames.append(re.sub(r"\+0x[0-9a-f]+$", "", re.sub(r" \(.*\)$", "", parts[1])))
        else:
            match = re.match(r"\s*(.*?)\s+(\d+)/(\d+)", line)
            head = (match.group(1), match.group(2)) if match else ("?", "?")
    if head:
        yield head, frames


def main():
    by_pid = collections.defaultdict(list)
    for (comm, pid), frames in stacks(sys.stdin):
        by_pid[pid].append((comm, frames))
    nodes = [pid for pid, samples in by_pid.items() if any(c.startswith("tokio-rt-worker") for c, _ in samples)]
    if not nodes:
        sys.exit("no process with tokio workers in the profile")
    pid = max(nodes, key=lambda p: len(by_pid[p]))
    samples = by_pid[pid]
    total = len(samples)
    print(f"process {pid}: {total} samples")
    threads = collections.Counter(re.sub(r"\d+$", "", comm) for comm, _ in samples)
    for thread, count in threads.most_common():
        print(f"  thread {thread:<24} {100 * count / total:5.1f}%")
    compiled = [(name, re.compile(pattern)) for name, pattern in CATEGORIES]
    counts = collections.Counter()
    for comm, frames in samples:
        if comm.startswith("journal-writer"):
            counts["journal writer thread"] += 1
            continue
        for name, pattern in compiled:
            if any(pattern.search(frame) for frame in frames):
                counts[name] += 1
                break
        else:
            counts["other"] += 1
    for name, count in counts.most_common():
        print(f"  {name:<36} {100 * count / total:5.1f}%")


if __name__ == "__main__":
    main()
