//! The birthday punch of dcutr-core ([`dcutr_core::birthday`]) run
//! between two simulated NATs, and a sweep of it over seeds.
//!
//! [`run_birthday`] plays one punch: the hard side's machine behind one
//! [`NatModel`] (by default [`NatModel::symmetric_random`]: APDM, APDF,
//! random ports over 1024–65535), the easy side's behind another (by
//! default [`NatModel::port_restricted`]: EIM, APDF, port-preserving, the
//! NAT lab's firewalled "cone"). Every datagram the machines emit leaves
//! through the sender's [`NatState::outbound`], crosses the direct path
//! with the seed's one-way delay ([`World::for_seed`]) plus seeded jitter
//! and loss ([`BirthdayParams::loss`], [`BirthdayParams::jitter`]), and is
//! decided by the receiver's [`NatState::inbound`]; what gets through is
//! fed to the receiving machine on the socket it reached.
//!
//! The two machines start when the two sides of a DCUtR upgrade would
//! punch: the initiator (B) `initiator_lag` and the responder (A)
//! `responder_lag` after the earlier of the two ([`World`]). The hard side
//! is B or A ([`BirthdayParams::hard`]), so both roles are swept. The
//! time to direct of a run is from the earlier start to the later of the
//! two `Met` reports; the relay round trips before the punch and the
//! handshake after it are not included.
//!
//! [`birthday_cell`] repeats a punch over a range of seeds. The `nat-sweep`
//! example prints the rows with `--birthday`.
//!
//! ## Measured
//! `cargo run --release -p dcutr-sim --example nat-sweep -- --birthday
//! --seeds 5000` (74 s wall on a shared core; `--json` for JSON), 1 %
//! loss each way, 0–5 ms jitter, hard side symmetric-random, seeds
//! 0..5000 per row ([`birthday_rows`]):
//!
//! ```text
//! hard side      easy side                  N x M       met      theory   median ms  p90 ms  split  probes/run
//! -------------  -------------------------  ----------  -------  -------  ---------  ------  -----  ----------
//! B (initiator)  port-restricted            256 x 1024   98.34%   98.22%        276     642      0       330.5
//! B (initiator)  port-restricted            64 x 256     23.16%   22.24%        211     354      0       239.8
//! B (initiator)  full-cone                  256 x 1024   99.86%   98.22%        124     299      0       373.2
//! B (initiator)  cone-no-firewall           256 x 1024   19.22%   98.22%        188     496      0       873.3
//! B (initiator)  cone-no-firewall, low TTL  256 x 1024   98.36%   98.22%        276     644      0       330.6
//! A (responder)  port-restricted            256 x 1024   98.36%   98.22%        277     643      0       330.9
//! A (responder)  port-restricted            64 x 256     23.16%   22.24%        211     358      0       239.8
//! A (responder)  full-cone                  256 x 1024   99.94%   98.22%        123     299      0       372.0
//! A (responder)  cone-no-firewall           256 x 1024   19.68%   98.22%        188     547      0       870.2
//! A (responder)  cone-no-firewall, low TTL  256 x 1024   98.38%   98.22%        277     644      0       330.7
//! ```
//!
//! The theory column is `P = 1 − (1 − (1 − loss)·N/R)^M`: a probe meets
//! when it lands on one of the `N` mappings and is not lost; three answer
//! copies make a lost answer negligible. It holds where the easy side's
//! filter drops the priming datagrams (port-restricted cone) or they never
//! reach it (low TTL). A full cone beats it: the priming gets in and the
//! easy side probes its source at once (a failure needs the easy side to
//! start after the priming arrived). A router without a firewall falls far
//! below it unless the priming has a low TTL: the router takes the
//! priming for itself, and the easy side's later probe to that port is
//! remapped, so the hard side's filter drops it.
//!
//! Times are simulated, from the first punch to the later `Met`: the
//! median sits near `ln 2 · R/N` ≈ 176 probes (1 ms apart) plus a round
//! trip and the start skew. Both roles share each seed's port draws and
//! differ only in who starts first, so their rates agree closely. The
//! `birthday_sweep` tests pin these rows over fewer seeds.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use dcutr_core::Side;
use dcutr_core::Transport;
use dcutr_core::birthday::{Birthday, BirthdayConfig, DatagramKind, Local, Outcome, Transmit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::nat::{Inbound, NatModel, NatState};
use crate::sweep::World;

/// Loss on the direct path, each datagram, each way, by default: 1 %.
///
/// A busy home uplink; high enough that the answer copies and the
/// theory's `(1 − loss)` factor matter, low enough to stay typical.
pub const DEFAULT_LOSS: f64 = 0.01;

/// Most extra delay of one datagram on the direct path, drawn uniformly
/// per datagram, by default: 5 ms (queueing; it reorders close probes).
pub const DEFAULT_JITTER: Duration = Duration::from_millis(5);

/// Simulated time after the later start at which a run is cut: past
/// [`dcutr_core::birthday::MAX_DEADLINE`], so every machine ends by itself
/// first.
pub const BIRTHDAY_RUN_LIMIT: Duration = Duration::from_secs(40);

/// Internal port of the easy side's punch socket.
const EASY_PORT: u16 = 4001;
/// Internal port of the hard side's fresh socket 0; socket `i` is
/// `HARD_BASE_PORT + i`.
const HARD_BASE_PORT: u16 = 40_000;
/// The rendezvous relay both sides keep a connection to: its mapping
/// gives each side the address the other learns.
const RELAY: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200)), 443);
const HARD_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
const EASY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
/// Salts of the per-seed draws, so they do not correlate.
const SALT_HARD_NAT: u64 = 0x4248_4e41_5400_0001;
const SALT_EASY_NAT: u64 = 0x4248_4e41_5400_0002;
const SALT_PATH: u64 = 0x4248_5041_5448_0003;
const SALT_PROBES: u64 = 0x4248_5052_4f42_0004;

/// What one birthday run looks like.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BirthdayParams {
    /// The machines' config (both sides use the same).
    pub config: BirthdayConfig,
    /// Which DCUtR side is the hard one: B ([`Side::Initiator`]) or A
    /// ([`Side::Responder`]).
    pub hard: Side,
    /// The hard side's NAT.
    pub hard_nat: NatModel,
    /// The easy side's NAT.
    pub easy_nat: NatModel,
    /// Chance that one datagram is lost on the direct path, 0 to 1.
    pub loss: f64,
    /// Most extra delay per datagram.
    pub jitter: Duration,
    /// The hard side's priming datagrams expire before the easy side's
    /// NAT (a low TTL that only reaches our own NAT): they open the hard
    /// side's mappings and go no further. Off, they reach the easy side's
    /// NAT, whose filter drops them, lets them in (full cone), or, on a
    /// router without a firewall, takes them and remaps the easy side's
    /// later probe to that port.
    pub low_ttl_priming: bool,
}

impl BirthdayParams {
    /// The default budget ([`BirthdayConfig::default`]), symmetric-random
    /// against port-restricted, [`DEFAULT_LOSS`] and [`DEFAULT_JITTER`],
    /// with the hard side `hard`.
    #[must_use]
    pub fn new(hard: Side) -> Self {
        BirthdayParams {
            config: BirthdayConfig::new(0x6269_7274_6864_6179),
            hard,
            hard_nat: NatModel::symmetric_random(),
            easy_nat: NatModel::port_restricted(),
            loss: DEFAULT_LOSS,
            jitter: DEFAULT_JITTER,
            low_ttl_priming: false,
        }
    }

    /// The same against another easy-side NAT.
    #[must_use]
    pub fn easy(mut self, nat: NatModel) -> Self {
        self.easy_nat = nat;
        self
    }

    /// The same with low-TTL priming on or off
    /// ([`BirthdayParams::low_ttl_priming`]).
    #[must_use]
    pub fn low_ttl(mut self, on: bool) -> Self {
        self.low_ttl_priming = on;
        self
    }

    /// The same with `sockets` and `probes` as the budget.
    #[must_use]
    pub fn budget(mut self, sockets: u16, probes: u16) -> Self {
        self.config.sockets = sockets;
        self.config.probes = probes;
        self
    }

    /// What theory says: `1 − (1 − (1 − loss)·N/R)^M`, with `R` the
    /// config's port range.
    #[must_use]
    pub fn theory(&self) -> f64 {
        let r = f64::from(self.config.range().max(1));
        let hit = ((1.0 - self.loss) * f64::from(self.config.sockets) / r).clamp(0.0, 1.0);
        1.0 - (1.0 - hit).powi(i32::from(self.config.probes))
    }
}

/// The result of one birthday run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BirthdayRun {
    /// Both sides reported `Met`, on the same pair of addresses.
    pub met: bool,
    /// One side met and the other did not.
    pub split: bool,
    /// From the earlier start to the later `Met`.
    pub time_to_direct: Option<Duration>,
    /// Probes the easy side sent.
    pub probes: u16,
    /// Datagrams the easy side's NAT dropped (its filter at work).
    pub easy_dropped: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Hard,
    Easy,
}

/// A datagram in flight towards `to`'s NAT.
#[derive(Clone, Copy, Debug)]
struct Flight {
    to: Who,
    from: SocketAddr,
    external_port: u16,
    payload: [u8; dcutr_core::birthday::DATAGRAM_LEN],
}

struct Party {
    machine: Birthday,
    nat: NatState,
    start: Instant,
    started: bool,
    met_at: Option<Instant>,
}

fn local_port(local: Local) -> u16 {
    match local {
        Local::Punch => EASY_PORT,
        Local::Fresh(i) => HARD_BASE_PORT.saturating_add(i),
    }
}

fn local_of(who: Who, port: u16) -> Option<Local> {
    match who {
        Who::Easy => (port == EASY_PORT).then_some(Local::Punch),
        Who::Hard => port.checked_sub(HARD_BASE_PORT).map(Local::Fresh),
    }
}

/// Runs one birthday punch of `params` for `seed`.
///
/// # Panics
/// When `params.config` is invalid (a test's mistake).
#[must_use]
pub fn run_birthday(params: &BirthdayParams, seed: u64) -> BirthdayRun {
    let t0 = crate::epoch();
    let w = World::for_seed(seed);
    let (hard_lag, easy_lag) = match params.hard {
        Side::Initiator => (w.initiator_lag(), w.responder_lag()),
        Side::Responder => (w.responder_lag(), w.initiator_lag()),
    };
    let mut hard_nat = NatState::new(params.hard_nat, HARD_IP, seed ^ SALT_HARD_NAT);
    let mut easy_nat = NatState::new(params.easy_nat, EASY_IP, seed ^ SALT_EASY_NAT);
    // Each side's address as the relay observed it, which is what the
    // other side learnt over the relayed stream.
    let hard_seen = hard_nat
        .pinned(t0, Transport::Quic, EASY_PORT, RELAY)
        .expect("an empty NAT maps the relay flow");
    let easy_seen = easy_nat
        .pinned(t0, Transport::Quic, EASY_PORT, RELAY)
        .expect("an empty NAT maps the relay flow");
    let mut probe_seed = [0u8; 32];
    ChaCha8Rng::seed_from_u64(seed ^ SALT_PROBES).fill(&mut probe_seed);
    let hard = Birthday::hard(params.config, easy_seen).expect("a valid birthday config");
    let easy =
        Birthday::easy(params.config, hard_seen.ip(), probe_seed).expect("a valid birthday config");
    let mut parties = [
        Party {
            machine: hard,
            nat: hard_nat,
            start: t0 + hard_lag,
            started: false,
            met_at: None,
        },
        Party {
            machine: easy,
            nat: easy_nat,
            start: t0 + easy_lag,
            started: false,
            met_at: None,
        },
    ];
    let mut path = ChaCha8Rng::seed_from_u64(seed ^ SALT_PATH);
    let mut flights: BinaryHeap<Reverse<(Instant, u64, usize)>> = BinaryHeap::new();
    let mut in_flight: Vec<Option<Flight>> = Vec::new();
    let mut seq = 0u64;
    let limit = t0 + hard_lag.max(easy_lag) + BIRTHDAY_RUN_LIMIT;
    let jitter_us = u64::try_from(params.jitter.as_micros()).unwrap_or(u64::MAX);

    loop {
        // The next thing to happen: a start, a timer or an arrival.
        let mut next: Option<Instant> = flights.peek().map(|Reverse((at, _, _))| *at);
        for p in &parties {
            let t = if p.started {
                p.machine.poll_timeout()
            } else {
                Some(p.start)
            };
            next = match (next, t) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let Some(now) = next else { break };
        if now > limit {
            break;
        }
        for p in &mut parties {
            if !p.started && p.start <= now {
                p.started = true;
                p.machine.start(now).expect("started once");
            } else if p.started && p.machine.poll_timeout().is_some_and(|t| t <= now) {
                p.machine.handle_timeout(now);
            }
        }
        while let Some(Reverse((at, _, slot))) = flights.peek().copied() {
            if at > now {
                break;
            }
            flights.pop();
            let Some(f) = in_flight[slot].take() else {
                continue;
            };
            let idx = f.to as usize;
            let p = &mut parties[idx];
            if let Inbound::Deliver { local_port } =
                p.nat.inbound(now, Transport::Quic, f.external_port, f.from)
                && let Some(local) = local_of(f.to, local_port)
            {
                // Refusals are the machine's business (and counted
                // there); the simulation only carries datagrams.
                let _ = p.machine.handle_datagram(now, local, f.from, &f.payload);
            }
        }
        for (idx, other) in [(0, Who::Easy), (1, Who::Hard)] {
            let p = &mut parties[idx];
            if p.met_at.is_none() && matches!(p.machine.outcome(), Some(Outcome::Met { .. })) {
                p.met_at = Some(now);
            }
            while let Some(t) = p.machine.poll_transmit() {
                let Transmit {
                    local,
                    destination,
                    payload,
                    kind,
                    ..
                } = t;
                let Some(src) =
                    p.nat
                        .outbound(now, Transport::Quic, local_port(local), destination)
                else {
                    continue;
                };
                if params.low_ttl_priming && kind == DatagramKind::Priming {
                    // Expired past our own NAT: the mapping is open.
                    continue;
                }
                if path.random_bool(params.loss.clamp(0.0, 1.0)) {
                    continue;
                }
                let extra = Duration::from_micros(path.random_range(0..=jitter_us));
                let at = now + w.direct_one_way + extra;
                in_flight.push(Some(Flight {
                    to: other,
                    from: src,
                    external_port: destination.port(),
                    payload,
                }));
                flights.push(Reverse((at, seq, in_flight.len() - 1)));
                seq += 1;
            }
        }
        if parties
            .iter()
            .all(|p| p.started && p.machine.outcome().is_some())
            && flights.is_empty()
        {
            break;
        }
    }

    let [hard, easy] = &parties;
    let (ho, eo) = (hard.machine.outcome(), easy.machine.outcome());
    let met = match (ho, eo) {
        (
            Some(Outcome::Met {
                local: Local::Fresh(i),
                remote: easy_addr,
            }),
            Some(Outcome::Met {
                local: Local::Punch,
                remote: hard_addr,
            }),
        ) => {
            // The easy side heard the hard side's socket i, and the hard
            // side heard the easy side's punch socket.
            let mut nat = hard.nat.clone();
            let via = nat.outbound(
                hard.met_at.unwrap_or(t0),
                Transport::Quic,
                local_port(Local::Fresh(i)),
                easy_addr,
            );
            via == Some(hard_addr) && easy_addr == easy_seen
        }
        _ => false,
    };
    let is_met = |o: Option<Outcome>| matches!(o, Some(Outcome::Met { .. }));
    let split = is_met(ho) != is_met(eo);
    let first = hard.start.min(easy.start);
    let time_to_direct = if met {
        hard.met_at
            .zip(easy.met_at)
            .map(|(a, b)| a.max(b).saturating_duration_since(first))
    } else {
        None
    };
    BirthdayRun {
        met,
        split,
        time_to_direct,
        probes: easy.machine.probes_sent(),
        easy_dropped: easy.nat.stats().dropped,
    }
}

/// One row of the birthday sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct BirthdayCell {
    /// What ran.
    pub params: BirthdayParams,
    /// Seeds run.
    pub runs: u32,
    /// Runs where both sides met.
    pub met: u32,
    /// Runs where only one side met.
    pub split: u32,
    /// Median time to direct of the runs that met.
    pub median: Option<Duration>,
    /// 90th percentile time to direct of the runs that met.
    pub p90: Option<Duration>,
    /// Mean probes the easy side sent per run.
    pub mean_probes: f64,
}

impl BirthdayCell {
    /// The share of runs that met, 0 to 1.
    #[must_use]
    pub fn rate(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            f64::from(self.met) / f64::from(self.runs)
        }
    }
}

/// Runs `params` over `seeds`.
#[must_use]
pub fn birthday_cell(params: &BirthdayParams, seeds: Range<u64>) -> BirthdayCell {
    let (mut runs, mut met, mut split, mut probes) = (0u32, 0u32, 0u32, 0u64);
    let mut times = Vec::new();
    for seed in seeds {
        let run = run_birthday(params, seed);
        runs += 1;
        met += u32::from(run.met);
        split += u32::from(run.split);
        probes += u64::from(run.probes);
        times.extend(run.time_to_direct);
    }
    times.sort_unstable();
    #[allow(clippy::cast_precision_loss)]
    let mean_probes = if runs == 0 {
        0.0
    } else {
        probes as f64 / f64::from(runs)
    };
    BirthdayCell {
        params: *params,
        runs,
        met,
        split,
        median: crate::sweep::quantile(&times, 0.5),
        p90: crate::sweep::quantile(&times, 0.9),
        mean_probes,
    }
}

/// Sockets and probes of the small budget row: 64 × 256, a sixteenth of
/// the default, which theory puts near 22 %: the row that shows the
/// budget is what makes the default pass.
pub const SMALL_BUDGET: (u16, u16) = (64, 256);

/// The rows `nat-sweep --birthday` prints and the tests pin: for each
/// role of the hard side (B, then A), against the port-restricted cone
/// the default budget and [`SMALL_BUDGET`]; against a full cone (the
/// priming gets in, and the easy side probes its source); against the
/// router without a firewall with priming that reaches it and with
/// low-TTL priming.
#[must_use]
pub fn birthday_rows() -> Vec<BirthdayParams> {
    let mut rows = Vec::new();
    for hard in [Side::Initiator, Side::Responder] {
        let default = BirthdayParams::new(hard);
        rows.push(default);
        rows.push(default.budget(SMALL_BUDGET.0, SMALL_BUDGET.1));
        rows.push(default.easy(NatModel::full_cone()));
        rows.push(default.easy(NatModel::cone_no_firewall()));
        rows.push(default.easy(NatModel::cone_no_firewall()).low_ttl(true));
    }
    rows
}

/// A short name of the easy-side NAT of `params`, for tables and JSON.
#[must_use]
pub fn easy_label(params: &BirthdayParams) -> String {
    let nat = params.easy_nat;
    let name = [
        (NatModel::full_cone(), "full-cone"),
        (NatModel::address_restricted(), "addr-restricted"),
        (NatModel::port_restricted(), "port-restricted"),
        (NatModel::cone_no_firewall(), "cone-no-firewall"),
    ]
    .into_iter()
    .find(|(m, _)| *m == nat)
    .map_or("custom", |(_, n)| n);
    if params.low_ttl_priming {
        format!("{name}, low TTL")
    } else {
        name.to_string()
    }
}
