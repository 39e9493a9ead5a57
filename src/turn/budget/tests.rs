use super::*;

fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

/// Drains `b` at `now` in payloads of 1000 bytes; how many bytes passed.
fn drain(b: &mut Bucket, now: Instant) -> u64 {
    let mut passed = 0;
    while b.take(now, 1000) {
        passed += 1000;
    }
    passed
}

#[test]
fn a_new_bucket_holds_the_least_burst_and_a_full_one_its_own() {
    let t0 = Instant::now();
    let mut b = Bucket::new(1_000_000, t0);
    // An allocation made anew gets no burst of its rate...
    assert_eq!(drain(&mut b, t0), MIN_BURST / 1000 * 1000);
    // ...but one that waited has half a second of it, once: a full bucket earns nothing
    // while it waits, however long.
    let later = at(t0, 10_000);
    assert_eq!(drain(&mut b, later), 500_000);
    assert_eq!(drain(&mut b, later), 0);
    let much_later = at(t0, 60_000);
    assert!(b.take(much_later, 1000));
    assert_eq!(drain(&mut b, much_later), 499_000, "not twice the burst");
}

#[test]
fn a_refund_after_the_sweep_started_a_new_window_goes_no_lower_than_nothing() {
    let t0 = Instant::now();
    let mut budget = Budget::new(100_000, BandwidthLimit::Allocation, t0);
    budget.to_peer.pass(t0, 1200).unwrap();
    budget.apply([own_rate(100_000); 2], at(t0, 1000));
    budget.to_peer.refund(1200);
    assert_eq!(budget.to_peer.bytes, 0);
    assert_eq!(budget.to_peer.packets, 0);
    assert_eq!(budget.demands(at(t0, 2000))[0], Demand::Used(0));
}

#[test]
fn a_bucket_passes_its_burst_then_its_rate() {
    let t0 = Instant::now();
    let rate = 1_000_000;
    let mut b = Bucket::new(rate, t0);
    // Half a second of the rate at once, once it has waited that long...
    let t0 = at(t0, 500);
    assert_eq!(drain(&mut b, t0), 500_000);
    // ...then the rate: over two seconds, two seconds' worth, give or take a packet.
    let later: u64 = (1..=2000).map(|ms| drain(&mut b, at(t0, ms))).sum();
    assert!((1_999_000..=2_000_000).contains(&later), "{later}");
}

#[test]
fn a_bucket_keeps_fractions_of_bytes_earned_in_short_steps() {
    let t0 = Instant::now();
    // 100 bytes per millisecond, 0.1 byte a microsecond, earned over many calls.
    let mut b = Bucket::new(100_000, t0);
    while b.take(t0, 1) {}
    let mut got = 0;
    for us in (10..=1_000_000).step_by(10) {
        if b.take(t0 + Duration::from_micros(us), 1) {
            got += 1;
        }
    }
    assert!((99_990..=100_000).contains(&got), "{got}");
}

#[test]
fn a_rate_of_zero_is_no_limit_and_a_big_packet_fits_a_small_rate() {
    let t0 = Instant::now();
    let mut free = Bucket::new(0, t0);
    for _ in 0..10_000 {
        assert!(free.take(t0, 65_535));
    }
    let mut slow = Bucket::new(1000, t0);
    assert!(slow.take(t0, 65_535), "the least burst holds any packet");
}

#[test]
fn a_lower_rate_takes_effect_at_once() {
    let t0 = Instant::now();
    let mut b = Bucket::new(10_000_000, t0);
    let t0 = at(t0, 1000);
    b.set_rate(200_000, t0);
    assert_eq!(
        drain(&mut b, t0),
        100_000,
        "the burst of the new rate: half a second"
    );
    b.set_rate(20_000, t0);
    assert_eq!(
        drain(&mut b, t0),
        0,
        "the tokens held are cut to the least burst, and taken"
    );
    assert!(b.take(t0 + Duration::from_secs(4), MIN_BURST));
}

#[test]
fn a_meter_counts_what_passed_and_names_the_limit_of_what_did_not() {
    let t0 = Instant::now();
    let mut budget = Budget::new(100_000, BandwidthLimit::Room, t0);
    let t0 = at(t0, 1000);
    let mut dropped = 0;
    for _ in 0..100 {
        match budget.to_peer.pass(t0, 1000) {
            Ok(()) => {}
            Err(limit) => {
                assert_eq!(limit, BandwidthLimit::Room);
                dropped += 1;
            }
        }
    }
    assert_eq!(budget.to_peer.packets, 100 - dropped);
    assert_eq!(budget.to_peer.bytes, (100 - dropped) * 1000);
    assert!(dropped > 0);
    assert_eq!(
        budget.to_client.bytes, 0,
        "the other way has a meter of its own"
    );
    let [to_peer, to_client] = budget.demands(at(t0, 1000));
    assert_eq!(to_peer, Demand::More);
    assert_eq!(to_client, Demand::Used(0));
}

fn rates(shares: &[Rate]) -> Vec<u64> {
    shares.iter().map(|r| r.bytes_per_s).collect()
}

#[test]
fn a_room_is_shared_evenly_between_allocations_that_all_want_more() {
    let shares = fair_shares(900_000, 0, &[Demand::More; 3]);
    assert_eq!(rates(&shares), [300_000; 3]);
    assert!(shares.iter().all(|r| r.limit == BandwidthLimit::Room));
}

#[test]
fn what_a_small_user_leaves_goes_to_those_that_want_more() {
    // An audio-only allocation using 10 kB/s and two video ones held back.
    let shares = fair_shares(
        1_000_000,
        0,
        &[Demand::More, Demand::Used(10_000), Demand::More],
    );
    let r = rates(&shares);
    // The audio one gets room to grow (a quarter of an even share is more than 2 x 10 kB/s).
    assert_eq!(r[1], 1_000_000 / 3 / 4);
    assert!(r[0].abs_diff(r[2]) <= 1, "{r:?}");
    assert!(r[0] > 1_000_000 / 3, "{r:?}");
    assert!(r.iter().sum::<u64>() <= 1_000_000);
}

#[test]
fn a_room_with_spare_budget_spreads_it() {
    let shares = fair_shares(1_000_000, 0, &[Demand::Used(100_000), Demand::Used(50_000)]);
    let r = rates(&shares);
    // Each gets twice its use (the floor is 125 kB/s), and the rest evenly.
    let extra = (1_000_000 - 200_000 - 125_000) / 2;
    assert_eq!(r, [200_000 + extra, 125_000 + extra]);
}

#[test]
fn an_allocation_cap_below_the_share_binds_and_leaves_the_rest_to_others() {
    let shares = fair_shares(
        1_000_000,
        200_000,
        &[Demand::More, Demand::More, Demand::More],
    );
    assert_eq!(rates(&shares), [200_000; 3]);
    assert!(shares.iter().all(|r| r.limit == BandwidthLimit::Allocation));
    let shares = fair_shares(300_000, 200_000, &[Demand::More, Demand::More]);
    assert_eq!(rates(&shares), [150_000; 2]);
    assert!(shares.iter().all(|r| r.limit == BandwidthLimit::Room));
}

#[test]
fn a_new_allocation_in_a_full_room_gets_a_share() {
    // Two held back, then a third arrives having relayed nothing yet.
    let before = rates(&fair_shares(600_000, 0, &[Demand::More, Demand::More]));
    assert_eq!(before, [300_000, 300_000]);
    let after = fair_shares(600_000, 0, &[Demand::More, Demand::More, Demand::Used(0)]);
    let r = rates(&after);
    assert_eq!(
        r[2],
        600_000 / 3 / 4,
        "a quarter of an even share to start with"
    );
    assert!(r.iter().sum::<u64>() <= 600_000);
    // Once it wants more, it gets an even share.
    let r = rates(&fair_shares(600_000, 0, &[Demand::More; 3]));
    assert_eq!(r, [200_000; 3]);
}

#[test]
fn shares_never_exceed_the_room_whatever_is_asked() {
    let demands = [
        Demand::Used(0),
        Demand::Used(u64::MAX),
        Demand::More,
        Demand::Used(7),
        Demand::Used(400_000),
    ];
    for room in [1_000, 64_000, 1_000_000, 123_456_789] {
        for cap in [0, 10_000, 1_000_000] {
            let r = fair_shares(room, cap, &demands);
            assert_eq!(r.len(), demands.len());
            assert!(
                rates(&r).iter().sum::<u64>() <= room,
                "room {room}, cap {cap}: {r:?}"
            );
            assert!(r.iter().all(|r| r.bytes_per_s > 0));
        }
    }
    assert!(fair_shares(1000, 0, &[]).is_empty());
}
