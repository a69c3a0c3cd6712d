//! Heap allocations per order through the whole HTTP front, in process (the node and requests of `benches/http.rs`):
//! every allocation the process makes while [`ORDERS`] orders of one ticket are placed, [`common::IN_FLIGHT`] in
//! flight, divided by the orders, and the bytes they asked for. Unlike a rate, these counts do not depend on how
//! busy the machine is, so a change to the order path can be compared to its parent in one run of each.
//!
//! The counts include what the harness itself allocates per order (building each request, and parsing each
//! answer's JSON into a `serde_json::Value`), which the bench counts on its own and prints first. The allocator underneath is the binary's (mimalloc); `heaptrack` on this bench (built with
//! `CARGO_PROFILE_BENCH_DEBUG=line-tables-only`) says where each allocation comes from.
//!
//!     cargo bench -p benches --bench allocations

mod common;

use common::{call, node, orders, post};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};

/// Orders counted in each round, after as many placed first (the maps and pools a first order grows).
const ORDERS: u64 = 20_000;
/// Rounds counted of each durability.
const ROUNDS: usize = 3;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// mimalloc, counting each allocation (a reallocation counts as one) and the bytes asked for.
struct Counting;

// SAFETY: every call is passed on to mimalloc unchanged; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.realloc(pointer, layout, new_size) }
    }
}

fn count(bytes: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let system = common::system();
    for durability in ["none", "fsync"] {
        // Under cargo's target directory: on the disk a data dir would be on, not a tmpfs.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temp dir");
        let (node, app, token, order) = system.block_on(node(dir.path(), durability));
        system.block_on(orders(&app, &token, &order, ORDERS));
        let (_, answer) = system.block_on(call(&app, post("/orders", &token, &order)));
        let answer = serde_json::to_vec(&answer).expect("JSON");
        let allocations = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..ORDERS {
            let request = post("/orders", &token, &order);
            let parsed: serde_json::Value = serde_json::from_slice(&answer).expect("JSON");
            std::hint::black_box((request, parsed));
        }
        let harness = ALLOCATIONS.load(Ordering::Relaxed) - allocations;
        println!(
            "allocations/harness/{durability}: {:.1} allocations per order (a request built, an answer parsed)",
            harness as f64 / ORDERS as f64
        );
        for _ in 0..ROUNDS {
            let allocations = ALLOCATIONS.load(Ordering::Relaxed);
            let bytes = BYTES.load(Ordering::Relaxed);
            system.block_on(orders(&app, &token, &order, ORDERS));
            let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations;
            let bytes = BYTES.load(Ordering::Relaxed) - bytes;
            println!(
                "allocations/order/{durability}: {:.1} allocations, {:.0} bytes per order",
                allocations as f64 / ORDERS as f64,
                bytes as f64 / ORDERS as f64
            );
        }
        system.block_on(node.stop());
    }
}
