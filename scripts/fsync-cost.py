#!/usr/bin/env python3
"""What one group commit's `fdatasync` costs on this machine's disk, the way the journal writer does it: append a
batch of BATCH bytes, then `fdatasync`, COUNT times, to a file in DIR. Prints the CPU (user + system of this
process) and wall time per sync for each way of growing the file:

- append:   every batch extends the file (the journal before zeros ahead);
- ahead:    zeros are written 1-2 MiB ahead of the records and each batch overwrites them (the journal now,
            persistence::log::ZERO_AHEAD_BYTES);
- prefilled: the whole file is written with zeros and synced first (the best case).

    python3 scripts/fsync-cost.py [--dir DIR] [--batch 3000] [--count 3000] [--rounds 2]
"""

import argparse
import os
import time

MIB = 1 << 20


def run(mode, directory, batch, count):
    path = os.path.join(directory, f"fsync-cost-{mode}.bin")
    if os.path.exists(path):
        os.remove(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if mode == "prefilled":
            os.write(fd, bytes(batch * count + MIB))
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_SET)
        records_end, zeroed = 0, 0

        def zero_ahead():
            nonlocal zeroed
            if zeroed - records_end >= MIB:
                return
            target = records_end + 2 * MIB
            os.pwrite(fd, bytes(target - zeroed), zeroed)
            zeroed = target

        if mode == "ahead":
            zero_ahead()
            os.fdatasync(fd)
        record = b"x" * batch
        cpu, wall = time.process_time(), time.monotonic()
        for _ in range(count):
            os.write(fd, record)
            records_end += batch
            if mode == "ahead":
                zero_ahead()
            os.fdatasync(fd)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    finally:
        os.close(fd)
        os.remove(path)
    print(f"{mode:<9} CPU {cpu / count * 1e6:6.1f} us per sync, wall {wall / count * 1e6:6.1f} us per sync")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=".", help="a directory on the disk to measure (default: here)")
    parser.add_argument("--batch", type=int, default=3000, help="bytes per batch (default 3000)")
    parser.add_argument("--count", type=int, default=3000, help="syncs per measurement (default 3000)")
    parser.add_argument("--rounds", type=int, default=2, help="times to measure each mode, alternating")
    args = parser.parse_args()
    for _ in range(args.rounds):
        for mode in ("append", "ahead", "prefilled"):
            run(mode, args.dir, args.batch, args.count)


if __name__ == "__main__":
    main()
