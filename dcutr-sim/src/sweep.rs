//! A deterministic sweep of hole punches over pairs of NAT kinds.
//!
//! For each seed, [`World::for_seed`] draws a network (relay delays in
//! both directions, direct delay); [`run_one`] runs one upgrade between
//! an initiator (spec's B) behind one [`NatKind`] and a responder (A)
//! behind another, over one transport. [`run_cell`] repeats it over a
//! range of seeds and summarises success and time to direct; [`sweep`]
//! does every ordered pair (so both roles) and both transports. The
//! `nat-sweep` example prints the result.
//!
//! [`binomial_bounds`] turns a success probability from theory (such as
//! [`birthday_bound`]) into the range of successes a cell may show
//! without the theory being wrong, so tests can pin rows without relying
//! on one lucky seed.

use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use dcutr_core::nat::{
    Allocation, EPHEMERAL_PORTS, Filtering, MAX_PREDICTED_PORTS, Mapping, NatBehaviour,
    SequentialPredictor, Strategy, birthday_success,
};
use dcutr_core::{Config, Event, Outcome, Output, Side, Transport};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{INITIATOR, Nat, NatModel, Protocol, RESPONDER, Sim, SimConfig};

/// Shortest and longest one-way delay of the relayed path, in
/// milliseconds, drawn uniformly per seed: from a relay next door to one
/// across an ocean.
pub const RELAY_ONE_WAY_MS: RangeInclusive<u64> = 10..=150;

/// How uneven the two directions of the relayed path can be: each
/// direction is the drawn one-way delay times `1 ± u`, `u` uniform in
/// `[0, RELAY_ASYMMETRY]`, opposite signs. The initiator's RTT/2 then
/// misses the Sync's real travel time by up to this fraction, which is
/// what makes one punch leave before the other. 0.5 stands for queueing
/// and processing the spec's timing ignores; it sets how often the
/// no-firewall router sees the peer's packet first.
pub const RELAY_ASYMMETRY: f64 = 0.5;

/// Shortest direct one-way delay, in milliseconds. The longest is the
/// drawn relay delay: the direct path is rarely longer than the detour
/// through a relay.
pub const DIRECT_MIN_MS: u64 = 2;

/// Simulated time one run may take. Three failed attempts of the default
/// config end well within a minute.
pub const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Chance, per pinned row, that a correct theory still falls outside
/// [`binomial_bounds`]: one in a million, so a failing pin means the
/// model or the theory moved, not bad luck.
pub const FALSE_ALARM: f64 = 1e-6;

/// Mappings today's core opens on a random-port side towards the peer:
/// one socket, so one mapping (the `N` of the birthday formula).
pub const TODAY_SOCKETS: u32 = 1;

/// Ports today's core tries on the other side's IP: the one it was told
/// (the `M` of the birthday formula).
pub const TODAY_PROBES: u32 = 1;

/// Salt of the world's delays, so they do not correlate with the core's
/// or the NATs' draws from the same seed.
const WORLD_SALT: u64 = 0x574f_524c_4400_0001;

/// The NATs the sweep pairs up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NatKind {
    /// No NAT, no firewall.
    Public,
    /// EIM, EIF, port-preserving ([`NatModel::full_cone`]).
    FullCone,
    /// EIM, ADF, port-preserving ([`NatModel::address_restricted`]).
    AddressRestricted,
    /// EIM, APDF, port-preserving, firewalled: the home router, the NAT
    /// lab's "cone" ([`NatModel::port_restricted`]).
    PortRestricted,
    /// The same without a firewall: the router takes refused packets for
    /// itself and remaps our later flow ([`NatModel::cone_no_firewall`]).
    ConeNoFirewall,
    /// APDM, APDF, sequential +1 ([`NatModel::symmetric_sequential`]).
    SymmetricSequential,
    /// APDM, APDF, random over 1024–65535
    /// ([`NatModel::symmetric_random`]).
    SymmetricRandom,
}

impl NatKind {
    /// Every kind, easiest first.
    pub const ALL: [NatKind; 7] = [
        NatKind::Public,
        NatKind::FullCone,
        NatKind::AddressRestricted,
        NatKind::PortRestricted,
        NatKind::ConeNoFirewall,
        NatKind::SymmetricSequential,
        NatKind::SymmetricRandom,
    ];

    /// Short name, for tables and JSON.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            NatKind::Public => "public",
            NatKind::FullCone => "full-cone",
            NatKind::AddressRestricted => "addr-restricted",
            NatKind::PortRestricted => "port-restricted",
            NatKind::ConeNoFirewall => "cone-no-firewall",
            NatKind::SymmetricSequential => "symmetric-seq",
            NatKind::SymmetricRandom => "symmetric-random",
        }
    }

    /// The kind of this name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<NatKind> {
        NatKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The simulator's NAT for it.
    #[must_use]
    pub const fn nat(self) -> Nat {
        match self {
            NatKind::Public => Nat::Public,
            NatKind::FullCone => Nat::Model(NatModel::full_cone()),
            NatKind::AddressRestricted => Nat::Model(NatModel::address_restricted()),
            NatKind::PortRestricted => Nat::Model(NatModel::port_restricted()),
            NatKind::ConeNoFirewall => Nat::Model(NatModel::cone_no_firewall()),
            NatKind::SymmetricSequential => Nat::Model(NatModel::symmetric_sequential(1)),
            NatKind::SymmetricRandom => Nat::Model(NatModel::symmetric_random()),
        }
    }

    /// What a perfect discovery reports for it, in dcutr-core's terms.
    #[must_use]
    pub fn behaviour(self) -> NatBehaviour {
        let local = "0.0.0.0:0".parse().expect("a valid socket address literal");
        match self.nat().model() {
            Some(model) => model.behaviour(local),
            None => NatBehaviour::declared(
                Mapping::EndpointIndependent,
                Allocation::Preserving,
                Filtering::EndpointIndependent,
                local,
            ),
        }
    }

    /// Whether its mapping is endpoint-independent (or there is none).
    #[must_use]
    pub fn endpoint_independent(self) -> bool {
        self.behaviour().mapping == Mapping::EndpointIndependent
    }
}

/// The network of one seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct World {
    /// Relay delay from the initiator to the responder (Connect, Sync).
    pub relay_forward: Duration,
    /// Relay delay from the responder to the initiator.
    pub relay_back: Duration,
    /// Direct one-way delay.
    pub direct_one_way: Duration,
}

impl World {
    /// The network of `seed`: see [`RELAY_ONE_WAY_MS`],
    /// [`RELAY_ASYMMETRY`] and [`DIRECT_MIN_MS`].
    #[must_use]
    pub fn for_seed(seed: u64) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ WORLD_SALT);
        let base_us = rng.random_range(RELAY_ONE_WAY_MS) * 1000;
        let skew: f64 = rng.random_range(-RELAY_ASYMMETRY..=RELAY_ASYMMETRY);
        // Whole microseconds keep the arithmetic exact.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let part = |f: f64| Duration::from_micros((base_us as f64 * f).round() as u64);
        let direct_us = rng.random_range(DIRECT_MIN_MS * 1000..=base_us.max(DIRECT_MIN_MS * 1000));
        World {
            relay_forward: part(1.0 + skew),
            relay_back: part(1.0 - skew),
            direct_one_way: Duration::from_micros(direct_us),
        }
    }

    /// How long after the initiator's punch the responder's leaves (zero
    /// when it leaves first): Sync reaches the responder after
    /// `relay_forward`, while the initiator waits half the RTT it
    /// measured.
    #[must_use]
    pub fn responder_lag(&self) -> Duration {
        let half_rtt = (self.relay_forward + self.relay_back) / 2;
        self.relay_forward.saturating_sub(half_rtt)
    }

    /// How long after the responder's punch the initiator's leaves (zero
    /// when it leaves first).
    #[must_use]
    pub fn initiator_lag(&self) -> Duration {
        let half_rtt = (self.relay_forward + self.relay_back) / 2;
        half_rtt.saturating_sub(self.relay_forward)
    }
}

/// What the peers do besides today's core defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Options {
    /// A side behind a sequential NAT sends its next
    /// [`MAX_PREDICTED_PORTS`] ports in Connect (dcutr-core's
    /// [`SequentialPredictor`]), as [`Strategy::PredictSequential`] asks.
    /// The NAT's true delta stands in for discovery.
    pub predict_sequential: bool,
    /// Both sides turn low-TTL priming off
    /// ([`Config::prime_ttl`](dcutr_core::Config::prime_ttl) `None`): the
    /// spec's punch, in which a NAT without a firewall remaps a flow
    /// whose peer's packet arrived first.
    pub unprimed: bool,
}

/// Today's core as the adapters run it: observed addresses only, and
/// low-TTL priming (the core's default).
pub const TODAY: Options = Options {
    predict_sequential: false,
    unprimed: false,
};

/// [`TODAY`] without low-TTL priming: the spec's punch.
pub const UNPRIMED: Options = Options {
    predict_sequential: false,
    unprimed: true,
};

/// The result of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Both sides upgraded.
    pub direct: bool,
    /// One side upgraded and the other failed.
    pub split: bool,
    /// When the later of the two sides reported the upgrade.
    pub time_to_direct: Option<Duration>,
    /// Outbound flows the two NATs remapped after a clash.
    pub remaps: u32,
}

/// The world of `seed` with the initiator behind `initiator`, the
/// responder behind `responder`, only `transport`, and the peers doing
/// what `options` say.
#[must_use]
pub fn world(
    options: Options,
    initiator: NatKind,
    responder: NatKind,
    transport: Transport,
    seed: u64,
) -> SimConfig {
    let w = World::for_seed(seed);
    let mut cfg = SimConfig::two_nats(&Config::default(), w.relay_forward, w.direct_one_way)
        .protocol(Protocol::Session)
        .only(transport);
    cfg.relay_back = Some(w.relay_back);
    cfg.initiator.nat = initiator.nat();
    cfg.responder.nat = responder.nat();
    cfg.seed = seed;
    if options.unprimed {
        cfg.initiator.config.prime_ttl = None;
        cfg.responder.config.prime_ttl = None;
    }
    if options.predict_sequential {
        for (spec, kind) in [
            (&mut cfg.initiator, initiator),
            (&mut cfg.responder, responder),
        ] {
            spec.predictor = SequentialPredictor::for_behaviour(
                &kind.behaviour(),
                transport,
                MAX_PREDICTED_PORTS,
            );
        }
    }
    cfg
}

/// Runs one upgrade of [`world`] to its end.
#[must_use]
pub fn run_one(
    options: Options,
    initiator: NatKind,
    responder: NatKind,
    transport: Transport,
    seed: u64,
) -> Run {
    let mut sim = Sim::new(world(options, initiator, responder, transport, seed));
    sim.run(RUN_LIMIT);
    let upgraded = |o: Option<&Outcome>| matches!(o, Some(Outcome::Upgraded(_)));
    let failed = |o: Option<&Outcome>| matches!(o, Some(Outcome::Failed(_)));
    let (b, a) = sim.outcomes();
    let direct = upgraded(b) && upgraded(a);
    let split = (upgraded(b) && failed(a)) || (failed(b) && upgraded(a));
    let time_to_direct = direct
        .then(|| {
            let at = |side| sim.first(side, |o| matches!(o, Output::Event(Event::Upgraded(_))));
            at(Side::Initiator)
                .zip(at(Side::Responder))
                .map(|(b, a)| b.max(a))
        })
        .flatten();
    let remaps = [INITIATOR, RESPONDER]
        .into_iter()
        .filter_map(|i| sim.nat_stats(i))
        .map(|s| s.remaps)
        .sum();
    Run {
        direct,
        split,
        time_to_direct,
        remaps,
    }
}

/// One row of the sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    /// The initiator's (B's) NAT.
    pub initiator: NatKind,
    /// The responder's (A's) NAT.
    pub responder: NatKind,
    /// The transport.
    pub transport: Transport,
    /// Seeds run.
    pub runs: u32,
    /// Runs where both sides upgraded.
    pub direct: u32,
    /// Runs where the two sides disagreed.
    pub split: u32,
    /// Runs with at least one remapped flow.
    pub remapped: u32,
    /// Median time to direct of the successful runs.
    pub median: Option<Duration>,
    /// 90th percentile time to direct of the successful runs.
    pub p90: Option<Duration>,
    /// What dcutr-core's [`Strategy::choose`] makes of the two kinds, from
    /// the initiator's side.
    pub strategy: Strategy,
}

impl Cell {
    /// The share of runs that went direct, 0 to 1.
    #[must_use]
    pub fn rate(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            f64::from(self.direct) / f64::from(self.runs)
        }
    }
}

/// The `q`-quantile (0 to 1) of sorted `values`, nearest rank.
pub(crate) fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Runs `seeds` for one pair and transport.
#[must_use]
pub fn run_cell(
    options: Options,
    initiator: NatKind,
    responder: NatKind,
    transport: Transport,
    seeds: Range<u64>,
) -> Cell {
    let mut times = Vec::new();
    let (mut runs, mut direct, mut split, mut remapped) = (0u32, 0u32, 0u32, 0u32);
    for seed in seeds {
        let run = run_one(options, initiator, responder, transport, seed);
        runs += 1;
        direct += u32::from(run.direct);
        split += u32::from(run.split);
        remapped += u32::from(run.remaps > 0);
        times.extend(run.time_to_direct);
    }
    times.sort_unstable();
    Cell {
        initiator,
        responder,
        transport,
        runs,
        direct,
        split,
        remapped,
        median: quantile(&times, 0.5),
        p90: quantile(&times, 0.9),
        strategy: Strategy::choose(&initiator.behaviour(), &responder.behaviour()),
    }
}

/// Every ordered pair of `kinds` (so both roles) over every transport in
/// `transports`, over `seeds`.
#[must_use]
pub fn sweep(
    options: Options,
    kinds: &[NatKind],
    transports: &[Transport],
    seeds: Range<u64>,
) -> Vec<Cell> {
    let mut cells = Vec::new();
    for &b in kinds {
        for &a in kinds {
            for &t in transports {
                cells.push(run_cell(options, b, a, t, seeds.clone()));
            }
        }
    }
    cells
}

/// The birthday formula `P = 1 − (1 − N/R)^M`: the chance that one of `M`
/// probes of random ports meets one of `N` random mappings among `R`
/// ports. With today's core a random-port side opens [`TODAY_SOCKETS`]
/// mapping and its peer tries [`TODAY_PROBES`] port; the birthday punch
/// raises both.
#[must_use]
pub fn birthday_bound(sockets: u32, probes: u32, range: u32) -> f64 {
    birthday_success(sockets, probes, range)
}

/// Today's chance against one random-port side: [`birthday_bound`] with
/// [`TODAY_SOCKETS`] and [`TODAY_PROBES`] over
/// [`EPHEMERAL_PORTS`] (1/R).
#[must_use]
pub fn today_against_random() -> f64 {
    birthday_bound(TODAY_SOCKETS, TODAY_PROBES, EPHEMERAL_PORTS)
}

/// The successes out of `runs` that a success probability `p` allows,
/// except with probability [`FALSE_ALARM`] (half below, half above):
/// exact binomial tails.
#[must_use]
pub fn binomial_bounds(runs: u32, p: f64) -> RangeInclusive<u32> {
    if p.is_nan() || p <= 0.0 {
        return 0..=0;
    }
    if p >= 1.0 {
        return runs..=runs;
    }
    let n = runs as usize;
    // ln k! for k = 0..=n.
    let mut ln_fact = vec![0.0f64; n + 1];
    for k in 1..=n {
        #[allow(clippy::cast_precision_loss)]
        let lk = (k as f64).ln();
        ln_fact[k] = ln_fact[k - 1] + lk;
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    let pmf = |k: usize| {
        #[allow(clippy::cast_precision_loss)]
        let (kf, rest) = (k as f64, (n - k) as f64);
        (ln_fact[n] - ln_fact[k] - ln_fact[n - k] + kf * lp + rest * lq).exp()
    };
    let tail = FALSE_ALARM / 2.0;
    let mut lo = 0;
    let mut below = 0.0;
    while lo < n {
        let next = below + pmf(lo);
        if next > tail {
            break;
        }
        below = next;
        lo += 1;
    }
    let mut hi = n;
    let mut above = 0.0;
    while hi > lo {
        let next = above + pmf(hi);
        if next > tail {
            break;
        }
        above = next;
        hi -= 1;
    }
    let to_u32 = |k: usize| u32::try_from(k).unwrap_or(runs);
    to_u32(lo)..=to_u32(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_bounds_are_tight_where_theory_is_sure() {
        assert_eq!(binomial_bounds(300, 0.0), 0..=0);
        assert_eq!(binomial_bounds(300, 1.0), 300..=300);
        // 1/R: a second success in 300 runs is already past one in a
        // million... almost (C(300,2)/R² ≈ 1.1e-5), a third is.
        assert_eq!(binomial_bounds(300, today_against_random()), 0..=2);
        // A fair coin over 1000 runs: mean 500, sd 15.8; ±4.9 sd.
        let fair = binomial_bounds(1000, 0.5);
        assert!((420..=430).contains(fair.start()), "{fair:?}");
        assert!((570..=580).contains(fair.end()), "{fair:?}");
        // 98.3 % (256 × 1024) over 300 runs.
        let b = binomial_bounds(300, birthday_bound(256, 1024, EPHEMERAL_PORTS));
        assert!(*b.start() >= 280 && *b.end() == 300, "{b:?}");
    }

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let values: Vec<_> = (1..=10).map(ms).collect();
        assert_eq!(quantile(&values, 0.5), Some(ms(5)));
        assert_eq!(quantile(&values, 0.9), Some(ms(9)));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn worlds_are_deterministic_and_within_their_ranges() {
        for seed in 0..200 {
            let w = World::for_seed(seed);
            assert_eq!(w, World::for_seed(seed));
            let base = (w.relay_forward + w.relay_back) / 2;
            assert!(
                base >= Duration::from_millis(*RELAY_ONE_WAY_MS.start()) - Duration::from_micros(1)
            );
            assert!(
                base <= Duration::from_millis(*RELAY_ONE_WAY_MS.end()) + Duration::from_micros(1)
            );
            assert!(w.direct_one_way >= Duration::from_millis(DIRECT_MIN_MS));
            assert!(w.responder_lag().is_zero() || w.initiator_lag().is_zero());
        }
    }
}
