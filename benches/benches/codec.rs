//! The per-order costs of decoding and decrypting, in operations per second (criterion's `elem/s`).
//!
//! - `codec/order_json/quantity` and `codec/order_json/seats`: decoding a `POST /orders` body into `ClaimBody` and
//!   validating it into the desk's request, as the handler does after reading the body.
//! - `codec/card_decrypt`: what a charge costs in cryptography: unwrapping the user's data key under the master key
//!   and opening the card's sealed secret part (AES-256-GCM both, the user id as associated data).

use api::dto::ClaimBody;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use persistence::crypto::{KeyRing, MasterKey};
use std::hint::black_box;

fn order_json(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/order_json");
    group.throughput(Throughput::Elements(1));
    let bodies = [
        (
            "quantity",
            r#"{"concert_id":"c_6f1d0a9b3c2e4d5f","quantity":2}"#,
        ),
        (
            "seats",
            r#"{"concert_id":"c_6f1d0a9b3c2e4d5f","seats":["A-3-17","A-3-18","A-3-19","A-3-20"]}"#,
        ),
    ];
    for (name, body) in bodies {
        group.bench_function(name, |b| {
            b.iter(|| {
                let claim: ClaimBody =
                    serde_json::from_slice(black_box(body.as_bytes())).expect("a valid body");
                black_box(claim.into_request().is_ok())
            });
        });
    }
    group.finish();
}

fn card_decrypt(c: &mut Criterion) {
    let ring = KeyRing::new(MasterKey::generate());
    let user = "u_0123456789abcdef";
    let (key, wrapped) = ring.new_data_key(user);
    // About the size of an encoded card secret: a 16-digit number and a cvv.
    let sealed = key.seal(user, "card", b"\x104242424242424242\x03123");
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("card_decrypt", |b| {
        b.iter(|| {
            let key = ring.unwrap(black_box(&wrapped), user).expect("unwraps");
            black_box(
                key.open(user, "card", black_box(&sealed))
                    .expect("opens")
                    .len(),
            )
        });
    });
    group.finish();
}

criterion_group!(benches, order_json, card_decrypt);
criterion_main!(benches);
