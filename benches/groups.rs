//! What a consumer-group change costs every node (each applies it to its metadata): one
//! member joining or leaving a group of 1000 members that share a 3000-partition topic, with
//! the releases that follow, against a lone member joining an empty group as the baseline.
//! Heartbeats cost no metadata work at all (they only touch the coordinator's clock), so
//! membership changes are what bounds a group's size.

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use raftlog::groups::{Group, Member, REBALANCE_TIMEOUT_MS_DEFAULT, SESSION_TIMEOUT_MS_DEFAULT};

const MEMBERS: usize = 1000;
const PARTITIONS: u32 = 3000;

fn member() -> Member {
    Member {
        client_id: "bench".into(),
        topics: vec!["t".into()],
        session_timeout_ms: SESSION_TIMEOUT_MS_DEFAULT,
        rebalance_timeout_ms: REBALANCE_TIMEOUT_MS_DEFAULT,
    }
}

/// Releases every revocation, as the members would (each owner all of its own in one
/// heartbeat), until the group is stable.
fn settle(group: &mut Group, counts: &BTreeMap<String, u32>) {
    while !group.revoking.is_empty() {
        let mut by_owner: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for partition in &group.revoking {
            let owner = group.owners[partition].clone();
            by_owner.entry(owner).or_default().push(partition.clone());
        }
        for (owner, partitions) in by_owner {
            group.release(&owner, &partitions, counts);
        }
    }
}

fn large_group(counts: &BTreeMap<String, u32>) -> Group {
    let mut group = Group::default();
    for i in 0..MEMBERS {
        group.join(&format!("m{i:04}"), member(), counts);
    }
    settle(&mut group, counts);
    group
}

fn groups(c: &mut Criterion) {
    let counts: BTreeMap<String, u32> = [("t".to_string(), PARTITIONS)].into();
    let large = large_group(&counts);
    let mut bench = c.benchmark_group("group_change");
    bench.bench_function("join_empty_group", |b| {
        b.iter_batched(
            Group::default,
            |mut group| group.join("first", member(), &counts),
            BatchSize::SmallInput,
        )
    });
    bench.bench_function("join_1000_member_group_and_settle", |b| {
        b.iter_batched(
            || large.clone(),
            |mut group| {
                group.join("new", member(), &counts);
                settle(&mut group, &counts);
            },
            BatchSize::LargeInput,
        )
    });
    bench.bench_function("leave_1000_member_group", |b| {
        b.iter_batched(
            || large.clone(),
            |mut group| group.leave(&["m0500".to_string()], &counts),
            BatchSize::LargeInput,
        )
    });
    bench.finish();
}

criterion_group!(benches, groups);
criterion_main!(benches);
